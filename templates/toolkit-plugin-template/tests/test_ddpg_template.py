"""The template agent's own checks: act inside the bounds, learn, and survive a checkpoint."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from toolkit.agent import Batch
from toolkit.config import apply_overrides, validate
from toolkit_plugin_template.spec import DDPG_TEMPLATE, DDPGConfig

OBS = gym.spaces.Box(low=np.array([-1.0, -1.0, -8.0], np.float32), high=np.array([1.0, 1.0, 8.0], np.float32))
ACT = gym.spaces.Box(low=-2.0, high=2.0, shape=(1,), dtype=np.float32)


def small_agent(seed: int = 0):
    torch.manual_seed(seed)
    config = apply_overrides(DDPGConfig(), {"hidden_sizes": "32,32"})
    validate(config)
    return DDPG_TEMPLATE.build(config, OBS, ACT, "cpu")


def random_batch(n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(
        obs=torch.rand(n, 3, generator=g),
        actions=torch.rand(n, 1, generator=g) * 4 - 2,
        rewards=torch.rand(n, 1, generator=g),
        next_obs=torch.rand(n, 3, generator=g),
        dones=torch.zeros(n, 1),
    )


def test_act_stays_in_bounds_and_deterministic_is_repeatable() -> None:
    agent = small_agent()
    obs = torch.rand(8, 3)
    noisy = agent.act(obs)
    assert noisy.shape == (8, 1) and bool(((noisy >= -2) & (noisy <= 2)).all())
    assert torch.equal(agent.act(obs, deterministic=True), agent.act(obs, deterministic=True))


def test_update_returns_tensor_metrics_and_moves_the_networks() -> None:
    agent = small_agent()
    before = [p.clone() for p in agent.actor.parameters()]
    metrics = agent.update(random_batch())
    assert set(metrics) == {"critic_loss", "actor_loss", "q_mean"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters()))


def test_checkpoint_round_trip_continues_exactly() -> None:
    agent = small_agent(seed=0)
    agent.update(random_batch())
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    other = small_agent(seed=1)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    batch = random_batch()
    assert torch.equal(agent.update(batch)["critic_loss"], other.update(batch)["critic_loss"])


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="gamma"):
        DDPGConfig(gamma=1.5).validate()
