"""The on-policy training loop: gather a rollout with the current policy, learn from it, repeat.

For every on-policy agent (REINFORCE, A2C, PPO): the loop steps ``num_envs`` environments side
by side for ``rollout_steps`` steps, hands the agent a time-major :class:`~toolkit.agent.Rollout`
and lets it learn. Values and log-probabilities are the agent's business: it recomputes them
from the rollout, so the plugin interface stays ``act`` and ``update``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.agent import Agent, Rollout
from toolkit.configs import OnPolicyConfig
from toolkit.loops.base import TrainingLoop
from toolkit.loops.replayable_env import ReplayableEnv
from toolkit.progress import TrainingProgress
from toolkit.runs import RunSettings


class OnPolicyLoop(TrainingLoop):
    """Trains one on-policy agent on a batch of environments."""

    def __init__(
        self,
        agent: Agent,
        config: OnPolicyConfig,
        settings: RunSettings,
        make_env: Callable[[], Any],
        run_dir: Path,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        super().__init__(agent, settings, make_env, run_dir, device, progress)
        self.config = config
        self.envs = [ReplayableEnv(make_env(), seed=settings.seed + i) for i in range(config.num_envs)]
        space = self.envs[0].env.action_space
        self.discrete = not hasattr(space, "low")
        self._low = None if self.discrete else space.low
        self._high = None if self.discrete else space.high
        obs_dtype = self.envs[0].env.observation_space.dtype
        self._obs_dtype = torch.uint8 if obs_dtype == np.uint8 else torch.float32

    def extra_state(self) -> dict[str, Any]:
        return {"envs": [env.state_dict() for env in self.envs]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for env, env_state in zip(self.envs, state["envs"], strict=True):
            env.load_state_dict(env_state)

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        # Gaussian policies can propose actions outside the bounds: the env gets them clipped,
        # the rollout keeps them as proposed so their log-probabilities stay exact.
        return action if self.discrete else np.clip(action, self._low, self._high)

    def collect(self) -> Rollout:
        """Step every environment ``rollout_steps`` times (longer with ``complete_episodes``)."""
        cfg = self.config
        n = len(self.envs)
        active = np.ones(n, dtype=bool)
        columns: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "rewards", "terminated", "truncated", "next_obs", "mask")}
        t = 0
        while t < cfg.rollout_steps or (cfg.complete_episodes and active.any()):
            obs = np.stack([np.asarray(env.obs) for env in self.envs])
            with torch.no_grad():
                actions = self.agent.act(torch.as_tensor(obs, dtype=self._obs_dtype, device=self.device)).cpu().numpy()
            rewards = np.zeros(n, np.float32)
            terminated = np.zeros(n, np.float32)
            truncated = np.zeros(n, np.float32)
            next_obs = obs.copy()
            mask = active.astype(np.float32)
            for i, env in enumerate(self.envs):
                if not active[i]:
                    continue
                nxt, reward, term, trunc, _ = env.step(self._env_action(actions[i]))
                rewards[i], terminated[i], truncated[i], next_obs[i] = reward, term, trunc, nxt
                self.step += 1
                if term or trunc:
                    self.log_episode(env.episode_return, env.episode_length, self.step)
                    env.begin_episode()
                    if cfg.complete_episodes and t + 1 >= cfg.rollout_steps:
                        active[i] = False  # this env's last episode in the rollout is whole
                else:
                    env.obs = nxt
            for key, value in zip(columns, (obs, actions, rewards, terminated, truncated, next_obs, mask)):
                columns[key].append(value)
            t += 1
        tensors = {k: torch.as_tensor(np.stack(v), device=self.device) for k, v in columns.items()}
        for key in ("obs", "next_obs"):
            tensors[key] = tensors[key].to(self._obs_dtype)
        if not self.discrete:
            tensors["actions"] = tensors["actions"].float()
        return Rollout(**tensors)

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        while self.step < total_steps and not self.stop_requested:
            before = self.step
            rollout = self.collect()
            self.accumulate(self.agent.update(rollout))
            self.updates += 1
            self.after_steps(before)
            bar.update(self.step, self.last_return)
