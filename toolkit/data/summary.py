"""What `toolkit dataset info` reports about a dataset: size, episodes, returns, scores, and
any NaN or infinite values (which training refuses)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolkit.data.dataset import OfflineDataset
from toolkit.data.scores import normalized_score
from toolkit.data.validate import NonFinite, find_nonfinite


@dataclass
class Stats:
    """Mean, standard deviation, minimum and maximum of some values."""

    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Stats:
        """Statistics of ``values`` (one or more numbers)."""
        v = np.asarray(values, dtype=np.float64)
        return cls(float(v.mean()), float(v.std()), float(v.min()), float(v.max()))


@dataclass
class DatasetSummary:
    """The facts `toolkit dataset info` prints."""

    transitions: int
    terminated: int
    timed_out: int
    unfinished: int
    observation_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    returns: Stats
    env_id: str | None
    scores: Stats | None
    #: Keys holding NaN or infinite values; empty for a dataset fit to train on.
    nonfinite: list[NonFinite] = field(default_factory=list)

    @property
    def episodes(self) -> int:
        """All episodes, finished or not."""
        return self.terminated + self.timed_out + self.unfinished


def summarize(dataset: OfflineDataset, env_id: str | None = None) -> DatasetSummary:
    """Summarise ``dataset``; ``env_id`` (default: the one in its metadata) selects the D4RL
    reference scores, and an env without references simply has no score."""
    env_id = env_id or dataset.metadata.get("env_id") or None
    _, ends = dataset.episode_bounds()
    terminated = int(dataset.terminals[ends - 1].sum())
    # A row flagged both ways terminated: the state was terminal whatever the clock said.
    timed_out = int((dataset.timeouts[ends - 1] & ~dataset.terminals[ends - 1]).sum())
    returns = dataset.episode_returns()
    scores = normalized_score(env_id, returns)
    return DatasetSummary(
        transitions=len(dataset),
        terminated=terminated,
        timed_out=timed_out,
        unfinished=len(ends) - terminated - timed_out,
        observation_shape=dataset.observation_shape,
        action_shape=dataset.action_shape,
        returns=Stats.of(returns),
        env_id=env_id,
        scores=None if scores is None else Stats.of(scores),
        nonfinite=find_nonfinite(dataset),
    )
