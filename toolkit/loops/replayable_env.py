"""An environment whose episode in progress can be checkpointed without pickling it.

Simulators rarely expose their full state, but Gymnasium environments are deterministic given
their random generator and the actions taken. So the checkpoint stores the generator's state
at the episode's reset plus the actions since; restoring resets with that state and replays
the actions, which rebuilds the exact mid-episode state for any such environment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ReplayableEnv:
    """One environment plus its current episode's record."""

    def __init__(self, env: Any, seed: int) -> None:
        self.env = env
        env.reset(seed=seed)  # seeds env.np_random; every later reset draws from it
        env.action_space.seed(seed)
        self.begin_episode()

    def begin_episode(self) -> None:
        """Reset the env, remembering the generator state the reset will draw from."""
        self.reset_state = self.env.unwrapped.np_random.bit_generator.state
        self.obs, _ = self.env.reset()
        self.actions: list[np.ndarray] = []
        self.episode_return = 0.0
        self.episode_length = 0

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Step the env, recording the action for a later replay."""
        self.actions.append(np.array(action, copy=True))
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        self.episode_return += float(reward)
        self.episode_length += 1
        return next_obs, float(reward), bool(terminated), bool(truncated), info

    def state_dict(self) -> dict[str, Any]:
        """The episode in progress as plain values and one tensor (checkpoint-safe)."""
        actions = torch.as_tensor(np.stack(self.actions)) if self.actions else torch.zeros(0)
        return {"reset_state": self.reset_state, "actions": actions, "obs": torch.as_tensor(np.asarray(self.obs))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the episode in progress by resetting with the saved state and replaying."""
        generator = np.random.Generator(getattr(np.random, state["reset_state"]["bit_generator"])())
        generator.bit_generator.state = state["reset_state"]
        self.env.unwrapped.np_random = generator
        self.begin_episode()
        for action in state["actions"].numpy():
            self.obs, _, terminated, truncated, _ = self.step(action)
            if terminated or truncated:
                raise RuntimeError("replaying the saved episode ended it early: the environment is not deterministic")
        if not np.allclose(np.asarray(self.obs), state["obs"].numpy()):
            raise RuntimeError("replaying the saved episode did not reach the saved observation")
