"""Deterministic evaluation of an agent, with an optional headless video."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.agent import observation_tensor, observations_tensor
from toolkit.envs import EnvOptions, make_env
from toolkit.rendering import fast_render_settings, render_frame


#: How an evaluation error ends when the env cannot give pictures.
_NO_VIDEO = "no video can be made of it"


@dataclass
class EvalResult:
    """Returns and lengths of evaluation episodes."""

    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def to_dict(self) -> dict[str, Any]:
        return {
            "episodes": len(self.returns),
            "return_mean": self.mean,
            "return_std": self.std,
            "returns": self.returns,
            "lengths": self.lengths,
        }


def evaluate(
    agent: Any,
    env_id: str,
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    video_path: Path | None = None,
    env: Any = None,
    options: EnvOptions | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes with the agent's deterministic action.

    The evaluation env is seeded from ``seed`` alone and the policy draws no random numbers,
    so evaluating never disturbs a training run's random streams. With ``video_path`` the
    first episode is rendered offscreen and written as an MP4. ``options`` are the run's env
    options (constructor arguments, pixel observations).
    """
    if video_path is None and episodes > 1 and getattr(agent, "evaluates_episodes_together", False):
        return evaluate_together(agent, env_id, episodes, seed, device, env, options)
    if env is None or video_path is not None:
        env = make_env(env_id, render_mode="rgb_array" if video_path is not None else None, options=options)
        if video_path is not None:
            fast_render_settings(env)  # before the first render: MuJoCo reads them when its context is made
    returns: list[float] = []
    lengths: list[int] = []
    frames: list[np.ndarray] = []
    # Any object with ``act`` can be evaluated (benchmarks pass other libraries' policies);
    # the episode hooks of toolkit agents are used when present.
    start_episode = getattr(agent, "start_episode", lambda: None)
    record_reward = getattr(agent, "record_reward", lambda reward: None)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        start_episode()
        done, total, length = False, 0.0, 0
        record = video_path is not None and episode == 0
        while not done:
            if record:
                frames.append(render_frame(env, env_id, _NO_VIDEO))
            action = agent.act(observation_tensor(obs, device), deterministic=True)[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            record_reward(float(reward))
            total += float(reward)
            length += 1
            done = terminated or truncated
        if record:
            frames.append(render_frame(env, env_id, _NO_VIDEO))
        returns.append(total)
        lengths.append(length)
    if video_path is not None:
        write_video(video_path, frames, fps=int(env.metadata.get("render_fps", 30)))
    return EvalResult(returns, lengths)


def evaluate_together(
    agent: Any,
    env_id: str,
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    env: Any = None,
    options: EnvOptions | None = None,
) -> EvalResult:
    """The episodes of :func:`evaluate` in lockstep, one env each, one ``act`` call per step
    for all of them: the same episodes (env ``i`` reset with ``seed + i``), the same returns.

    For agents with ``evaluates_episodes_together``: their ``act`` treats rows as independent
    episodes, ``start_episode(n)`` starts ``n`` of them and ``record_reward`` takes one reward
    per episode. An episode that has ended keeps its row (its last observation, reward 0)
    until every episode has, and its actions are thrown away.
    """
    own_envs = [make_env(env_id, options=options) for _ in range(episodes - (env is not None))]
    envs = ([env] if env is not None else []) + own_envs
    try:
        observations = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
        returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
        running = np.ones(episodes, dtype=bool)
        agent.start_episode(episodes)
        while running.any():
            actions = agent.act(observations_tensor(observations, device), deterministic=True).cpu().numpy()
            rewards = np.zeros(episodes)
            for i in np.flatnonzero(running):
                observations[i], rewards[i], terminated, truncated, _ = envs[i].step(actions[i])
                lengths[i] += 1
                running[i] = not (terminated or truncated)
            agent.record_reward(rewards)
            returns += rewards
    finally:
        for e in own_envs:
            e.close()
    return EvalResult([float(r) for r in returns], [int(n) for n in lengths])


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """Write RGB frames as an H.264 MP4 (imageio's bundled ffmpeg; no system ffmpeg needed)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))
    tmp.replace(path)
