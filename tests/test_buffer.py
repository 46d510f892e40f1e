"""The replay buffer: storage, ring wrap-around, observation history, exact state round trip."""

from __future__ import annotations

import numpy as np
import torch

from toolkit.buffers import ReplayBuffer


def fill(buffer: ReplayBuffer, n: int, episode_length: int = 1000) -> None:
    for i in range(n):
        obs = np.full(3, i, np.float32)
        buffer.add(obs, np.full(2, i, np.float32), float(i), obs + 0.5, i % 7 == 0, i % episode_length)


def test_sample_shapes_and_values() -> None:
    buffer = ReplayBuffer(100, (3,), (2,), seed=0)
    fill(buffer, 50)
    batch = buffer.sample(32)
    assert batch.obs.shape == (32, 3) and batch.actions.shape == (32, 2)
    assert batch.rewards.shape == (32, 1) and batch.dones.shape == (32, 1)
    # every field of a sampled row belongs to the same transition
    i = batch.obs[:, 0]
    assert torch.equal(batch.rewards[:, 0], i) and torch.equal(batch.next_obs[:, 0], i + 0.5)
    assert torch.equal(batch.dones[:, 0], (i % 7 == 0).float())
    assert batch.obs_history is None
    assert int(i.max()) < 50


def test_ring_buffer_overwrites_oldest() -> None:
    buffer = ReplayBuffer(10, (3,), (2,))
    fill(buffer, 25)
    assert len(buffer) == 10
    assert sorted(buffer.obs[:, 0].tolist()) == list(range(15, 25))


def test_history_stops_at_episode_start() -> None:
    buffer = ReplayBuffer(100, (3,), (2,), seed=1)
    fill(buffer, 40, episode_length=10)  # episodes start at 0, 10, 20, 30
    batch = buffer.sample(256, history=4)
    assert batch.obs_history.shape == (256, 4, 3)
    last = batch.obs_history[:, -1, 0]
    assert torch.equal(last, batch.obs[:, 0])
    for row, t in zip(batch.obs_history[:, :, 0].tolist(), last.tolist()):
        start = int(t) - int(t) % 10
        expected = [max(t - k, start) for k in (3, 2, 1, 0)]
        assert row == expected


def test_state_round_trip_continues_identically() -> None:
    a = ReplayBuffer(64, (3,), (2,), seed=3)
    fill(a, 80)
    b = ReplayBuffer(64, (3,), (2,), seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        assert torch.equal(a.sample(16).obs, b.sample(16).obs)
    fill(a, 5)
    fill(b, 5)
    assert torch.equal(a.obs, b.obs) and a.pos == b.pos
