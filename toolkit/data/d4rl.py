"""D4RL's HDF5 layout (Fu et al. 2020), read and written with h5py.

A D4RL file holds flat datasets ``observations``, ``actions``, ``rewards``, ``terminals``,
``timeouts``, optionally ``next_observations``, and per-step extras under the ``infos/`` group.
The toolkit writes the same layout and keeps its metadata (env id, quality, source run) as
attributes of the file's root, which D4RL's own loader ignores.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from toolkit.data.dataset import REQUIRED_KEYS, OfflineDataset
from toolkit.data.validate import build_dataset
from toolkit.errors import ToolkitError


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def read_d4rl(path: Path) -> OfflineDataset:
    """Read a D4RL-layout HDF5 file; a missing, unreadable or malformed file is a :class:`ToolkitError`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"No dataset file at {path}.")
    if not h5py.is_hdf5(path):
        raise ToolkitError(f"Dataset {path} is not an HDF5 file; expected a D4RL-layout .hdf5 file or a Minari dataset.")
    try:
        with h5py.File(path, "r") as f:
            arrays = {k: f[k][()] for k in (*REQUIRED_KEYS, "next_observations") if isinstance(f.get(k), h5py.Dataset)}
            infos: dict[str, np.ndarray] = {}
            if isinstance(f.get("infos"), h5py.Group):
                # visititems walks nested groups too (D4RL's infos are flat, Adroit's are not).
                f["infos"].visititems(
                    lambda name, obj: infos.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            metadata = {k: _attr_text(v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError) as exc:
        raise ToolkitError(f"Dataset {path} is corrupt or truncated and cannot be read ({_short_reason(exc)}).") from None
    return build_dataset(arrays, str(path), infos, metadata)


def _attr_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def write_d4rl(dataset: OfflineDataset, path: Path) -> Path:
    """Write ``dataset`` to ``path`` in D4RL's layout, atomically (temporary file, then rename).

    Per-row scalars are written as ``[N]``, as D4RL's own files do. Refuses to replace an
    existing file.
    """
    import h5py

    path = Path(path)
    if path.exists():
        raise ToolkitError(f"{path} already exists; choose another --out or delete it first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            for key in REQUIRED_KEYS:
                f.create_dataset(key, data=getattr(dataset, key), compression="gzip")
            if dataset.next_observations is not None:
                f.create_dataset("next_observations", data=dataset.next_observations, compression="gzip")
            for key, value in dataset.infos.items():
                f.create_dataset(f"infos/{key}", data=value)
            for key, value in dataset.metadata.items():
                f.attrs[key] = str(value)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
