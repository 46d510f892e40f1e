"""Record rendered frames from any Gymnasium env that renders ``rgb_array``, as image data.

:func:`record_frames` steps an env with random actions or a trained run's policy, renders
every state, shrinks each frame to ``size x size`` and writes an HDF5 file that
:func:`toolkit.data.images.load_image_source` reads back as an unlabelled image dataset.

File layout (one row per step; row ``t`` holds state ``s_t``'s frame and what followed it)::

    frames        uint8   [N, size, size, C]   the frame of s_t, before action a_t (C = 3, or 1 with grey)
    actions       [N, ...]                     a_t (int64 for discrete actions, float32 otherwise)
    rewards       float32 [N]                  r_t
    terminations  bool    [N]                  the episode ended at s_{t+1} (a terminal state)
    truncations   bool    [N]                  the episode was cut off at s_{t+1} (a time limit)
    attrs: format="toolkit-frames", env_id, size, source_run ("" for random actions), seed

An episode ends at a row whose termination or truncation is set; the next row is the first
state of the next episode.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.rendering import make_render_env, render_frame, resize_frame

__all__ = ["FRAMES_FORMAT", "FramesSummary", "record_frames"]

#: ``format`` attribute of a frames file.
FRAMES_FORMAT = "toolkit-frames"
#: Rows buffered in memory before they are written, so long recordings need little memory.
_FLUSH_ROWS = 1024


@dataclass
class FramesSummary:
    """What :func:`record_frames` wrote."""

    path: Path
    #: Rows (steps) in the file.
    frames: int
    #: Episodes the rows span, the last one possibly unfinished.
    episodes: int
    #: Side of each square frame in pixels.
    size: int
    #: Wall-clock time the recording took.
    seconds: float


def record_frames(
    env_id: str,
    steps: int,
    size: int,
    out: Path,
    run_dir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    grey: bool = False,
    env_kwargs: dict[str, Any] | None = None,
) -> FramesSummary:
    """Step ``env_id`` for ``steps`` steps and write each state's rendered frame to ``out``.

    Actions are uniformly random (seeded by ``seed``) or, with ``run_dir``, sampled from that
    trained run's policy. Each frame is shrunk to ``size x size`` by averaging the pixels it
    covers (a frame that is not square is stretched); ``grey`` keeps luminance only. The file
    is written atomically and an existing ``out`` is never replaced.
    """
    if steps <= 0:
        raise ToolkitError(f"The number of steps to record must be positive, got {steps}.")
    if size < 8:
        raise ToolkitError(f"The frame size must be at least 8 pixels, got {size}.")
    out = Path(out)
    if out.exists():
        raise ToolkitError(f"{out} already exists; choose another file name or remove it first.")

    session = None
    if run_dir is not None:
        from toolkit.session import open_trained_run

        session, _ = open_trained_run(Path(run_dir))
        if getattr(session, "is_model", False):
            raise ToolkitError(f"{run_dir} is a model run, which has no policy; give an agent run or no run for random actions.")
    env = _make_render_env(env_id, size, env_kwargs or {})
    try:
        if session is not None and env_id != session.settings.env:
            from toolkit.data.collect import check_run_fits

            check_run_fits(session, env, env_id)
        start = time.perf_counter()
        rows, episodes = _record(env, env_id, steps, size, out, session, run_dir, seed, progress, grey)
        seconds = time.perf_counter() - start
    finally:
        env.close()
    return FramesSummary(path=out, frames=rows, episodes=episodes, size=size, seconds=seconds)


#: How a frames error ends when the env cannot give pictures.
_CANNOT_RECORD = "it cannot be recorded"


def _make_render_env(env_id: str, size: int, env_kwargs: dict[str, Any]) -> Any:
    """The env with offscreen ``rgb_array`` rendering, or a one-sentence error if it has none."""
    from toolkit.envs import check_env_id, make_env

    check_env_id(env_id)
    return make_render_env(env_id, size, make_env, _CANNOT_RECORD, **env_kwargs)


class _Policy:
    """Chooses actions: a trained run's stochastic policy, or uniform random ones."""

    def __init__(self, session: Any, space: Any, seed: int) -> None:
        self.session, self.space = session, space
        space.seed(seed)  # random actions are then a function of the seed alone
        self.agent = session.agent if session is not None else None
        # Recurrent agents keep per-episode state; these hooks exist on toolkit agents.
        self.start_episode = getattr(self.agent, "start_episode", lambda: None)
        self.record_reward = getattr(self.agent, "record_reward", lambda reward: None)

    def __call__(self, obs: Any) -> Any:
        if self.agent is None:
            return self.space.sample()
        import torch

        from toolkit.agent import observation_tensor

        # Sampled, not the deterministic best action: varied behaviour gives varied frames.
        with torch.no_grad():
            return self.agent.act(observation_tensor(obs, self.session.device), deterministic=False)[0].cpu().numpy()


class _Writer:
    """Buffers rows and appends them to chunked HDF5 datasets sized for ``steps`` rows."""

    def __init__(self, f: Any, steps: int, first_frame: np.ndarray, first_action: Any) -> None:
        action = np.asarray(first_action)
        action_dtype = np.int64 if np.issubdtype(action.dtype, np.integer) else (
            bool if action.dtype == bool else np.float32
        )
        chunk = min(steps, 256)
        self.datasets = {
            # lzf is fast to write and read and ships with h5py; rendered scenes compress well.
            "frames": f.create_dataset(
                "frames", shape=(steps, *first_frame.shape), dtype=np.uint8,
                chunks=(chunk, *first_frame.shape), compression="lzf",
            ),
            "actions": f.create_dataset("actions", shape=(steps, *action.shape), dtype=action_dtype),
            "rewards": f.create_dataset("rewards", shape=(steps,), dtype=np.float32),
            "terminations": f.create_dataset("terminations", shape=(steps,), dtype=bool),
            "truncations": f.create_dataset("truncations", shape=(steps,), dtype=bool),
        }
        self.buffer: dict[str, list[Any]] = {k: [] for k in self.datasets}
        self.written = 0

    def append(self, **row: Any) -> None:
        for key, value in row.items():
            self.buffer[key].append(value)
        if len(self.buffer["frames"]) >= _FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        n = len(self.buffer["frames"])
        if n == 0:
            return
        for key, dataset in self.datasets.items():
            dataset[self.written:self.written + n] = np.asarray(self.buffer[key], dtype=dataset.dtype)
            self.buffer[key].clear()
        self.written += n


def _record(
    env: Any, env_id: str, steps: int, size: int, out: Path, session: Any, run_dir: Path | None,
    seed: int, progress: bool, grey: bool,
) -> tuple[int, int]:
    """Roll out and write ``out`` through a temporary file; returns (rows, episodes)."""
    import h5py

    from toolkit.progress import TrainingProgress

    policy = _Policy(session, env.action_space, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    episodes, episode_return, last_return = 1, 0.0, None
    try:
        with h5py.File(tmp, "w") as f, TrainingProgress(steps, enabled=progress, description="recording frames") as bar:
            f.attrs.update(
                format=FRAMES_FORMAT, env_id=env_id, size=size, seed=seed,
                source_run=str(run_dir) if run_dir is not None else "",
            )
            obs, _ = env.reset(seed=seed)
            policy.start_episode()
            writer: _Writer | None = None
            for step in range(1, steps + 1):
                frame = resize_frame(render_frame(env, env_id, _CANNOT_RECORD), size, grey)
                action = policy(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                policy.record_reward(float(reward))
                if writer is None:
                    writer = _Writer(f, steps, frame, action)
                writer.append(
                    frames=frame, actions=action, rewards=float(reward),
                    terminations=bool(terminated), truncations=bool(truncated and not terminated),
                )
                episode_return += float(reward)
                if terminated or truncated:
                    last_return, episode_return = episode_return, 0.0
                    if step < steps:  # the next row starts a new episode
                        episodes += 1
                        # A new seed per episode, as collect_dataset does: reproducible, not repeated.
                        obs, _ = env.reset(seed=seed + episodes - 1)
                        policy.start_episode()
                else:
                    obs = next_obs
                bar.update(step, last_return)
            assert writer is not None  # steps >= 1
            writer.flush()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return steps, episodes
