"""Stepping a batch of environments side by side with one policy.

The local on-policy loop and the Ray env runners share this, so a rollout gathered on a worker
has exactly the layout (and, for the same seeds and actions, the values) of one gathered in
the driver. Everything here is numpy: turning columns into tensors on the learner's device
is :func:`rollout_from_columns`'s job, done once where the learner lives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from toolkit.agent import Agent, Rollout
from toolkit.loops.replayable_env import ReplayableEnv

#: The time-major columns :meth:`EnvBatch.run` returns, in :class:`~toolkit.agent.Rollout`'s order,
#: plus ``episode_step`` (each step's index within its episode, what a replay buffer stores).
COLUMNS = ("obs", "actions", "rewards", "terminated", "truncated", "next_obs", "mask", "episode_step")

#: ``on_episode(return, length, steps)``: an episode ended after ``steps`` env steps of this call.
EpisodeCallback = Callable[[float, int, int], None]


def space_types(observation_space: Any, action_space: Any) -> tuple[bool, torch.dtype]:
    """Whether actions are discrete, and the dtype observations are handed to agents in."""
    discrete = not hasattr(action_space, "low")
    return discrete, torch.uint8 if observation_space.dtype == np.uint8 else torch.float32


class EnvBatch:
    """``len(envs)`` replayable environments of one kind, stepped in lockstep."""

    def __init__(self, envs: list[ReplayableEnv]) -> None:
        self.envs = envs
        self.action_space = envs[0].env.action_space
        self.observation_space = envs[0].env.observation_space
        self.discrete, self.obs_dtype = space_types(self.observation_space, self.action_space)

    @classmethod
    def make(cls, make_env: Callable[[], Any], count: int, seed: int) -> EnvBatch:
        """``count`` envs seeded ``seed, seed + 1, ...``."""
        return cls([ReplayableEnv(make_env(), seed=seed + i) for i in range(count)])

    def __len__(self) -> int:
        return len(self.envs)

    def policy(self, agent: Agent, device: torch.device | str) -> Callable[[np.ndarray], np.ndarray]:
        """``act`` for :meth:`run`: the agent's (stochastic) actions for stacked observations."""

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return agent.act(torch.as_tensor(obs, dtype=self.obs_dtype, device=device)).cpu().numpy()

        return act

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """What the env is given for a proposed action."""
        # Gaussian policies can propose actions outside the bounds: the env gets them clipped,
        # the rollout keeps them as proposed so their log-probabilities stay exact.
        return action if self.discrete else np.clip(action, self.action_space.low, self.action_space.high)

    def observations(self) -> np.ndarray:
        """The current observation of every env, stacked."""
        return np.stack([np.asarray(env.obs) for env in self.envs])

    def step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        on_episode: EpisodeCallback,
        taken: int = 0,
        active: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """One step of every (``active``) env from ``obs`` (:meth:`observations`) with ``actions``:
        that step's row of each column in :data:`COLUMNS`. An env whose episode ends reports it
        through ``on_episode`` (``taken`` counts env steps before this one, for the callback)
        and starts its next episode, so its ``next_obs`` is the episode's true last observation
        and its next ``obs`` the reset's."""
        n = len(self.envs)
        active = np.ones(n, dtype=bool) if active is None else active
        rewards = np.zeros(n, np.float32)
        terminated = np.zeros(n, np.float32)
        truncated = np.zeros(n, np.float32)
        episode_step = np.array([env.episode_length for env in self.envs], np.int64)
        next_obs = obs.copy()
        for i, env in enumerate(self.envs):
            if not active[i]:
                continue
            nxt, reward, term, trunc, _ = env.step(self.env_action(actions[i]))
            rewards[i], terminated[i], truncated[i], next_obs[i] = reward, term, trunc, nxt
            taken += 1
            if term or trunc:
                on_episode(env.episode_return, env.episode_length, taken)
                env.begin_episode()
            else:
                env.obs = nxt
        row = (obs, actions, rewards, terminated, truncated, next_obs, active.astype(np.float32), episode_step)
        return dict(zip(COLUMNS, row))

    def run(
        self,
        act: Callable[[np.ndarray], np.ndarray],
        steps: int,
        on_episode: EpisodeCallback,
        complete_episodes: bool = False,
    ) -> dict[str, np.ndarray]:
        """Step every env ``steps`` times (with ``complete_episodes``, on until each env's
        episode in progress at ``steps`` has ended, masking the finished ones) and return the
        time-major columns of :data:`COLUMNS`. ``act`` maps stacked observations to actions."""
        active = np.ones(len(self.envs), dtype=bool)
        columns: dict[str, list[np.ndarray]] = {k: [] for k in COLUMNS}
        t = taken = 0
        while t < steps or (complete_episodes and active.any()):
            obs = self.observations()
            row = self.step(obs, act(obs), on_episode, taken, active)
            taken += int(row["mask"].sum())
            if complete_episodes and t + 1 >= steps:
                # An env whose episode just ended has its last episode in the rollout whole.
                active &= (row["terminated"] + row["truncated"]) == 0
            for key in COLUMNS:
                columns[key].append(row[key])
            t += 1
        return {k: np.stack(v) for k, v in columns.items()}


def rollout_from_columns(columns: dict[str, np.ndarray], device: torch.device, obs_dtype: torch.dtype,
                         discrete: bool) -> Rollout:
    """A :class:`~toolkit.agent.Rollout` on ``device`` from :meth:`EnvBatch.run`'s columns."""
    tensors = {k: torch.as_tensor(columns[k], device=device) for k in Rollout._fields}
    for key in ("obs", "next_obs"):
        tensors[key] = tensors[key].to(obs_dtype)
    if not discrete:
        tensors["actions"] = tensors["actions"].float()
    return Rollout(**tensors)
