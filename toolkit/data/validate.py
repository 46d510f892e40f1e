"""Turn raw arrays from a file into an :class:`OfflineDataset`, or one sentence saying why not.

Both readers (D4RL HDF5 and Minari) end here, so a dataset is checked the same way whatever
its format: the required keys are present, every key has one row per transition, and there is
at least one transition. A dataset that loads may still hold NaN or infinite values:
:func:`find_nonfinite` finds them (`toolkit dataset info` reports them) and
:func:`check_finite` refuses such a dataset for training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from toolkit.data.dataset import REQUIRED_KEYS, OfflineDataset
from toolkit.errors import ToolkitError


def _column(source: str, key: str, array: np.ndarray) -> np.ndarray:
    """A per-row scalar key as ``[N]``; D4RL files store these as ``[N]`` or ``[N, 1]``."""
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim != 1:
        raise ToolkitError(
            f"Dataset {source} has '{key}' of shape {tuple(array.shape)}; it must hold one value per row, shape [N] or [N, 1]."
        )
    return array


def _observation_dtype(array: np.ndarray) -> np.dtype:
    # Pixels stay uint8 (4x smaller, and what the agents expect); everything else is float32.
    return np.dtype(np.uint8) if array.dtype == np.uint8 else np.dtype(np.float32)


def _action_dtype(array: np.ndarray) -> np.dtype:
    # Integer actions are indices of a discrete space: keep them exact.
    return np.dtype(np.int64) if np.issubdtype(array.dtype, np.integer) else np.dtype(np.float32)


def build_dataset(
    arrays: Mapping[str, np.ndarray],
    source: str,
    infos: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> OfflineDataset:
    """Check raw arrays read from ``source`` and return them as an :class:`OfflineDataset`.

    Raises :class:`ToolkitError` naming ``source`` for a missing key, a key whose row count
    differs from ``observations``, a per-row key with more than one column, or zero rows.
    """
    for key in REQUIRED_KEYS:
        if key not in arrays:
            present = ", ".join(sorted(arrays)) or "none"
            raise ToolkitError(f"Dataset {source} lacks the required key '{key}' (keys present: {present}).")
    observations = np.asarray(arrays["observations"])
    if observations.ndim < 2:
        raise ToolkitError(
            f"Dataset {source} has 'observations' of shape {tuple(observations.shape)}; it must be [N, *observation_shape]."
        )
    rows = observations.shape[0]
    if rows == 0:
        raise ToolkitError(f"Dataset {source} is empty: it holds 0 transitions.")
    keys = list(REQUIRED_KEYS) + (["next_observations"] if arrays.get("next_observations") is not None else [])
    for key in keys:
        length = np.shape(arrays[key])[0] if np.ndim(arrays[key]) else 0
        if length != rows:
            raise ToolkitError(
                f"Dataset {source} has {length} rows of '{key}' but {rows} rows of 'observations'; every key needs one row per transition."
            )
    next_observations = arrays.get("next_observations")
    if next_observations is not None:
        next_observations = np.asarray(next_observations)
        if next_observations.shape != observations.shape:
            raise ToolkitError(
                f"Dataset {source} has 'next_observations' of shape {tuple(next_observations.shape)} but 'observations' of shape {tuple(observations.shape)}."
            )
        next_observations = next_observations.astype(_observation_dtype(observations), copy=False)
    actions = np.asarray(arrays["actions"])
    return OfflineDataset(
        observations=observations.astype(_observation_dtype(observations), copy=False),
        actions=actions.astype(_action_dtype(actions), copy=False),
        rewards=_column(source, "rewards", np.asarray(arrays["rewards"])).astype(np.float32, copy=False),
        terminals=_column(source, "terminals", np.asarray(arrays["terminals"])).astype(bool, copy=False),
        timeouts=_column(source, "timeouts", np.asarray(arrays["timeouts"])).astype(bool, copy=False),
        next_observations=next_observations,
        # Extra per-step information is optional: keep what lines up with the rows, drop the rest
        # rather than reject a file whose core data is fine.
        infos={k: np.asarray(v) for k, v in (infos or {}).items() if np.ndim(v) and np.shape(v)[0] == rows},
        source=source,
        metadata=dict(metadata or {}),
    )


#: The keys learning reads as numbers; a NaN or inf in any of them ends as a NaN loss.
NUMERIC_KEYS = ("observations", "actions", "rewards", "next_observations")

#: Rows scanned at a time, so that checking a large dataset needs little extra memory.
_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class NonFinite:
    """Where a dataset key holds NaN or infinite values."""

    key: str
    #: Index of the first row holding one.
    first_row: int
    #: How many values (not rows) are NaN or infinite.
    count: int


def find_nonfinite(dataset: OfflineDataset) -> list[NonFinite]:
    """Every numeric key of ``dataset`` that holds NaN or inf, in :data:`NUMERIC_KEYS` order."""
    found = []
    for key in NUMERIC_KEYS:
        array = getattr(dataset, key)
        if array is None or not np.issubdtype(array.dtype, np.floating):
            continue  # integer pixels and discrete actions cannot be NaN
        first, count = -1, 0
        for start in range(0, len(array), _CHUNK_ROWS):
            bad = ~np.isfinite(array[start : start + _CHUNK_ROWS])
            rows = bad.reshape(len(bad), -1).any(axis=1)
            if rows.any():
                count += int(bad.sum())
                if first < 0:
                    first = start + int(np.argmax(rows))
        if count:
            found.append(NonFinite(key, first, count))
    return found


def describe_nonfinite(bad: NonFinite) -> str:
    """``'rewards': 3 NaN or infinite values, the first at row 17``."""
    values = "value" if bad.count == 1 else "values"
    return f"'{bad.key}': {bad.count} NaN or infinite {values}, the first at row {bad.first_row}"


def check_finite(dataset: OfflineDataset) -> None:
    """Refuse a dataset holding NaN or inf, which trains silently to NaN losses and returns:
    one sentence naming the first bad key and its first bad row."""
    found = find_nonfinite(dataset)
    if found:
        first = found[0]
        others = f" (and non-finite values in {', '.join(repr(b.key) for b in found[1:])})" if len(found) > 1 else ""
        values = "value" if first.count == 1 else "values"
        raise ToolkitError(
            f"Dataset {dataset.source} has {first.count} NaN or infinite {values} in '{first.key}', the first at row "
            f"{first.first_row}{others}; learning from it would give NaN losses, so fix or drop those rows first."
        )


def env_mismatch(dataset: OfflineDataset, env_id: str | None) -> str | None:
    """A one-line warning when ``dataset`` records an env id other than ``env_id`` (its
    shapes are checked elsewhere), else ``None``."""
    recorded = dataset.metadata.get("env_id") or None
    if not recorded or not env_id or recorded == env_id:
        return None
    return (
        f"dataset {dataset.source} was recorded on {recorded} but trains with --env {env_id}; "
        f"the shapes fit, so training continues (pass --env {recorded} if that was meant)."
    )
