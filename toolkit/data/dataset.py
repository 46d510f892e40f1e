"""An offline dataset in memory: D4RL's flat layout, split into episodes.

D4RL stores a dataset as flat arrays over all steps, one row per transition, and marks where
episodes end with two flags: ``terminals`` (the MDP reached a terminal state: no bootstrapping
past it) and ``timeouts`` (a time limit cut the episode; the state was not terminal). An
episode ends at a step where either flag is set, and the last rows of a file may belong to an
episode that was cut by the end of collection (neither flag set): that tail is an episode too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The keys a D4RL-layout dataset must have; ``next_observations`` and ``infos/*`` are optional.
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


@dataclass
class OfflineDataset:
    """Transitions of logged episodes, flat over all steps as in D4RL's HDF5 files.

    ``observations`` ``[N, *obs_shape]`` and ``actions`` ``[N, *action_shape]`` as float32,
    ``rewards`` ``[N]`` float32, ``terminals`` and ``timeouts`` ``[N]`` bool. ``source`` names
    where the data came from, for error messages.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray | None = None
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "<memory>"
    #: Free-form attributes kept with the file (env id, policy, quality ...).
    metadata: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return tuple(self.observations.shape[1:])

    @property
    def action_shape(self) -> tuple[int, ...]:
        return tuple(self.actions.shape[1:])

    def episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, ends)``: episode ``i`` covers rows ``starts[i]`` to ``ends[i]`` exclusive.

        An episode ends after a row flagged terminal or timeout; rows after the last flag form
        one more (unfinished) episode.
        """
        done = np.logical_or(self.terminals, self.timeouts)
        ends = np.flatnonzero(done) + 1
        if len(self) and (len(ends) == 0 or ends[-1] != len(self)):
            ends = np.append(ends, len(self))
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        return starts, ends.astype(np.int64)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in file order."""
        starts, ends = self.episode_bounds()
        return np.add.reduceat(self.rewards.astype(np.float64), starts) if len(starts) else np.zeros(0)

    def episode_lengths(self) -> np.ndarray:
        starts, ends = self.episode_bounds()
        return ends - starts

    def timesteps(self) -> np.ndarray:
        """Each row's index within its episode (0 at an episode's first step)."""
        starts, ends = self.episode_bounds()
        return np.arange(len(self)) - np.repeat(starts, ends - starts)

    def returns_to_go(self, gamma: float = 1.0) -> np.ndarray:
        """``R_t = sum_{k >= t} gamma^(k-t) r_k`` to the end of each episode, ``[N]`` float32.

        Decision Transformer conditions on the undiscounted sum (``gamma = 1``)."""
        out = np.zeros(len(self), dtype=np.float64)
        rewards = self.rewards.astype(np.float64)
        for start, end in zip(*self.episode_bounds()):
            if gamma == 1.0:  # a reversed running sum, vectorised: datasets hold millions of rows
                out[start:end] = np.add.accumulate(rewards[start:end][::-1])[::-1]
                continue
            running = 0.0
            for t in range(end - 1, start - 1, -1):
                running = rewards[t] + gamma * running
                out[t] = running
        return out.astype(np.float32)

    def successors(self) -> np.ndarray:
        """``next_observations`` when stored; otherwise the next row's observation, which is only
        right inside an episode, so an episode's last step repeats its own observation."""
        if self.next_observations is not None:
            return self.next_observations
        nxt = np.concatenate([self.observations[1:], self.observations[-1:]])
        _, ends = self.episode_bounds()
        nxt[ends - 1] = self.observations[ends - 1]
        return nxt
