"""Real learning checks for the policy-gradient agents: they must learn, not just run.

Each check trains through the framework's on-policy loop exactly as `toolkit train` does, then
scores the deterministic policy over 10 evaluation episodes. Per-environment settings are the
tuned ones of rl-baselines3-zoo where it has them; everything else is the agent's default.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toolkit.training import evaluate_run, start_training

torch.set_num_threads(1)

CASES = {
    # rl-zoo's CartPole-v1 PPO: 8 envs x 32 steps, minibatch 256, 20 epochs, lambda 0.8, gamma 0.98, lr 1e-3 decayed linearly.
    "ppo-cartpole": ("ppo", "CartPole-v1", 60_000, 475.0, [
        "num_envs=8", "rollout_steps=32", "minibatch_size=256", "epochs=20", "gae_lambda=0.8", "gamma=0.98",
        "lr=1e-3", "lr_schedule=linear", "lr_decay_steps=60000",
    ]),
    # The a2c defaults (stable-baselines3's: 8 envs x 5 steps, RMSprop 7e-4), lr decayed linearly.
    "a2c-cartpole": ("a2c", "CartPole-v1", 200_000, 475.0, ["lr_schedule=linear", "lr_decay_steps=200000"]),
    # The reinforce defaults: a batch of one whole episode from each of 8 envs per gradient step.
    "reinforce-cartpole": ("reinforce", "CartPole-v1", 100_000, 200.0, []),
    # rl-zoo's Pendulum-v1 PPO (without gSDE): 4 envs x 1024 steps, 10 epochs, lambda 0.95, gamma 0.9, lr 1e-3.
    "ppo-pendulum": ("ppo", "Pendulum-v1", 100_000, -400.0, [
        "num_envs=4", "rollout_steps=1024", "epochs=10", "gae_lambda=0.95", "gamma=0.9", "ent_coef=0",
        "lr=1e-3", "clip_range=0.2",
    ]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_policy_gradient_agent_learns(case: str, tmp_path: Path) -> None:
    agent, env, steps, threshold, settings = CASES[case]
    run, result = start_training(
        agent, env, steps=steps, seed=0, device="cpu", run_dir=tmp_path / case,
        set_items=settings, progress=False, checkpoint_every=0,
    )
    assert result.step >= steps
    evaluation, _, _ = evaluate_run(run, episodes=10)
    print(f"{agent} {env} after {result.step} steps: {evaluation.mean:.1f} ± {evaluation.std:.1f}")
    assert evaluation.mean >= threshold if threshold > 0 else evaluation.mean > threshold
