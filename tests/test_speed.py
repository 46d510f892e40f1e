"""Issue-12 speed features that must stay correct: several envs feeding one replay buffer, the
batched replay write, and the compiled update. Their speed is measured in scripts/, never here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from toolkit.buffers import ReplayBuffer
from toolkit.compile import resolve_mode
from toolkit.errors import ToolkitError


def _curve(run: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("steps_per_second", None)
    return records


def _whole_and_resumed(cli: Any, tmp_path: Path, agent: str, env: str, stops: tuple[int, ...], *options: str) -> None:
    """Train to ``stops[-1]`` at once, and in pieces resumed at the earlier stops: same records."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = [*options, "--no-progress", "--seed", "4"]
    assert cli("train", agent, "--env", env, "--steps", stops[-1], "--run-dir", whole, *common).exit_code == 0
    assert cli("train", agent, "--env", env, "--steps", stops[0], "--run-dir", parts, *common).exit_code == 0
    for stop in stops[1:]:
        assert cli("resume", parts, "--steps", stop, "--no-progress").exit_code == 0
    a, b = _curve(whole), _curve(parts)
    assert any(r["kind"] == "train" and "updates" in r and r["updates"] > 0 for r in a)
    assert a == b


@pytest.mark.parametrize(("agent", "env", "sets"), [
    ("sac", "Pendulum-v1", ("hidden_sizes=32,32", "batch_size=32", "learning_starts=120")),
    ("dqn", "CartPole-v1", ("hidden_sizes=32", "batch_size=16", "learning_starts=100", "n_step=3",
                            "train_every=2", "exploration_steps=300")),
])
def test_several_envs_resume_exactly(cli, tmp_path: Path, one_thread: Any, agent: str, env: str,
                                     sets: tuple[str, ...]) -> None:
    options = [x for s in ("num_envs=3", *sets) for x in ("--set", s)]
    _whole_and_resumed(cli, tmp_path, agent, env, (240, 411, 600), *options, "--log-every", "60")
    records = _curve(tmp_path / "whole")
    steps = [r["step"] for r in records if r["kind"] == "episode"]
    assert steps == sorted(steps)
    # Three envs step together: the run ends on the first multiple of 3 at or past its target.
    assert records[-1]["step"] == 600


def test_compiled_run_trains_and_resumes_exactly(cli, tmp_path: Path, one_thread: Any) -> None:
    options = ["--compile", "compile", "--set", "hidden_sizes=16,16", "--set", "batch_size=16",
               "--set", "learning_starts=100", "--log-every", "50"]
    _whole_and_resumed(cli, tmp_path, "sac", "Pendulum-v1", (160, 260), *options)


def test_modes_the_device_cannot_run_are_one_sentence(cli, tmp_path: Path) -> None:
    result = cli("train", "sac", "--env", "Pendulum-v1", "--compile", "cudagraphs", "--device", "cpu",
                 "--run-dir", tmp_path / "r")
    assert result.exit_code != 0 and "needs a CUDA device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
    with pytest.raises(ToolkitError, match="must be one of"):
        resolve_mode("fast", torch.device("cpu"))
    assert resolve_mode("auto", torch.device("cpu")) == "none"
    assert cli("train", "sac", "--env", "Pendulum-v1", "--set", "num_envs=0", "--run-dir", tmp_path / "z").exit_code != 0


def _interleaved(buffer: ReplayBuffer, envs: int, steps: int, episode: int) -> None:
    """``envs`` envs side by side; obs = 1000 * env + t, reward = t, episodes of ``episode`` steps."""
    for t in range(steps):
        e = np.arange(envs)
        obs = (1000 * e + t).astype(np.float32)[:, None]
        buffer.add_batch(obs, np.zeros((envs, 1), np.float32), np.full(envs, t, np.float32), obs + 1,
                         np.full(envs, (t % episode) == episode - 1), np.full(envs, t % episode))


def test_several_envs_keep_their_histories_and_windows_apart() -> None:
    """A history steps back through one env's own steps, and an n-step window forward."""
    buffer = ReplayBuffer(60, (1,), (1,), seed=0, streams=3)
    _interleaved(buffer, envs=3, steps=30, episode=7)  # the ring wraps: 90 rows into 60 slots
    batch = buffer.sample(200, history=4, n_step=3)
    obs = batch.obs[:, 0]
    env, t = torch.div(obs, 1000, rounding_mode="floor"), obs % 1000
    step_in_episode = t % 7
    # The ring holds each env's steps 10..29. History entry k is 3 - k steps back, clamped at
    # the episode's first step and at the oldest step held.
    for k in range(4):
        back = torch.minimum(torch.minimum(torch.full_like(t, 3 - k), step_in_episode), t - 10)
        assert torch.equal(batch.obs_history[:, k, 0], 1000 * env + t - back)
    length = batch.window_length[:, 0]
    expected = torch.minimum(torch.full_like(t, 3), 7 - step_in_episode)
    expected = torch.minimum(expected, 30 - t)  # not past the newest step (29)
    assert torch.equal(length, expected)
    for i in range(3):
        inside = i < length
        assert torch.equal(batch.window_rewards[:, i][inside], (t + i)[inside])


def test_batched_write_through_one_packed_copy_equals_the_direct_write(monkeypatch: Any) -> None:
    """The accelerator path (fields packed into one byte array, one copy, viewed back) stores
    exactly what the CPU path does; exercised on the CPU by disabling the numpy views."""
    direct = ReplayBuffer(20, (2,), (), seed=0, streams=2, action_dtype=torch.int64)
    packed = ReplayBuffer(20, (2,), (), seed=0, streams=2, action_dtype=torch.int64)
    monkeypatch.setattr(packed, "_numpy_views", lambda: None)
    rng = np.random.default_rng(0)
    for t in range(13):
        obs, nxt = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
        row = (obs, rng.integers(0, 5, size=2), rng.normal(size=2), nxt, rng.random(2) < 0.2, np.array([t, t]))
        direct.add_batch(*row)
        packed.add_batch(*row)
    for key, tensor in direct._slot_tensors().items():
        assert torch.equal(tensor, packed._slot_tensors()[key]), key
    with pytest.raises(ValueError, match="add_batch"):
        direct.add(np.zeros(2), 0, 0.0, np.zeros(2), False, 0)
