"""Replay storage that lives on the learner's device.

Sampling draws indices on the device with the buffer's own generator, so a batch never
crosses to the host and a resumed run draws exactly the batches an uninterrupted one would.

Two buffers share one interface (``add``, ``sample``, ``state_dict``, ``len``,
``bytes_per_transition``); :class:`ReplayBuffer` also takes a step of several envs at once
(``add_batch``, ``streams``):

* :class:`ReplayBuffer` stores every transition's ``obs`` and ``next_obs`` as given;
* :class:`FrameReplayBuffer` is for observations that are stacks of the last ``k`` image frames
  (``--pixels`` envs, Atari). It stores each frame once, as Mnih et al. (2015) did, and rebuilds
  the stacks from indices when sampling. For 100,000 transitions of ``(9, 84, 84)`` uint8
  stacks (three RGB frames) that is about 22.5 kB a transition (2.1 GiB) instead of 127 kB
  (11.8 GiB); see ``tests/test_pixels.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from toolkit.agent import Batch

__all__ = ["FrameReplayBuffer", "ReplayBuffer", "default_frame_capacity"]


class _TransitionRing:
    """What both replay buffers share: a ring of ``capacity`` transition slots holding actions,
    rewards, terminal flags and each step's index within its episode, uniform sampling with
    observation histories and n-step windows, and an exact state round trip.

    A subclass says how observations are kept (:meth:`_observations`,
    :meth:`_next_observations`) and adds them in ``add``. The slots hold the newest ``size``
    transitions, ending just before the write head ``pos``.

    **Streams.** With ``streams = N`` (a step of ``N`` envs side by side), every write is one
    row per env in a fixed order, so env ``j``'s transitions lie ``N`` slots apart: histories
    step back and n-step windows step forward by ``N``. The capacity is rounded up to a
    multiple of ``N`` so that this holds across the ring's wrap.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        device: torch.device | str,
        obs_dtype: torch.dtype,
        action_dtype: torch.dtype,
        seed: int,
        streams: int = 1,
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be at least 1, got {streams}")
        self.streams = int(streams)
        self.capacity = -(-int(capacity) // self.streams) * self.streams
        self.device = torch.device(device)
        self.obs_shape, self.obs_dtype = tuple(obs_shape), obs_dtype
        d = self.device
        self.actions = torch.zeros((self.capacity, *action_shape), dtype=action_dtype, device=d)
        self.rewards = torch.zeros((self.capacity, 1), dtype=torch.float32, device=d)
        self.dones = torch.zeros((self.capacity, 1), dtype=torch.float32, device=d)
        self.episode_step = torch.zeros((self.capacity,), dtype=torch.int64, device=d)
        self.pos = 0
        self.size = 0
        #: Slots ever written (at most ``capacity``); more than ``size`` when a subclass drops
        #: transitions before the ring reaches them.
        self.filled = 0
        # On the "meta" device a buffer allocates nothing, which sizes one before building it
        # (bytes_per_transition); it cannot sample, and its generator lives on the CPU.
        self.generator = torch.Generator(device=d if d.type != "meta" else "cpu")
        self.generator.manual_seed(seed)
        self._views: dict[str, np.ndarray] | None = None

    # --- what a subclass provides -------------------------------------------------------------

    def _slot_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor with one row per slot, by name (the names ``add`` and checkpoints use)."""
        return {"actions": self.actions, "rewards": self.rewards, "dones": self.dones, "episode_step": self.episode_step}

    def _observations(self, idx: torch.Tensor) -> torch.Tensor:
        """The observations of the transitions in slots ``idx`` (1-D), ``[len(idx), *obs_shape]``."""
        raise NotImplementedError

    def _next_observations(self, idx: torch.Tensor) -> torch.Tensor:
        """The successors of those observations."""
        raise NotImplementedError

    def _storage_bytes(self) -> int:
        """Bytes held for the whole capacity."""
        return sum(t.element_size() * t.numel() for t in self._slot_tensors().values())

    # --- shared -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.size

    def bytes_per_transition(self) -> float:
        """What one transition of capacity costs in memory, everything the buffer holds included."""
        return self._storage_bytes() / self.capacity

    def _numpy_views(self) -> dict[str, np.ndarray] | None:
        """On the CPU, numpy views of the slot tensors (made once), which make adding a
        transition several times cheaper than torch's indexing; None on other devices."""
        if self._views is None and self.device.type == "cpu":
            self._views = {k: t.numpy() for k, t in self._slot_tensors().items()}
        return self._views

    def _store(self, rows: int = 1, **values: Any) -> int:
        """Write ``rows`` consecutive slots at the write head (``values`` are one row each, or
        ``rows`` rows with ``rows > 1``) and advance it; returns the first slot written."""
        slot, end = self.pos, self.pos + rows
        views = self._numpy_views()
        if views is not None:
            for key, value in values.items():
                views[key][slot:end] = value
        else:
            self._copy_rows(slot, end, values)
        self.pos = end % self.capacity
        self.size = min(self.size + rows, self.capacity)
        self.filled = min(self.filled + rows, self.capacity)
        return slot

    def _copy_rows(self, start: int, end: int, values: dict[str, Any]) -> None:
        """Write slots ``start:end`` of a buffer on an accelerator with one host-to-device copy:
        every field's bytes are packed side by side into one array (each field 8-byte aligned),
        sent at once, and viewed back as each slot tensor's dtype on the device."""
        tensors = self._slot_tensors()
        rows = end - start
        fields = []
        for key, value in values.items():
            target = tensors[key]
            array = np.asarray(value, dtype=torch.empty(0, dtype=target.dtype).numpy().dtype)
            fields.append((key, np.ascontiguousarray(array.reshape(rows, -1)).view(np.uint8)))
        widths = [-(-f.shape[1] // 8) * 8 for _, f in fields]
        packed = np.zeros((rows, sum(widths)), np.uint8)
        offset = 0
        for (_, raw), width in zip(fields, widths):
            packed[:, offset:offset + raw.shape[1]] = raw
            offset += width
        on_device = torch.from_numpy(packed).to(self.device)
        offset = 0
        for (key, raw), width in zip(fields, widths):
            target = tensors[key]
            column = on_device[:, offset:offset + raw.shape[1]].contiguous().view(target.dtype)
            target[start:end] = column.reshape(rows, *target.shape[1:])
            offset += width

    def add_batch(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        episode_step: np.ndarray,
    ) -> None:
        """Store one step of all ``streams`` envs (each argument has one row per env, in the same
        env order every call): one write per field on the CPU, one host-to-device copy elsewhere."""
        if len(rewards) != self.streams:
            raise ValueError(f"this buffer takes steps of {self.streams} envs at once, got {len(rewards)}")
        self._add_rows(obs, actions, rewards, next_obs, terminated, episode_step)

    def _add_rows(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
                  terminated: np.ndarray, episode_step: np.ndarray) -> None:
        """Write :meth:`add_batch`'s rows (a subclass stores observations its way)."""
        raise NotImplementedError

    def _oldest(self) -> int:
        """The slot of the oldest transition held."""
        return (self.pos - self.size) % self.capacity

    def sample(self, batch_size: int, history: int = 1, n_step: int = 1) -> Batch:
        """A uniform minibatch; with ``history > 1`` also the observation history, with
        ``n_step > 1`` also the n-step window (see :class:`~toolkit.agent.Batch`)."""
        draws = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        # A full ring holds every slot, drawn as they are numbered; otherwise the draws count
        # from the oldest transition held (slot 0 until the ring wraps).
        oldest = self._oldest()
        idx = draws if self.size == self.capacity or oldest == 0 else (draws + oldest) % self.capacity
        obs_history = None
        if history > 1:
            # Step back at most as far as the episode's start, repeating its first observation,
            # and never past the oldest transition held: the slots before it hold newer ones.
            # (An env's steps lie ``streams`` slots apart.)
            held_before = (idx - oldest) % self.capacity // self.streams
            back = torch.arange(history - 1, -1, -1, device=self.device)
            back = torch.minimum(back.unsqueeze(0), torch.minimum(self.episode_step[idx], held_before).unsqueeze(1))
            slots = (idx.unsqueeze(1) - back * self.streams) % self.capacity
            obs_history = self._observations(slots.reshape(-1)).view(batch_size, history, *self.obs_shape)
        batch = Batch(
            self._observations(idx), self.actions[idx], self.rewards[idx], self._next_observations(idx),
            self.dones[idx], obs_history,
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
        slots = (idx.unsqueeze(1) + offsets * self.streams) % self.capacity  # [B, n]; an env's steps lie streams apart
        stored_after = (self.pos - 1 - idx) % self.capacity  # transitions written after t
        same_episode = self.episode_step[slots] == self.episode_step[idx].unsqueeze(1) + offsets
        written = offsets * self.streams <= stored_after.unsqueeze(1)
        valid = (same_episode & written).long().cumprod(dim=1)
        length = valid.sum(dim=1)  # k >= 1: offset 0 always passes
        last = slots.gather(1, (length - 1).unsqueeze(1)).squeeze(1)
        return batch._replace(
            window_rewards=self.rewards[slots].squeeze(-1) * valid,
            window_next_obs=self._next_observations(last),
            window_dones=self.dones[last],
            window_length=length.unsqueeze(1).float(),
        )

    def state_dict(self) -> dict[str, Any]:
        """The written slots plus the write position and the sampling generator."""
        return {
            **{k: t[: self.filled].clone() for k, t in self._slot_tensors().items()},
            "capacity": self.capacity,
            "streams": self.streams,
            "pos": self.pos,
            "size": self.size,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a buffer saved by :meth:`state_dict` into a buffer of the same capacity."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"the checkpoint's buffer holds {state['capacity']} transitions, this one {self.capacity}")
        if int(state.get("streams", 1)) != self.streams:
            raise ValueError(f"the checkpoint's buffer was filled by {state.get('streams', 1)} envs, this one by {self.streams}")
        size = int(state["size"])
        filled = int(state.get("filled", size))  # a ReplayBuffer's filled slots are its size
        for key, tensor in self._slot_tensors().items():
            tensor[:filled] = state[key].to(tensor.device)
        self.size, self.filled, self.pos = size, filled, int(state["pos"])
        self.generator.set_state(state["generator"])


class ReplayBuffer(_TransitionRing):
    """A ring buffer of transitions ``(obs, action, reward, next_obs, done)``.

    Alongside each transition it keeps the step's index within its episode, which lets
    :meth:`sample` return a history of the last ``k`` observations, or the window of the next
    ``n`` steps for n-step returns, without storing stacks or windows. Both need an episode's
    transitions added in order, uninterrupted by other episodes', or ``streams`` envs' steps
    added side by side with :meth:`add_batch`.
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
        streams: int = 1,
    ) -> None:
        super().__init__(capacity, obs_shape, action_shape, device, obs_dtype, action_dtype, seed, streams)
        self.obs = torch.zeros((self.capacity, *obs_shape), dtype=obs_dtype, device=self.device)
        self.next_obs = torch.zeros((self.capacity, *obs_shape), dtype=obs_dtype, device=self.device)

    def _slot_tensors(self) -> dict[str, torch.Tensor]:
        return {"obs": self.obs, "next_obs": self.next_obs, **super()._slot_tensors()}

    def _observations(self, idx: torch.Tensor) -> torch.Tensor:
        return self.obs[idx]

    def _next_observations(self, idx: torch.Tensor) -> torch.Tensor:
        return self.next_obs[idx]

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
        if self.streams != 1:
            raise ValueError(f"this buffer takes steps of {self.streams} envs at once; use add_batch")
        self._store(obs=obs, next_obs=next_obs, actions=action, rewards=reward, dones=float(terminated),
                    episode_step=episode_step)

    def _add_rows(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
                  terminated: np.ndarray, episode_step: np.ndarray) -> None:
        n = len(rewards)
        self._store(rows=n, obs=obs, next_obs=next_obs, actions=actions,
                    rewards=np.asarray(rewards, np.float32).reshape(n, 1),
                    dones=np.asarray(terminated, np.float32).reshape(n, 1), episode_step=episode_step)


def default_frame_capacity(capacity: int, frame_stack: int) -> int:
    """Frames a :class:`FrameReplayBuffer` of ``capacity`` transitions keeps by default.

    ``capacity`` transitions in episodes of ``L`` steps need ``capacity * (L + 1) / L`` frames
    (an episode's first frame comes on top of one new frame a step), plus the ``k - 1`` older
    frames the oldest stack reaches back to. Room for one episode start every 16 transitions
    covers the usual pixel tasks (Atari, control suites, Pendulum: hundreds of steps an
    episode) for 6% more memory; with shorter episodes the frames run out first and the buffer
    holds fewer transitions (at worst, one-step episodes, about half).
    """
    return capacity + capacity // 16 + frame_stack + 1


class FrameReplayBuffer(_TransitionRing):
    """A replay buffer for observations that stack the last ``frame_stack`` image frames.

    Observations are uint8 arrays whose first axis concatenates ``k = frame_stack`` frames,
    oldest first (``(k * C, H, W)`` for ``--pixels`` envs, ``(4, 84, 84)`` for Atari), and an
    episode's first stacks repeat its first frame, as :class:`toolkit.pixels.PixelObservation`
    and Gymnasium's ``FrameStackObservation`` do at reset. ``next_obs`` is ``obs`` with the
    oldest frame dropped and the new one appended; ``add`` checks both and refuses other stacks
    with a ``ValueError`` rather than return something the env did not produce.

    **Storage.** Frames go into a ring of their own, ``frame_capacity`` long, each once: an
    episode's first frame, then each step's new frame, so an episode's frames lie side by side.
    A transition keeps only the number of its ``s_t``'s frame; its stacks are rebuilt when
    sampling from that number and its step in the episode (``max(step - j, 0)`` for the ``j``-th
    frame back, which repeats the first frame exactly as the env did). ``next_obs`` is never
    stored twice: ``s_{t+1}``'s frame is the next transition's ``s_t`` frame, and the last
    frame of an episode ended by termination or truncation is kept like any other.

    **The rings.** A transition is held while every frame its ``obs`` stack reads is still in
    the frame ring; when appending a frame overwrites one a held transition reads, that (the
    oldest) transition is dropped, so a stack never reads a newer frame across the write head.
    Sampling draws among held transitions only, and a history steps back no further than the
    oldest one held. With :func:`default_frame_capacity` and episodes of 16 steps or more, the
    transition ring wraps first and the buffer holds ``capacity`` transitions like
    :class:`ReplayBuffer`, returning the same samples.

    **Order.** ``add`` recognises a transition that continues the previous one (the next step,
    and ``obs`` equal to the previous ``next_obs``); any other starts a new run of frames
    (storing the distinct frames of its ``obs`` stack), so interleaving several envs' steps
    still returns exact stacks, at the cost of up to ``k + 1`` frames a transition. Histories
    and n-step windows need episodes added in order, as for :class:`ReplayBuffer`.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        frame_stack: int,
        device: torch.device | str = "cpu",
        action_dtype: torch.dtype = torch.float32,
        seed: int = 0,
        frame_capacity: int | None = None,
    ) -> None:
        if frame_stack < 1 or not obs_shape or obs_shape[0] % frame_stack:
            raise ValueError(f"observations of shape {tuple(obs_shape)} do not stack {frame_stack} frames on their first axis")
        super().__init__(capacity, obs_shape, action_shape, device, torch.uint8, action_dtype, seed)
        self.frame_stack = k = int(frame_stack)
        self.frame_shape = (obs_shape[0] // k, *obs_shape[1:])
        self.frame_capacity = int(frame_capacity or default_frame_capacity(self.capacity, k))
        if self.frame_capacity < k + 1:  # room for one transition's two stacks
            raise ValueError(f"a frame ring of {self.frame_capacity} cannot hold the {k + 1} frames of one transition")
        # Only written frames are ever read, so the ring needs no zeroing; left untouched, a CPU
        # ring takes memory as frames arrive rather than all at once.
        self.frames = torch.empty((self.frame_capacity, *self.frame_shape), dtype=torch.uint8, device=self.device)
        self._frames_view = self.frames.numpy() if self.device.type == "cpu" else None  # as _numpy_views
        #: The number (counted since the first frame ever written) of each transition's s_t frame.
        self.frame_number = torch.zeros((self.capacity,), dtype=torch.int64, device=self.device)
        self.frames_written = 0
        # Host copies of what adding needs, so that adding never reads the device.
        #: The oldest frame each slot's obs stack reads (its frame number minus min(k - 1, step)).
        self._first_frame = np.zeros(self.capacity, np.int64)
        #: The newest transition's next_obs, its step and whether it terminated: what tells
        #: whether the next transition continues it.
        self._last_next: np.ndarray | None = None
        self._last_step = -1
        self._last_terminal = False

    def _slot_tensors(self) -> dict[str, torch.Tensor]:
        return {"frame_number": self.frame_number, **super()._slot_tensors()}

    def _storage_bytes(self) -> int:
        return super()._storage_bytes() + self.frames.element_size() * self.frames.numel() + self._first_frame.nbytes

    def _stacks(self, idx: torch.Tensor, ahead: int) -> torch.Tensor:
        """The stacks of steps ``t + ahead`` for the transitions in slots ``idx`` (``t`` their step)."""
        step = self.episode_step[idx].unsqueeze(1)
        back = torch.arange(self.frame_stack - 1, -1, -1, device=self.device)  # oldest frame first
        # Before the episode's first frame, the stack repeats it (step max(t + ahead - j, 0)).
        offsets = torch.clamp(step + ahead - back, min=0) - step  # from s_t's frame
        numbers = self.frame_number[idx].unsqueeze(1) + offsets
        return self.frames[numbers % self.frame_capacity].reshape(len(idx), *self.obs_shape)

    def _observations(self, idx: torch.Tensor) -> torch.Tensor:
        return self._stacks(idx, 0)

    def _next_observations(self, idx: torch.Tensor) -> torch.Tensor:
        return self._stacks(idx, 1)

    def _append_frame(self, frame: np.ndarray) -> None:
        slot = self.frames_written % self.frame_capacity
        if self._frames_view is not None:
            self._frames_view[slot] = frame
        else:
            self.frames[slot] = torch.as_tensor(frame, device=self.device)
        self.frames_written += 1

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
        k, step = self.frame_stack, int(episode_step)
        obs, next_obs = np.asarray(obs), np.asarray(next_obs)
        frames = obs.reshape(k, *self.frame_shape)
        next_frames = next_obs.reshape(k, *self.frame_shape)
        # Both checks come before anything is written, so a refused transition leaves no trace.
        if not np.array_equal(next_frames[:-1], frames[1:]):
            raise ValueError("next_obs must be obs with its oldest frame dropped and the new frame appended")
        continues = (
            step > 0 and step == self._last_step + 1 and not self._last_terminal
            and self._last_next is not None and np.array_equal(obs, self._last_next)
        )
        if not continues:
            # The stack's distinct frames: steps max(t - k + 1, 0) .. t; earlier slots must
            # repeat the first of them (the episode's first frame).
            distinct = min(k - 1, step) + 1
            padding = frames[: k - distinct]
            if not (padding == frames[k - distinct]).all():
                raise ValueError(
                    f"the stack at step {step} of an episode should repeat its first frame in its oldest "
                    f"{k - distinct} slots, as stacks do at reset; this one holds other frames"
                )
            for frame in frames[k - distinct:]:
                self._append_frame(frame)
        number = self.frames_written - 1  # s_t's frame, just written or the previous s_{t+1}
        self._append_frame(next_frames[-1])
        slot = self._store(frame_number=number, actions=action, rewards=reward, dones=float(terminated),
                           episode_step=step)
        self._first_frame[slot] = number - min(k - 1, step)
        self._last_next, self._last_step, self._last_terminal = next_obs.copy(), step, bool(terminated)
        self._drop_overwritten()

    def _add_rows(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
                  terminated: np.ndarray, episode_step: np.ndarray) -> None:
        # One env's step (streams is always 1 here: frames are stored once, in an episode's order).
        self.add(obs[0], actions[0], float(rewards[0]), next_obs[0], bool(terminated[0]), int(episode_step[0]))

    def _drop_overwritten(self) -> None:
        """Stop holding the oldest transitions whose stacks read frames the ring overwrote
        (held transitions read frames in order, so they go from the oldest on)."""
        oldest_frame = self.frames_written - self.frame_capacity
        while self.size and self._first_frame[self._oldest()] < oldest_frame:
            self.size -= 1

    def state_dict(self) -> dict[str, Any]:
        """The written slots and frames, both write positions, the sampling generator and the
        newest transition (which the next one may continue)."""
        return {
            **super().state_dict(),
            "filled": self.filled,
            "frame_stack": self.frame_stack,
            "frame_capacity": self.frame_capacity,
            "frames": self.frames[: min(self.frames_written, self.frame_capacity)].clone(),
            "frames_written": self.frames_written,
            "last_next": None if self._last_next is None else torch.from_numpy(self._last_next.copy()),
            "last_step": self._last_step,
            "last_terminal": self._last_terminal,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a buffer saved by :meth:`state_dict` into one of the same capacities and stack."""
        for key in ("frame_stack", "frame_capacity"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"the checkpoint's buffer has {key} {state[key]}, this one {getattr(self, key)}")
        super().load_state_dict(state)
        frames = state["frames"]
        self.frames[: len(frames)] = frames.to(self.device)
        self.frames_written = int(state["frames_written"])
        numbers = self.frame_number[: self.filled].cpu().numpy()
        steps = self.episode_step[: self.filled].cpu().numpy()
        self._first_frame[: self.filled] = numbers - np.minimum(self.frame_stack - 1, steps)
        last_next = state["last_next"]
        self._last_next = None if last_next is None else last_next.numpy().copy()
        self._last_step, self._last_terminal = int(state["last_step"]), bool(state["last_terminal"])
