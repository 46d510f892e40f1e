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
from toolkit.buffers import FrameReplayBuffer, ReplayBuffer
from toolkit.configs import OffPolicyConfig
from toolkit.errors import ToolkitError
from toolkit.loops.base import TrainingLoop
from toolkit.trainer import LoopResult
from toolkit.loops.replayable_env import ReplayableEnv
from toolkit.pixels import observed_frame_stack
from toolkit.progress import TrainingProgress
from toolkit.runs import RunSettings

__all__ = ["LoopResult", "OffPolicyLoop"]


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a buffer on ``device`` (None where that cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_replay_fits(buffer: ReplayBuffer | FrameReplayBuffer, obs_shape: tuple[int, ...], device: torch.device) -> None:
    """Refuse a replay buffer larger than 80% of the memory free on its device."""
    need = buffer.bytes_per_transition() * buffer.capacity
    free = available_memory(device)
    if free is not None and need > 0.8 * free:
        fits = int(0.8 * free / buffer.bytes_per_transition())
        raise ToolkitError(
            f"A replay buffer of {buffer.capacity:,} transitions of {tuple(obs_shape)} observations needs "
            f"{need / 2**30:.1f} GiB, but {device.type} has {free / 2**30:.1f} GiB free; "
            f"pass --set buffer_size={fits} or less."
        )


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
        self.buffer = self._make_buffer(observed_frame_stack(self.env.env), obs_space, space)
        self.rng = np.random.default_rng(settings.seed)  # random actions before learning starts

    def _make_buffer(self, frame_stack: int | None, obs_space: Any, action_space: Any) -> ReplayBuffer | FrameReplayBuffer:
        """The replay buffer: one that stores each frame once when the env observes stacks of
        frames (``--pixels``, Atari), where storing whole stacks twice a transition would
        cost ``2 * frame_stack`` times the memory; a plain one otherwise."""
        cfg, seed = self.config, self.settings.seed
        action_shape = () if self.discrete else action_space.shape
        action_dtype = torch.int64 if self.discrete else torch.float32

        def build(device: torch.device) -> ReplayBuffer | FrameReplayBuffer:
            if frame_stack is not None:
                return FrameReplayBuffer(cfg.buffer_size, obs_space.shape, action_shape, frame_stack, device=device,
                                         action_dtype=action_dtype, seed=seed)
            obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
            return ReplayBuffer(cfg.buffer_size, obs_space.shape, action_shape, device=device, obs_dtype=obs_dtype,
                                action_dtype=action_dtype, seed=seed)

        # Sized on the meta device first (nothing allocated), so a buffer that cannot fit is a
        # sentence now rather than the machine swapping or the process killed later.
        check_replay_fits(build(torch.device("meta")), obs_space.shape, self.device)
        return build(self.device)

    def log_replay_memory(self) -> None:
        """Log the buffer's memory cost once, when a new run starts (``kind: replay``); a resumed
        run has it already, and logging it again would make its records differ from an
        uninterrupted run's."""
        if self.step > 0:
            return
        assert self.logger is not None
        values: dict[str, Any] = {
            "buffer": type(self.buffer).__name__,
            "capacity": self.buffer.capacity,
            "replay_bytes_per_transition": self.buffer.bytes_per_transition(),
        }
        if isinstance(self.buffer, FrameReplayBuffer):
            values["frame_stack"] = self.buffer.frame_stack
        self.logger.log(self.step, "replay", values)

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
        self.log_replay_memory()
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
