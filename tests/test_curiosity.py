"""The Intrinsic Curiosity Module and the wrapper that adds its bonus to any agent."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from toolkit.agent import Agent, Batch
from toolkit.configs import CuriosityConfig
from toolkit.curiosity import ICM, CuriousAgent

OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
BOX = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)
DISCRETE = gym.spaces.Discrete(4)


def make_batch(b: int = 16, action_space: gym.Space = BOX, history: int = 1, obs_shape=(5,), dtype=torch.float32) -> Batch:
    torch.manual_seed(0)
    if action_space is DISCRETE:
        actions = torch.randint(0, 4, (b,))
    else:
        actions = torch.rand(b, 3) * 4 - 2
    make = (lambda *s: torch.randint(0, 256, s, dtype=torch.uint8)) if dtype == torch.uint8 else torch.randn
    obs = make(b, *obs_shape)
    hist = torch.stack([make(b, *obs_shape) for _ in range(history - 1)] + [obs], 1) if history > 1 else None
    return Batch(obs, actions, torch.randn(b, 1), make(b, *obs_shape), torch.zeros(b, 1), hist)


@pytest.mark.parametrize("action_space", [BOX, DISCRETE], ids=["box", "discrete"])
@pytest.mark.parametrize("inverse_loss", ["mse", "gaussian"])
def test_shapes_and_finite_losses(action_space: gym.Space, inverse_loss: str) -> None:
    icm = ICM(OBS, action_space, CuriosityConfig(inverse_loss=inverse_loss))
    intrinsic, losses = icm(make_batch(action_space=action_space))
    assert intrinsic.shape == (16, 1) and not intrinsic.requires_grad
    assert (intrinsic >= 0).all()
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value)


def test_loss_reaches_encoder_forward_and_inverse_models() -> None:
    icm = ICM(OBS, BOX, CuriosityConfig())
    _, losses = icm(make_batch())
    losses["loss"].backward()
    for part in (icm.encoder, icm.forward_model, icm.inverse):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_frame_stack_feeds_history_to_forward_model() -> None:
    icm = ICM(OBS, BOX, CuriosityConfig(frame_stack=3))
    assert icm.forward_model[0].in_features == 3 * 64 + 3
    batch = make_batch(history=3)
    intrinsic, _ = icm(batch)
    # changing an older frame of the history changes the prediction, hence the reward
    older = batch.obs_history.clone()
    older[:, 0] += 1.0
    intrinsic2, _ = icm(batch._replace(obs_history=older))
    assert not torch.allclose(intrinsic, intrinsic2)
    with pytest.raises(ValueError, match="history"):
        icm(batch._replace(obs_history=None))


def test_image_observations_use_a_convolutional_encoder() -> None:
    pixels = gym.spaces.Box(0, 255, (42, 42, 3), np.uint8)
    agent = CuriousAgent(_Recorder(), pixels, DISCRETE, CuriosityConfig())
    metrics = agent.update(make_batch(8, DISCRETE, obs_shape=(42, 42, 3), dtype=torch.uint8))
    assert torch.isfinite(metrics["intrinsic_reward"])


def test_intrinsic_reward_falls_for_a_transition_seen_repeatedly() -> None:
    torch.manual_seed(0)
    icm = ICM(OBS, BOX, CuriosityConfig())
    optimizer = torch.optim.Adam(icm.parameters(), lr=1e-3)
    batch = make_batch(1)
    first, _ = icm(batch)
    for _ in range(200):
        _, losses = icm(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    last, _ = icm(batch)
    assert float(last) < 0.1 * float(first)
    # a transition never seen is still surprising
    novel, _ = icm(make_batch(1)._replace(next_obs=torch.full((1, 5), 3.0)))
    assert float(novel) > 10 * float(last)


class _Recorder(Agent):
    """A stand-in agent that records the batch it was asked to learn from."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Batch | None = None

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return torch.zeros(obs.shape[0], 3)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.seen = batch
        return {"inner_loss": torch.tensor(1.0)}


def test_wrapper_relabels_rewards_and_reports_both_rewards() -> None:
    inner = _Recorder()
    config = CuriosityConfig(intrinsic_weight=0.5, frame_stack=2)
    agent = CuriousAgent(inner, OBS, BOX, config)
    assert agent.history_length == 2
    batch = make_batch(history=2)
    with torch.no_grad():
        expected_bonus, _ = agent.icm(batch)  # the reward is computed before the ICM's step
    metrics = agent.update(batch)
    assert torch.allclose(inner.seen.rewards, batch.rewards + 0.5 * expected_bonus)
    assert torch.allclose(metrics["extrinsic_reward"], batch.rewards.mean())
    assert torch.allclose(metrics["intrinsic_reward"], expected_bonus.mean())
    assert "inner_loss" in metrics and "icm_forward_loss" in metrics
    assert set(agent.state_dict()) == {"agent", "icm", "icm_optimizer"}


def test_rollouts_get_the_bonus_in_their_own_layout() -> None:
    """On-policy agents hand over [T, N] rollouts; padding steps earn no bonus and train nothing."""
    from toolkit.agent import Rollout
    from toolkit.curiosity import rollout_transitions

    torch.manual_seed(0)
    t, n = 6, 2
    obs = torch.arange(t * n * 5, dtype=torch.float32).reshape(t, n, 5)
    terminated = torch.zeros(t, n)
    terminated[2, 0] = 1.0  # env 0's episode ends at step 2; step 3 starts a new one
    mask = torch.ones(t, n)
    mask[5, 1] = 0.0
    rollout = Rollout(obs, torch.rand(t, n, 3) * 4 - 2, torch.randn(t, n), terminated, torch.zeros(t, n), obs + 1, mask)

    flat, valid = rollout_transitions(rollout, history=3)
    assert flat.obs.shape == (t * n - 1, 5) and int(valid.sum()) == t * n - 1
    hist = rollout_transitions(rollout, history=3)[0].obs_history
    # env 0 at step 4: history is steps 3, 3, 4 (the episode began at step 3)
    row = 4 * n + 0
    assert torch.equal(hist[row, :, 0], obs[[3, 3, 4], 0, 0])
    assert torch.equal(hist[1 * n + 1, :, 0], obs[[0, 0, 1], 1, 0])  # clamped at the rollout's start

    inner = _Recorder()
    agent = CuriousAgent(inner, OBS, BOX, CuriosityConfig(intrinsic_weight=1.0, frame_stack=3))
    agent.update(rollout)
    bonus = inner.seen.rewards - rollout.rewards
    assert inner.seen.rewards.shape == (t, n)
    assert bonus[5, 1] == 0 and (bonus.reshape(-1)[valid] > 0).all()
