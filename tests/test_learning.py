"""Real learning checks: the agents must actually learn, not just run.

Each check trains through the framework's loop exactly as `toolkit train` does, then scores the
deterministic policy over 10 evaluation episodes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.training import evaluate_run, start_training


@pytest.mark.parametrize("agent", ["sac", "sac-icm"])
def test_sac_learns_pendulum_within_20k_steps(agent: str, tmp_path: Path) -> None:
    run, result = start_training(
        agent, "Pendulum-v1", steps=8_000, seed=0, device="cpu", run_dir=tmp_path / agent,
        set_items=["learning_starts=1000"], progress=False, checkpoint_every=0,
    )
    assert result.step == 8_000
    evaluation, _, _ = evaluate_run(run, episodes=10)
    print(f"{agent} Pendulum-v1 after 8000 steps: {evaluation.mean:.1f} ± {evaluation.std:.1f}")
    assert evaluation.mean > -400
