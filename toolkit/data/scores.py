"""D4RL's normalised score: 0 is a random policy, 100 an expert (Fu et al. 2020).

``score = 100 * (return - random) / (expert - random)`` with the reference returns D4RL
publishes for its MuJoCo locomotion tasks (``d4rl/infos.py``: ``REF_MIN_SCORE`` and
``REF_MAX_SCORE``). The same references serve every version of an env (``Hopper-v4``,
``Hopper-v5``, ``hopper-medium-v2``): they describe the task, not the file.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np


class ReferenceScores(NamedTuple):
    """Average returns of a uniformly random policy and of D4RL's expert policy."""

    random: float
    expert: float


#: D4RL's reference returns, by task name (the env id's base name, lower-case).
REFERENCE_SCORES: dict[str, ReferenceScores] = {
    "hopper": ReferenceScores(random=-20.272305, expert=3234.3),
    "halfcheetah": ReferenceScores(random=-280.178953, expert=12135.0),
    "walker2d": ReferenceScores(random=1.629008, expert=4592.3),
}


def reference_scores(env_id: str | None) -> ReferenceScores | None:
    """The references for ``env_id`` (``Hopper-v4``, ``hopper-medium-v2`` ...), or None if unknown."""
    if not env_id:
        return None
    # "ALE/...", "toolkit/hopper-medium-v0": the task is the last path part's first word.
    task = re.split(r"[-_]", env_id.rsplit("/", 1)[-1].lower(), maxsplit=1)[0]
    return REFERENCE_SCORES.get(task)


def normalized_score(env_id: str | None, returns: float | np.ndarray) -> float | np.ndarray | None:
    """D4RL normalised score(s) of undiscounted episode return(s); None for an env without references."""
    ref = reference_scores(env_id)
    if ref is None:
        return None
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - ref.random) / (ref.expert - ref.random)
    return float(scores) if scores.ndim == 0 else scores
