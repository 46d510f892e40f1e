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

import torch

from toolkit.agent import Agent, Rollout
from toolkit.configs import OnPolicyConfig
from toolkit.loops.base import TrainingLoop
from toolkit.loops.collect import EnvBatch, rollout_from_columns
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
        self.envs = self._make_envs(make_env)

    def _make_envs(self, make_env: Callable[[], Any]) -> list[ReplayableEnv]:
        """The environments this loop steps (a distributed loop's live on its runners)."""
        self.batch = EnvBatch.make(make_env, self.config.num_envs, self.settings.seed)
        return self.batch.envs

    def extra_state(self) -> dict[str, Any]:
        return {"envs": [env.state_dict() for env in self.envs]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for env, env_state in zip(self.envs, state["envs"], strict=True):
            env.load_state_dict(env_state)

    def collect(self) -> Rollout:
        """Step every environment ``rollout_steps`` times (longer with ``complete_episodes``)."""
        cfg = self.config
        start = self.step

        def on_episode(episode_return: float, length: int, steps: int) -> None:
            self.log_episode(episode_return, length, start + steps)

        columns = self.batch.run(self.batch.policy(self.agent, self.device), cfg.rollout_steps, on_episode, cfg.complete_episodes)
        self.step += int(columns["mask"].sum())
        return rollout_from_columns(columns, self.device, self.batch.obs_dtype, self.batch.discrete)

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        while self.step < total_steps and not self.stop_requested:
            before = self.step
            rollout = self.collect()
            self.accumulate(self.agent.update(rollout))
            self.updates += 1
            self.after_steps(before)
            bar.update(self.step, self.last_return)
