"""Offline datasets: D4RL's HDF5 layout and Minari, episodes, returns-to-go, normalised scores.

``load_dataset`` reads either format into an :class:`OfflineDataset`; ``save_dataset`` writes
one; ``check_dataset_fits`` refuses a dataset whose shapes are not the env's. Nothing here
imports torch, so the CLI can import this package cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.data.dataset import REQUIRED_KEYS, OfflineDataset
from toolkit.data.scores import REFERENCE_SCORES, normalized_score, reference_scores
from toolkit.errors import ToolkitError

__all__ = [
    "FORMATS",
    "REFERENCE_SCORES",
    "REQUIRED_KEYS",
    "OfflineDataset",
    "check_dataset_fits",
    "load_dataset",
    "normalized_score",
    "reference_scores",
    "save_dataset",
]

#: Formats ``save_dataset`` writes.
FORMATS = ("d4rl", "minari")


def load_dataset(path_or_id: str | Path, minari_root: str | Path | None = None) -> OfflineDataset:
    """Read a D4RL HDF5 file, a Minari dataset folder, or a local Minari dataset id.

    Anything that is not a readable dataset raises :class:`ToolkitError` naming it.
    """
    from toolkit.data.d4rl import read_d4rl
    from toolkit.data.minari_io import find_minari_data, read_minari

    path = Path(path_or_id)
    if path.is_file():
        return read_d4rl(path)
    if find_minari_data(path_or_id, minari_root) is not None:
        return read_minari(path_or_id, minari_root)
    if path.is_dir():
        raise ToolkitError(f"{path} is a directory but not a Minari dataset (it has no data/metadata.json).")
    if path.suffix.lower() in (".hdf5", ".h5"):
        raise ToolkitError(f"No dataset file at {path}.")
    return read_minari(path_or_id, minari_root)  # raises, naming both places it looked


def save_dataset(
    dataset: OfflineDataset, out: str | Path, format: str = "d4rl", minari_root: str | Path | None = None
) -> Path:
    """Write ``dataset`` to ``out``: a D4RL HDF5 file path, or (``format="minari"``) a Minari
    dataset id stored under ``minari_root``. Never replaces an existing file or dataset."""
    if format == "d4rl":
        from toolkit.data.d4rl import write_d4rl

        return write_d4rl(dataset, Path(out))
    if format == "minari":
        from toolkit.data.minari_io import write_minari

        return write_minari(dataset, str(out), minari_root)
    raise ToolkitError(f"Unknown dataset format '{format}'; use one of: {', '.join(FORMATS)}.")


def _size(shape: tuple[int, ...]) -> str:
    return str(shape[0]) if len(shape) == 1 else ("a scalar" if not shape else str(shape))


def check_dataset_fits(dataset: OfflineDataset, env: Any, env_id: str | None = None) -> None:
    """Refuse a dataset whose observation or action shape differs from ``env``'s spaces.

    ``env`` is a Gymnasium env (or an env id); the message names the dataset, the env and both sizes.
    """
    if isinstance(env, str):
        from toolkit.envs import make_env

        env_id, env = env, make_env(env)
    name = env_id or getattr(getattr(env, "spec", None), "id", None) or "the environment"
    for what, have, space in (
        ("observations", dataset.observation_shape, env.observation_space),
        ("actions", dataset.action_shape, env.action_space),
    ):
        want = tuple(space.shape or ())
        if have != want:
            raise ToolkitError(
                f"Dataset {dataset.source} has {what} of size {_size(have)} but {name} has {what} of size {_size(want)}; "
                f"collect the dataset on {name} or pick the env it was collected on."
            )
