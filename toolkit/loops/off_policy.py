"""The off-policy training loop: collect into a replay buffer, update from it.

For every off-policy agent (SAC, SAC+ICM, later DQN): the loop steps the environment, stores
transitions on the learner's device, calls ``agent.update`` on sampled batches, logs,
evaluates and checkpoints. Metrics stay on the device until a log step, so the update
never waits on a host read.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.agent import Agent, observation_tensor
from toolkit.buffers import ReplayBuffer
from toolkit.configs import OffPolicyConfig
from toolkit.evaluation import evaluate
from toolkit.loops.replayable_env import ReplayableEnv
from toolkit.progress import TrainingProgress
from toolkit.runs import CHECKPOINT, MetricsLogger, RunSettings, save_checkpoint


@dataclass
class LoopResult:
    """How a call to :meth:`OffPolicyLoop.run` ended."""

    step: int
    interrupted: bool
    last_return: float | None


class OffPolicyLoop:
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
        self.agent, self.config, self.settings = agent, config, settings
        self.run_dir, self.device, self.show_progress = run_dir, device, progress
        self.make_env = make_env
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
        self.step = 0
        self.updates = 0
        self.episodes = 0
        self.last_return: float | None = None
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_count = 0
        self._stop_requested = False
        self._eval_env: Any = None

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Agent, buffer, counters, the episode in progress and every random stream."""
        return {
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
            "counters": {"step": self.step, "updates": self.updates, "episodes": self.episodes,
                         "last_return": self.last_return},
            "env": self.env.state_dict(),
            # Metrics accumulated since the last log line, so a resumed run logs the same averages.
            "pending_metrics": {"sums": dict(self._metric_sums), "count": self._metric_count},
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        c = state["counters"]
        self.step, self.updates, self.episodes, self.last_return = c["step"], c["updates"], c["episodes"], c["last_return"]
        self.env.load_state_dict(state["env"])
        self._metric_sums = dict(state["pending_metrics"]["sums"])
        self._metric_count = int(state["pending_metrics"]["count"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        python_state = state["rng"]["python"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))

    def save(self) -> None:
        """Write the checkpoint atomically."""
        save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())

    # --- the loop -----------------------------------------------------------------------------

    def _random_action(self) -> np.ndarray:
        space = self.env.env.action_space
        if self.discrete:
            return np.asarray(self.rng.integers(space.n))
        return self.rng.uniform(space.low, space.high).astype(space.dtype)

    def _policy_action(self, obs: np.ndarray) -> np.ndarray:
        return self.agent.act(observation_tensor(obs, self.device))[0].cpu().numpy()

    def _accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            if key in self._metric_sums:
                self._metric_sums[key] += value
            else:
                self._metric_sums[key] = value.clone()
        self._metric_count += 1

    def _flush_metrics(self, logger: MetricsLogger, steps_per_second: float) -> None:
        values = {k: (v / self._metric_count).item() for k, v in self._metric_sums.items()} if self._metric_count else {}
        values.update(steps_per_second=steps_per_second, updates=self.updates)
        logger.log(self.step, "train", values)
        self._metric_sums, self._metric_count = {}, 0

    def _evaluate(self, logger: MetricsLogger) -> None:
        if self._eval_env is None:
            self._eval_env = self.make_env()
        result = evaluate(self.agent, self.settings.env, self.settings.eval_episodes,
                          seed=self.settings.seed + 1_000_000, device=self.device, env=self._eval_env)
        logger.log(self.step, "eval", {"return_mean": result.mean, "return_std": result.std})

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self._stop_requested = True

    def run(self, total_steps: int) -> LoopResult:
        """Train until ``total_steps`` env steps; Ctrl-C stops at the next step, checkpointed."""
        cfg, s = self.config, self.settings
        logger = MetricsLogger(self.run_dir)
        previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        window_start, window_step = time.perf_counter(), self.step
        try:
            with TrainingProgress(total_steps, start=self.step, enabled=self.show_progress) as bar:
                while self.step < total_steps and not self._stop_requested:
                    slot = self.env
                    obs = slot.obs
                    action = self._random_action() if self.step < cfg.learning_starts else self._policy_action(obs)
                    episode_step = slot.episode_length
                    next_obs, reward, terminated, truncated, _ = slot.step(action)
                    self.buffer.add(obs, action, reward, next_obs, terminated, episode_step)
                    if terminated or truncated:
                        self.episodes += 1
                        self.last_return = slot.episode_return
                        logger.log(self.step + 1, "episode", {"return": slot.episode_return, "length": slot.episode_length})
                        slot.begin_episode()
                    else:
                        slot.obs = next_obs
                    self.step += 1

                    if self.step >= cfg.learning_starts and self.step % cfg.train_every == 0:
                        for _ in range(cfg.updates_per_step):
                            batch = self.buffer.sample(cfg.batch_size, history=self.agent.history_length)
                            self._accumulate(self.agent.update(batch))
                            self.updates += 1

                    if self.step % s.log_every == 0:
                        now = time.perf_counter()
                        self._flush_metrics(logger, (self.step - window_step) / max(now - window_start, 1e-9))
                        window_start, window_step = now, self.step
                    if s.eval_every and self.step % s.eval_every == 0:
                        self._evaluate(logger)
                    if s.checkpoint_every and self.step % s.checkpoint_every == 0:
                        self.save()
                    bar.update(self.step, self.last_return)
            self.save()
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            logger.close()
        return LoopResult(self.step, self._stop_requested, self.last_return)
