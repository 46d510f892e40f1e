"""The off-policy training loop: collect into a replay buffer, update from it.

For every off-policy agent (SAC, SAC+ICM, DQN): the loop steps the environment, stores
transitions on the learner's device, calls ``agent.update`` on sampled batches, and leaves
logging, evaluation and checkpoints to :class:`~toolkit.loops.base.TrainingLoop`. Metrics
stay on the device until a log step, so the update never waits on a host read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.agent import Agent, observation_tensor
from toolkit.buffers import ReplayBuffer
from toolkit.configs import OffPolicyConfig
from toolkit.loops.base import TrainingLoop
from toolkit.trainer import LoopResult
from toolkit.loops.replayable_env import ReplayableEnv
from toolkit.progress import TrainingProgress
from toolkit.runs import RunSettings

__all__ = ["LoopResult", "OffPolicyLoop"]


class OffPolicyLoop(TrainingLoop):
    """Trains one off-policy agent in one environment."""

    def __init__(
        self,
        agent: Agent,
        config: OffPolicyConfig,
        settings: RunSettings,
        make_env: Callable[[], Any],
        run_dir: Path,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        super().__init__(agent, settings, make_env, run_dir, device, progress)
        self.config = config
        self.env = ReplayableEnv(make_env(), seed=settings.seed)
        space = self.env.env.action_space
        obs_space = self.env.env.observation_space
        self.discrete = not hasattr(space, "low")
        self.buffer = ReplayBuffer(
            config.buffer_size,
            obs_space.shape,
            () if self.discrete else space.shape,
            device=device,
            obs_dtype=torch.uint8 if obs_space.dtype == np.uint8 else torch.float32,
            action_dtype=torch.int64 if self.discrete else torch.float32,
            seed=settings.seed,
        )
        self.rng = np.random.default_rng(settings.seed)  # random actions before learning starts

    def extra_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "env": self.env.state_dict(), "numpy_rng": self.rng.bit_generator.state}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.env.load_state_dict(state["env"])
        self.rng.bit_generator.state = state["numpy_rng"]

    def _random_action(self) -> np.ndarray:
        space = self.env.env.action_space
        if self.discrete:
            return np.asarray(self.rng.integers(space.n))
        return self.rng.uniform(space.low, space.high).astype(space.dtype)

    def _policy_action(self, obs: np.ndarray) -> np.ndarray:
        return self.agent.act(observation_tensor(obs, self.device))[0].cpu().numpy()

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        cfg = self.config
        env = self.env
        while self.step < total_steps and not self.stop_requested:
            obs = env.obs
            action = self._random_action() if self.step < cfg.learning_starts else self._policy_action(obs)
            episode_step = env.episode_length
            next_obs, reward, terminated, truncated, _ = env.step(action)
            self.buffer.add(obs, action, reward, next_obs, terminated, episode_step)
            self.step += 1
            if terminated or truncated:
                self.log_episode(env.episode_return, env.episode_length, self.step)
                env.begin_episode()
            else:
                env.obs = next_obs

            if self.step >= cfg.learning_starts and self.step % cfg.train_every == 0:
                for _ in range(cfg.updates_per_step):
                    batch = self.buffer.sample(
                        cfg.batch_size, history=self.agent.history_length, n_step=self.agent.n_step
                    )
                    self.accumulate(self.agent.update(batch))
                    self.updates += 1

            self.after_steps(self.step - 1)
            bar.update(self.step, self.last_return)
