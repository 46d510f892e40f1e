"""A run's replay buffer as an offline dataset (D4RL's "replay" quality).

The buffer is a ring: once full, the write position ``pos`` is also where the oldest row is,
so rows are put in insertion order by starting there. Each row keeps its step index within
its episode, which is all that is needed to find the episodes again: an episode ends at a row
whose next stored row starts a new episode (``episode_step`` 0). A stored ``done`` means the
episode terminated; any other end was a time limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.dataset import OfflineDataset
from toolkit.errors import ToolkitError


def replay_dataset(run_dir: Path, env_id: str | None = None, steps: int = 0) -> OfflineDataset:
    """The replay buffer in ``run_dir``'s latest checkpoint, oldest row first.

    ``steps > 0`` keeps only the newest ``steps`` rows. ``env_id``, when given, must be the run's.
    """
    from toolkit.runs import CHECKPOINT, load_checkpoint, load_settings

    settings = load_settings(run_dir)
    if env_id is not None and env_id != settings.env:
        raise ToolkitError(f"The replay buffer in {run_dir} holds {settings.env} transitions, not {env_id}; drop --env or pass --env {settings.env}.")
    path = run_dir / CHECKPOINT
    state = load_checkpoint(path)
    buffer = state.get("buffer")
    if not isinstance(buffer, dict) or "obs" not in buffer:
        raise ToolkitError(
            f"Checkpoint {path} has no replay buffer (agent '{settings.agent}' does not keep one); use --quality medium, expert or random."
        )
    size = int(buffer["size"])
    if size == 0:
        raise ToolkitError(f"The replay buffer in {path} is empty; train the run for some steps first.")
    order = _insertion_order(size, int(buffer["pos"]), int(buffer["capacity"]))
    rows = {k: buffer[k][:size].cpu().numpy()[order] for k in ("obs", "next_obs", "actions", "rewards", "dones", "episode_step")}
    terminals, timeouts = _episode_flags(rows["episode_step"], rows["dones"].reshape(-1) > 0.5, _last_episode_ended(state))
    dataset = OfflineDataset(
        observations=rows["obs"],
        actions=rows["actions"],
        rewards=rows["rewards"].reshape(-1).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rows["next_obs"],
        source=f"replay buffer of {run_dir}",
        metadata={"env_id": settings.env, "quality": "replay", "source_run": str(run_dir), "agent": settings.agent},
    )
    if 0 < steps < len(dataset):
        return _newest(dataset, steps)
    return dataset


def _insertion_order(size: int, pos: int, capacity: int) -> np.ndarray:
    """Row indices oldest first: a full ring's oldest row sits at the write position."""
    if size < capacity:
        return np.arange(size)
    return (np.arange(size) + pos) % capacity


def _last_episode_ended(state: dict[str, Any]) -> bool:
    """Whether the newest row ended its episode: the loop had begun a fresh one (no steps taken)."""
    env_state = state.get("env")
    actions = env_state.get("actions") if isinstance(env_state, dict) else None
    return actions is not None and len(actions) == 0


def _episode_flags(episode_step: np.ndarray, dones: np.ndarray, last_ended: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(terminals, timeouts)`` from each row's step index and stored done flag."""
    ends = np.zeros(len(episode_step), dtype=bool)
    ends[:-1] = episode_step[1:] == 0
    ends[-1] = last_ended
    ends |= dones  # a terminal state always ends its episode
    return dones.copy(), ends & ~dones


def _newest(dataset: OfflineDataset, steps: int) -> OfflineDataset:
    """The last ``steps`` rows (the first episode may then start mid-way, as in any ring buffer)."""
    cut = slice(len(dataset) - steps, None)
    return OfflineDataset(
        observations=dataset.observations[cut], actions=dataset.actions[cut], rewards=dataset.rewards[cut],
        terminals=dataset.terminals[cut], timeouts=dataset.timeouts[cut], next_observations=dataset.next_observations[cut],
        source=dataset.source, metadata=dataset.metadata,
    )
