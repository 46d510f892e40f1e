"""The off-policy training loop: collect into a replay buffer, update from it.

For every off-policy agent (SAC, SAC+ICM, DQN): the loop steps ``num_envs`` environments side
by side (:class:`~toolkit.loops.collect.EnvBatch`, shared with the on-policy loop), acting on
all of them with one forward pass and one device-to-host read, stores the step of every env
with one batched replay write, then makes the gradient steps the update-to-data ratio owes
(:func:`owed_updates`: ``updates_per_step`` every ``train_every`` env steps, counted in env
steps whatever ``num_envs`` is). Logging, evaluation and checkpoints are
:class:`~toolkit.loops.base.TrainingLoop`'s. Metrics stay on the device until a log step, so
the update never waits on a host read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.agent import Agent
from toolkit.buffers import FrameReplayBuffer, ReplayBuffer
from toolkit.configs import OffPolicyConfig
from toolkit.errors import ToolkitError
from toolkit.loops.base import TrainingLoop
from toolkit.loops.collect import EnvBatch
from toolkit.trainer import LoopResult
from toolkit.pixels import observed_frame_stack
from toolkit.progress import TrainingProgress
from toolkit.runs import RunSettings

__all__ = ["LoopResult", "OffPolicyLoop", "owed_updates"]


def owed_updates(config: OffPolicyConfig, step: int) -> int:
    """Gradient steps owed after ``step`` env steps: ``updates_per_step`` at every multiple of
    ``train_every`` from ``learning_starts`` on (the update-to-data ratio, in env steps, for any
    number of envs and for Ray runners alike)."""
    first = max(config.learning_starts, 1)
    if step < first:
        return 0
    rounds = step // config.train_every - (first - 1) // config.train_every
    return rounds * config.updates_per_step


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
    """Trains one off-policy agent on ``num_envs`` environments stepped side by side."""

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
        self.envs = self._make_envs(make_env)
        first = self.envs.envs[0].env
        self.discrete = self.envs.discrete
        frame_stack = observed_frame_stack(first)
        if frame_stack is not None and config.num_envs > 1:
            raise ToolkitError(
                f"num_envs={config.num_envs} needs vector observations: frame-stack observations are stored "
                "once per frame, which takes one env's steps in order; use num_envs=1 with --pixels."
            )
        self.buffer = self._make_buffer(frame_stack, first.observation_space, first.action_space)
        self.rng = np.random.default_rng(settings.seed)  # random actions before learning starts

    def _make_envs(self, make_env: Callable[[], Any]) -> EnvBatch:
        """The envs this loop steps, seeded ``seed, seed + 1, ...`` (one env: the run's seed)."""
        return EnvBatch.make(make_env, self.config.num_envs, self.settings.seed)

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
                                action_dtype=action_dtype, seed=seed, streams=cfg.num_envs)

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
        return {"buffer": self.buffer.state_dict(), "envs": [env.state_dict() for env in self.envs.envs],
                "numpy_rng": self.rng.bit_generator.state}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        env_states = state["envs"] if "envs" in state else [state["env"]]  # "env": one env, before num_envs
        if len(env_states) != len(self.envs):
            raise ValueError(f"the checkpoint holds {len(env_states)} envs, this run steps {len(self.envs)}")
        for env, env_state in zip(self.envs.envs, env_states):
            env.load_state_dict(env_state)
        self.rng.bit_generator.state = state["numpy_rng"]

    def _random_actions(self) -> np.ndarray:
        """Uniform actions for every env, from the loop's own generator (checkpointed)."""
        space, n = self.envs.action_space, len(self.envs)
        if self.discrete:
            return np.asarray(self.rng.integers(space.n, size=n)) + int(getattr(space, "start", 0))
        return self.rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        cfg = self.config
        self.log_replay_memory()
        policy = self.envs.policy(self.agent, self.device)  # one forward pass, one read back to the host
        while self.step < total_steps and not self.stop_requested:
            before = self.step

            def on_episode(episode_return: float, length: int, taken: int) -> None:
                self.log_episode(episode_return, length, before + taken)

            obs = self.envs.observations()
            actions = self._random_actions() if self.step < cfg.learning_starts else policy(obs)
            row = self.envs.step(obs, actions, on_episode)
            self.buffer.add_batch(row["obs"], row["actions"], row["rewards"], row["next_obs"], row["terminated"],
                                  row["episode_step"])
            self.step += len(self.envs)

            owed = owed_updates(cfg, self.step)
            while self.updates < owed:
                batch = self.buffer.sample(cfg.batch_size, history=self.agent.history_length, n_step=self.agent.n_step)
                self.accumulate(self.agent.update(batch))
                self.updates += 1

            self.after_steps(before)
            bar.update(self.step, self.last_return)
