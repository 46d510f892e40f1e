"""Build an offline dataset from a trained run: roll out its policy, or dump its replay buffer.

Qualities, as D4RL names them: ``medium`` and ``expert`` roll out the given run's policy (the
user picks a run of that quality; the name is recorded in the metadata), ``random`` takes
uniformly random actions (no run needed), ``replay`` writes the run's replay buffer as it was
at its last checkpoint, oldest transition first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.dataset import OfflineDataset
from toolkit.errors import ToolkitError

#: Qualities ``collect_dataset`` can produce.
QUALITIES = ("medium", "expert", "random", "replay")


def collect_dataset(
    run_dir: Path | None,
    env_id: str | None,
    steps: int,
    quality: str = "medium",
    noise: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> OfflineDataset:
    """Collect ``steps`` transitions (all of the buffer for ``replay``) as an :class:`OfflineDataset`.

    ``env_id`` defaults to the run's env. ``noise`` is the standard deviation of Gaussian action
    noise as a fraction of each action's half-range (continuous actions) or the probability of
    a random action (discrete actions).
    """
    if quality not in QUALITIES:
        raise ToolkitError(f"Unknown dataset quality '{quality}'; use one of: {', '.join(QUALITIES)}.")
    if steps < 0 or (quality != "replay" and steps == 0):
        raise ToolkitError(f"--steps must be a positive number of environment steps, got {steps}.")
    if not 0.0 <= noise <= 1.0:
        raise ToolkitError(f"--noise must be between 0 and 1, got {noise}.")
    if quality == "random":
        if env_id is None:
            raise ToolkitError("--quality random needs --env: there is no run to take the env from.")
        return _rollout(None, env_id, steps, "random", noise, seed, progress, source_run=None)
    if run_dir is None:
        raise ToolkitError(f"--quality {quality} needs --from RUN_DIR, a run directory written by `toolkit train`.")
    if quality == "replay":
        from toolkit.data.replay import replay_dataset

        return replay_dataset(Path(run_dir), env_id, steps)
    from toolkit.session import open_trained_run

    session, _ = open_trained_run(Path(run_dir))
    return _rollout(session, env_id or session.settings.env, steps, quality, noise, seed, progress, source_run=str(run_dir))


class _Actor:
    """Chooses actions: the policy (or uniform random), plus the requested exploration noise."""

    def __init__(self, session: Any, space: Any, noise: float, seed: int) -> None:
        self.session, self.space, self.noise = session, space, noise
        self.rng = np.random.default_rng(seed)
        self.discrete = not hasattr(space, "low")

    def _uniform(self) -> np.ndarray:
        if self.discrete:
            return np.asarray(self.rng.integers(self.space.n))
        return self.rng.uniform(self.space.low, self.space.high).astype(np.float32)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.session is None:
            return self._uniform()
        from toolkit.agent import observation_tensor

        # The deterministic action is the policy's best guess; noise, when asked for, widens the
        # data around it as D4RL's noisy datasets do.
        action = self.session.agent.act(observation_tensor(obs, self.session.device), deterministic=True)[0].cpu().numpy()
        if self.discrete:
            return self._uniform() if self.rng.random() < self.noise else action
        if self.noise > 0:
            half_range = (self.space.high - self.space.low) / 2.0
            action = action + self.rng.normal(0.0, self.noise, size=action.shape) * half_range
        return np.clip(action, self.space.low, self.space.high).astype(np.float32)


def _rollout(
    session: Any, env_id: str, steps: int, quality: str, noise: float, seed: int, progress: bool, source_run: str | None
) -> OfflineDataset:
    """Step ``env_id`` for ``steps`` steps with the session's policy (or random actions)."""
    from toolkit.envs import make_env
    from toolkit.progress import TrainingProgress

    same_env = session is not None and env_id == session.settings.env
    env = make_env(env_id, options=session.settings.env_options if same_env else None)
    if session is not None and not same_env:
        check_run_fits(session, env, env_id)
    actor = _Actor(session, env.action_space, noise, seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("obs", "next", "act", "rew", "term", "trunc")}
    episode, episode_return, last_return = 0, 0.0, None
    obs, _ = env.reset(seed=seed)
    with TrainingProgress(steps, enabled=progress, description=f"collecting {quality}") as bar:
        for step in range(1, steps + 1):
            action = actor(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(rows, (obs, next_obs, action, reward, terminated, truncated and not terminated)):
                rows[key].append(value)
            episode_return += float(reward)
            if terminated or truncated:
                episode, last_return, episode_return = episode + 1, episode_return, 0.0
                obs, _ = env.reset(seed=seed + episode)
            else:
                obs = next_obs
            bar.update(step, last_return)
    env.close()
    metadata = {"env_id": env_id, "quality": quality, "noise": str(noise), "seed": str(seed)}
    if source_run is not None:
        metadata.update(source_run=source_run, agent=session.settings.agent)
    return _as_dataset(rows, metadata, source=f"{quality} rollouts on {env_id}")


def check_run_fits(session: Any, env: Any, env_id: str) -> None:
    """The run's agent was built for its own env; another env must have the same spaces."""
    own = session.make_env()
    for what in ("observation_space", "action_space"):
        if getattr(own, what) != getattr(env, what):
            raise ToolkitError(
                f"The run was trained on {session.settings.env}, whose {what.replace('_', ' ')} {getattr(own, what)} "
                f"differs from {env_id}'s {getattr(env, what)}; collect on {session.settings.env}."
            )
    own.close()


def _as_dataset(rows: dict[str, list[Any]], metadata: dict[str, str], source: str) -> OfflineDataset:
    obs = np.asarray(rows["obs"])
    obs_dtype = np.uint8 if obs.dtype == np.uint8 else np.float32
    actions = np.asarray(rows["act"])
    return OfflineDataset(
        observations=obs.astype(obs_dtype),
        actions=actions.astype(np.int64 if np.issubdtype(actions.dtype, np.integer) else np.float32),
        rewards=np.asarray(rows["rew"], dtype=np.float32),
        terminals=np.asarray(rows["term"], dtype=bool),
        timeouts=np.asarray(rows["trunc"], dtype=bool),
        next_observations=np.asarray(rows["next"]).astype(obs_dtype),
        source=source,
        metadata=metadata,
    )
