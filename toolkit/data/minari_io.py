"""Minari datasets (Farama's maintained successor of D4RL), written and read through minari.

Minari stores episodes, not flat rows: an episode of ``T`` steps has ``T + 1`` observations
(the last one is where the final step led) and ``terminations`` / ``truncations`` flags. The
toolkit maps them onto D4RL's flat layout: terminations -> ``terminals``, truncations ->
``timeouts``, and each episode's observations ``[1:]`` -> ``next_observations``.

Datasets live under Minari's root directory, ``$MINARI_DATASETS_PATH`` or
``~/.minari/datasets``; an id such as ``toolkit/hopper-medium-v0`` is the folder
``<root>/toolkit/hopper-medium-v0``. A reader may also be given that folder's path directly.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.dataset import OfflineDataset
from toolkit.data.validate import build_dataset
from toolkit.errors import ToolkitError

#: Key of the toolkit's own metadata (env id, quality, source run) inside Minari's metadata.json.
METADATA_KEY = "toolkit"
_ROOT_VARIABLE = "MINARI_DATASETS_PATH"


def minari_root(root: str | Path | None = None) -> Path:
    """The directory Minari datasets are stored under: ``root``, else Minari's own default."""
    # Absolute: minari joins a relative root onto its own data folder when it measures files.
    if root is not None:
        return Path(root).absolute()
    return Path(os.environ.get(_ROOT_VARIABLE) or Path.home() / ".minari" / "datasets").absolute()


@contextmanager
def _using_root(root: Path) -> Iterator[None]:
    # minari reads the root from the environment on every call; point it at ours for the
    # duration of one call and put the caller's setting back afterwards.
    previous = os.environ.get(_ROOT_VARIABLE)
    os.environ[_ROOT_VARIABLE] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_ROOT_VARIABLE, None)
        else:
            os.environ[_ROOT_VARIABLE] = previous


def find_minari_data(ref: str | Path, root: str | Path | None = None) -> Path | None:
    """The ``data`` folder of a Minari dataset given as a directory path or an id, or None."""
    for candidate in (Path(ref), minari_root(root) / str(ref)):
        for data in (candidate / "data", candidate):
            if (data / "metadata.json").is_file():
                return data
    return None


def _spaces(dataset: OfflineDataset, env: Any | None) -> tuple[Any, Any]:
    """Observation and action spaces that describe the stored arrays exactly.

    The env's bounds are kept when its shapes match, but the dtype always follows the data,
    so Minari stores the rows exactly as they are.
    """
    import gymnasium as gym

    def box(array: np.ndarray, space: Any) -> gym.spaces.Box:
        shape = array.shape[1:]
        if isinstance(space, gym.spaces.Box) and space.shape == shape:
            return gym.spaces.Box(space.low.astype(array.dtype), space.high.astype(array.dtype), shape, array.dtype)
        if array.dtype == np.uint8:
            return gym.spaces.Box(0, 255, shape, np.uint8)
        return gym.spaces.Box(-np.inf, np.inf, shape, array.dtype)

    obs_space = box(dataset.observations, getattr(env, "observation_space", None))
    if np.issubdtype(dataset.actions.dtype, np.integer):
        env_space = getattr(env, "action_space", None)
        n = env_space.n if isinstance(env_space, gym.spaces.Discrete) else int(dataset.actions.max()) + 1
        return obs_space, gym.spaces.Discrete(int(n))
    return obs_space, box(dataset.actions, getattr(env, "action_space", None))


def _episode_buffers(dataset: OfflineDataset) -> list[Any]:
    from minari.data_collector.episode_buffer import EpisodeBuffer

    successors = dataset.successors()
    buffers = []
    for i, (start, end) in enumerate(zip(*dataset.episode_bounds())):
        # Minari's infos have T + 1 rows, row t describing observation t (as D4RL's infos/*
        # do); the state after the last step has no info of its own, so its row repeats.
        infos = {k: np.concatenate([v[start:end], v[end - 1 : end]]) for k, v in dataset.infos.items()}
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=np.concatenate([dataset.observations[start:end], successors[end - 1 : end]]),
                actions=dataset.actions[start:end],
                rewards=dataset.rewards[start:end].tolist(),
                terminations=dataset.terminals[start:end].tolist(),
                truncations=dataset.timeouts[start:end].tolist(),
                infos=infos,
            )
        )
    return buffers


def write_minari(dataset: OfflineDataset, dataset_id: str, root: str | Path | None = None) -> Path:
    """Store ``dataset`` as the local Minari dataset ``dataset_id`` under ``root``; returns its folder.

    ``minari.load_dataset(dataset_id)`` reads it when ``MINARI_DATASETS_PATH`` is ``root``.
    The env (``metadata['env_id']``), when registered, is recorded as the dataset's env spec.
    """
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except ValueError:
        raise ToolkitError(
            f"'{dataset_id}' is not a Minari dataset id; use the form namespace/name-v0, e.g. toolkit/hopper-medium-v0."
        ) from None
    base = minari_root(root)
    if (base / dataset_id).exists():
        raise ToolkitError(f"A Minari dataset {dataset_id} already exists at {base / dataset_id}; choose another id or delete it first.")
    from minari.dataset.minari_storage import MinariStorage

    env = _env_or_none(dataset.metadata.get("env_id"))
    obs_space, action_space = _spaces(dataset, env)
    try:
        with _using_root(base), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # minari warns about every optional field (author, permalink ...)
            minari.create_dataset_from_buffers(
                dataset_id, _episode_buffers(dataset), env=env, observation_space=obs_space,
                action_space=action_space, algorithm_name=dataset.metadata.get("quality"),
                description=f"Written by the toolkit from {dataset.source}.", jpeg_encoding=False,
            )
        MinariStorage.read(base / dataset_id / "data").update_metadata({METADATA_KEY: dict(dataset.metadata)})
    except BaseException:
        # Never leave half a dataset behind: the folder did not exist before this call.
        shutil.rmtree(base / dataset_id, ignore_errors=True)
        raise
    finally:
        if env is not None:
            env.close()
    return base / dataset_id


def _env_or_none(env_id: str | None) -> Any | None:
    """The env named in the metadata, or None when there is none or it is not installed here."""
    if not env_id:
        return None
    from toolkit.envs import make_env

    try:
        return make_env(env_id)
    except ToolkitError:
        return None


def read_minari(ref: str | Path, root: str | Path | None = None) -> OfflineDataset:
    """Read a local Minari dataset, given as its directory or its id, into flat D4RL rows."""
    from minari import MinariDataset

    data = find_minari_data(ref, root)
    if data is None:
        raise ToolkitError(
            f"No dataset file or local Minari dataset named {ref} (Minari datasets are looked up in {minari_root(root)})."
        )
    source = str(ref)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari_dataset = MinariDataset(data)
            episodes = list(minari_dataset.iterate_episodes())
            raw_meta = dict(minari_dataset.storage.metadata)
    except Exception as exc:  # minari raises many kinds for a damaged folder; all mean "unreadable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"Minari dataset {source} cannot be read ({reason[:160]}).") from None
    if not episodes:
        raise ToolkitError(f"Dataset {source} is empty: it holds 0 transitions.")
    if any(not isinstance(e.observations, np.ndarray) for e in episodes):
        raise ToolkitError(f"Minari dataset {source} has dict or tuple observations; the toolkit reads array observations only.")
    arrays = {
        "observations": np.concatenate([e.observations[:-1] for e in episodes]),
        "next_observations": np.concatenate([e.observations[1:] for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
        "rewards": np.concatenate([e.rewards for e in episodes]),
        "terminals": np.concatenate([e.terminations for e in episodes]),
        "timeouts": np.concatenate([e.truncations for e in episodes]),
    }
    infos = _flat_infos(episodes)
    metadata = {k: str(v) for k, v in (raw_meta.get(METADATA_KEY) or {}).items()}
    spec = raw_meta.get("env_spec")
    if "env_id" not in metadata and spec:
        import json

        metadata["env_id"] = json.loads(spec).get("id", "") if isinstance(spec, str) else ""
    metadata.setdefault("minari_id", str(raw_meta.get("dataset_id", "")))
    return build_dataset(arrays, source, infos, metadata)


def _flat_infos(episodes: list[Any]) -> dict[str, np.ndarray]:
    """Per-step array infos of all episodes, row t describing observation t (see _episode_buffers)."""
    keys = set.intersection(*(set(e.infos or {}) for e in episodes))
    out = {}
    for key in sorted(keys):
        parts = [np.asarray(e.infos[key]) for e in episodes]
        if all(p.ndim and p.shape[0] == len(e.rewards) + 1 for p, e in zip(parts, episodes)):
            out[key] = np.concatenate([p[:-1] for p in parts])
    return out
