"""Replay storage that lives on the learner's device.

Sampling draws indices on the device with the buffer's own generator, so a batch never
crosses to the host and a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from toolkit.agent import Batch


class ReplayBuffer:
    """A ring buffer of transitions ``(obs, action, reward, next_obs, done)``.

    Alongside each transition it keeps the step's index within its episode, which lets
    :meth:`sample` return a history of the last ``k`` observations, or the window of the next
    ``n`` steps for n-step returns, without storing stacks or windows.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        obs_dtype: torch.dtype = torch.float32,
        action_dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        self.capacity = int(capacity)
        self.device = torch.device(device)
        d = self.device
        self.obs = torch.zeros((self.capacity, *obs_shape), dtype=obs_dtype, device=d)
        self.next_obs = torch.zeros((self.capacity, *obs_shape), dtype=obs_dtype, device=d)
        self.actions = torch.zeros((self.capacity, *action_shape), dtype=action_dtype, device=d)
        self.rewards = torch.zeros((self.capacity, 1), dtype=torch.float32, device=d)
        self.dones = torch.zeros((self.capacity, 1), dtype=torch.float32, device=d)
        self.episode_step = torch.zeros((self.capacity,), dtype=torch.int64, device=d)
        self.pos = 0
        self.size = 0
        self.generator = torch.Generator(device=d)
        self.generator.manual_seed(seed)
        # On the CPU, numpy views of the same memory make adding a transition cheap.
        self._views = (
            {k: t.numpy() for k, t in self._tensors().items()} if d.type == "cpu" else None
        )

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "obs": self.obs,
            "next_obs": self.next_obs,
            "actions": self.actions,
            "rewards": self.rewards,
            "dones": self.dones,
            "episode_step": self.episode_step,
        }

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        episode_step: int,
    ) -> None:
        """Store one transition; ``episode_step`` is 0 for an episode's first step."""
        i = self.pos
        values = {
            "obs": obs,
            "next_obs": next_obs,
            "actions": action,
            "rewards": reward,
            "dones": float(terminated),
            "episode_step": episode_step,
        }
        if self._views is not None:
            for key, value in values.items():
                self._views[key][i] = value
        else:
            for key, value in values.items():
                tensor = self._tensors()[key]
                tensor[i] = torch.as_tensor(np.asarray(value), dtype=tensor.dtype)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, history: int = 1, n_step: int = 1) -> Batch:
        """A uniform minibatch; with ``history > 1`` also the observation history, with
        ``n_step > 1`` also the n-step window (see :class:`~toolkit.agent.Batch`)."""
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        obs_history = None
        if history > 1:
            # Step back at most as far as the episode's start, repeating its first observation.
            back = torch.arange(history - 1, -1, -1, device=self.device)
            back = torch.minimum(back.unsqueeze(0), self.episode_step[idx].unsqueeze(1))
            obs_history = self.obs[(idx.unsqueeze(1) - back) % self.capacity]
        batch = Batch(
            self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx], obs_history
        )
        return self._with_window(batch, idx, n_step) if n_step > 1 else batch

    def _with_window(self, batch: Batch, idx: torch.Tensor, n: int) -> Batch:
        """Attach the n-step window starting at each sampled index.

        Step ``t + i`` belongs to the window when it was stored after ``t`` (not past the write
        head, so never a stale slot the ring has not overwritten yet) and continues the same
        episode: its ``episode_step`` is ``t``'s plus ``i``. A new episode starts at
        ``episode_step`` 0, so that test ends a window at termination and at truncation alike,
        and a window once broken stays broken (cumulative product).
        """
        offsets = torch.arange(n, device=self.device)
        slots = (idx.unsqueeze(1) + offsets) % self.capacity  # [B, n]
        stored_after = (self.pos - 1 - idx) % self.capacity  # transitions written after t
        same_episode = self.episode_step[slots] == self.episode_step[idx].unsqueeze(1) + offsets
        valid = (same_episode & (offsets <= stored_after.unsqueeze(1))).long().cumprod(dim=1)
        length = valid.sum(dim=1)  # k >= 1: offset 0 always passes
        last = slots.gather(1, (length - 1).unsqueeze(1)).squeeze(1)
        return batch._replace(
            window_rewards=self.rewards[slots].squeeze(-1) * valid,
            window_next_obs=self.next_obs[last],
            window_dones=self.dones[last],
            window_length=length.unsqueeze(1).float(),
        )

    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer plus its write position and sampling generator."""
        return {
            **{k: t[: self.size].clone() for k, t in self._tensors().items()},
            "capacity": self.capacity,
            "pos": self.pos,
            "size": self.size,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a buffer saved by :meth:`state_dict` into a buffer of the same capacity."""
        size = int(state["size"])
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"the checkpoint's buffer holds {state['capacity']} transitions, this one {self.capacity}")
        for key, tensor in self._tensors().items():
            tensor[:size] = state[key].to(tensor.device)
        self.size, self.pos = size, int(state["pos"])
        self.generator.set_state(state["generator"])
