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


def _episodes(buffer: ReplayBuffer, lengths: list[int], terminated: list[bool]) -> None:
    """Store episodes of the given lengths; reward = global step index; obs = index too."""
    t = 0
    for length, ends_terminal in zip(lengths, terminated):
        for k in range(length):
            obs = np.full(3, t, np.float32)
            last = k == length - 1
            buffer.add(obs, np.zeros(2, np.float32), float(t), obs + 0.5, last and ends_terminal, k)
            t += 1


def _expected_window(t: int, n: int, starts: list[int], ends: list[int], written: int) -> int:
    """Hand count of the window length from step t: up to the episode's last step and the write head."""
    end = next(e for s, e in zip(starts, ends) if s <= t <= e)
    return min(n, end - t + 1, written - t)


def test_n_step_window_stops_at_termination_truncation_and_the_write_head() -> None:
    buffer = ReplayBuffer(100, (3,), (2,), seed=4)
    # a terminated episode of 5 steps, one cut by a time limit after 4, one still running (3 so far)
    _episodes(buffer, [5, 4, 3], [True, False, False])
    starts, ends, written = [0, 5, 9], [4, 8, 11], 12
    batch = buffer.sample(512, n_step=3)
    assert batch.window_rewards.shape == (512, 3) and batch.window_length.shape == (512, 1)
    for row in range(512):
        t = int(batch.obs[row, 0])
        k = _expected_window(t, 3, starts, ends, written)
        assert int(batch.window_length[row]) == k
        assert batch.window_rewards[row].tolist() == [float(t + i) if i < k else 0.0 for i in range(3)]
        last = t + k - 1
        assert float(batch.window_next_obs[row, 0]) == last + 0.5
        # only the terminated episode's final step is a terminal; a truncation bootstraps
        assert float(batch.window_dones[row]) == float(last == 4)
    assert {int(t) for t in batch.obs[:, 0]} == set(range(12))  # every start was drawn


def test_n_step_window_never_reads_past_the_newest_slot_of_a_full_ring() -> None:
    buffer = ReplayBuffer(10, (3,), (2,), seed=5)
    _episodes(buffer, [25], [False])  # one long episode; slots now hold steps 15..24
    batch = buffer.sample(256, n_step=4)
    t = batch.obs[:, 0]
    expected = torch.clamp(24 - t + 1, max=4)
    assert torch.equal(batch.window_length[:, 0], expected)
    assert torch.equal(batch.window_next_obs[:, 0], t + expected - 1 + 0.5)


def test_one_step_sampling_has_no_window() -> None:
    buffer = ReplayBuffer(20, (3,), (2,))
    fill(buffer, 10)
    assert buffer.sample(4).window_rewards is None
