"""Run directories: resolved config, metrics, checkpoints.

Layout of ``runs/<agent>/<env>/<time>-s<seed>/``::

    config.yaml               what was asked for, resolved (agent, env, seed, agent_config ...)
    metrics.jsonl             one JSON object per line: {"step": ..., "kind": ..., ...}
    tb/                       TensorBoard events of the same metrics
    checkpoints/latest.pt     everything needed to continue exactly
    checkpoints/best.pt       the learner at its best periodic evaluation so far (--eval-every)
    eval/                     results of `toolkit eval`, one JSON per call
    videos/                   MP4s of evaluation episodes

Checkpoints are written to a temporary file and renamed into place, so a crash never
leaves half a file, and they are read with ``torch.load(weights_only=True)``: loading a
checkpoint never runs code from it. Stale ``*.tmp`` files of a write that was cut short are
removed when the run next starts.

``metrics.jsonl`` is strict JSON: a value that is not a finite number (NaN, infinity) is
written as ``null``. A resumed run first drops the rows (and TensorBoard events) logged after
its checkpoint's step, so every reader sees one curve with steps that never go back.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import ToolkitError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT = Path("checkpoints") / "latest.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"
CHECKPOINT_FORMAT = "toolkit-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class RunSettings:
    """Everything about a run that is not the agent's own config."""

    agent: str
    env: str
    seed: int = 0
    steps: int = 0
    device: str = "auto"
    eval_every: int = 0
    eval_episodes: int = 5
    checkpoint_every: int = 10_000
    log_every: int = 1_000
    agent_config: dict[str, Any] = field(default_factory=dict)
    toolkit_version: str = ""
    #: The dataset an offline agent trains on (absolute path or Minari id); None for online agents.
    dataset: str | None = None
    #: Ray: env-runner actors (online agents) or training workers (offline agents); 0 = no Ray.
    workers: int = 0
    #: Ray: environments each env-runner actor steps side by side.
    envs_per_worker: int = 1
    #: Ray: GPUs per data-parallel training worker (offline agents).
    gpus_per_worker: float = 0.0
    #: Ray cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None: RAY_ADDRESS or a local Ray.
    address: str | None = None
    #: A model run's model (``agent`` and ``env`` are then empty); None for agent runs.
    model: str | None = None
    #: The model's resolved config (a model run's counterpart of ``agent_config``).
    model_config: dict[str, Any] = field(default_factory=dict)
    #: Shape of one example a model was built for, checked when the run is resumed or evaluated.
    data_shape: list[int] | None = None
    #: Keyword arguments of the env's constructor (``--env-kwargs``).
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Side of the pixel observations rendered from the env (``--pixels``); None: its own observations.
    pixels: int | None = None
    #: Frames stacked into one pixel observation (``--frame-stack``).
    frame_stack: int = 3
    #: Grey pixel observations (``--grey``).
    grey: bool = False
    #: How `toolkit prune` made this run (source run and step, method, sparsity per layer);
    #: empty for runs that were not pruned. A pruned run's learner carries its masks.
    pruning: dict[str, Any] = field(default_factory=dict)
    #: How the agent's update runs (``--compile``: auto, none, compile, cudagraphs; toolkit.compile).
    compile: str = "auto"
    #: The env id whose preset of the agent's spec was applied (``--preset``); None: no preset.
    preset: str | None = None

    @property
    def env_options(self) -> Any:
        """How this run builds its env (:class:`toolkit.envs.EnvOptions`)."""
        from toolkit.envs import EnvOptions

        return EnvOptions(dict(self.env_kwargs), self.pixels, self.frame_stack, self.grey)

    @property
    def learner(self) -> str:
        """The name of what trains: the model of a model run, else the agent."""
        return self.model or self.agent

    @property
    def learner_config(self) -> dict[str, Any]:
        """The resolved config of the model or agent."""
        return self.model_config if self.model else self.agent_config

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_run_dir(root: Path, agent: str, env: str, seed: int) -> Path:
    """``root/<agent>/<env>/<YYYYmmdd-HHMMSS>-s<seed>``, never an existing directory (for a
    model, ``<env>`` is the dataset's name)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / agent / env.replace("/", "_") / f"{stamp}-s{seed}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def create_run_dir(path: Path) -> Path:
    """Create a new run directory; refuse one that exists, so nothing is overwritten."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ToolkitError(
            f"Run directory {path} already exists; pick another --run-dir, or continue it with `toolkit resume {path}`."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"Cannot create run directory {path}: {_os_reason(path, exc)}; pick another --run-dir.") from None
    return path


def _os_reason(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be made or written, in a few words."""
    import errno

    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a directory"
    existing = next((p for p in path.parents if p.is_dir()), None)
    if existing is not None and (isinstance(exc, PermissionError) or not os.access(existing, os.W_OK)):
        return f"{existing} is not writable"
    if existing is not None and exc.errno == errno.ENOENT:
        return f"{existing} does not allow new directories in it"
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    return (exc.strerror or type(exc).__name__).lower()


def file_error(what: str, path: Path, exc: OSError) -> ToolkitError:
    """One sentence for an OSError while writing a run's file (disk full, permissions ...)."""
    return ToolkitError(f"Cannot write {what} {path}: {_os_reason(path, exc)}.")


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete ``*.tmp`` files left in ``checkpoints/`` by a write that was cut short."""
    folder = run_dir / CHECKPOINT.parent
    if folder.is_dir():
        for tmp in folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)


def save_settings(run_dir: Path, settings: RunSettings) -> None:
    """Write ``config.yaml`` atomically."""
    try:
        _atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(settings.to_dict(), sort_keys=False))
    except OSError as exc:
        raise file_error("run config", run_dir / CONFIG_FILE, exc) from None


def load_settings(run_dir: Path) -> RunSettings:
    """Read a run's ``config.yaml``, explaining what is wrong if it cannot."""
    if not run_dir.exists():
        raise ToolkitError(f"Run directory {run_dir} does not exist.")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ToolkitError(f"{run_dir} is not a toolkit run: it has no {CONFIG_FILE}.")
    try:
        data = yaml.safe_load(path.read_text())
        return RunSettings(**data)
    except (yaml.YAMLError, TypeError) as exc:
        raise ToolkitError(f"{path} is not a valid run config ({str(exc).splitlines()[0]}).") from None


def _finite_or_null(value: Any) -> Any:
    """NaN and infinities become None (``null``), so the line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def metrics_line(record: dict[str, Any]) -> str:
    """One strict-JSON line of ``metrics.jsonl`` (non-finite numbers written as ``null``)."""
    return json.dumps(_finite_or_null(record), allow_nan=False)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the rows of ``metrics.jsonl`` logged after ``step`` (and a line cut short by a
    crash), rewriting the file atomically; rows at ``step`` itself were written before its
    checkpoint and stay."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    kept, dropped = [], False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record.get("step", 0)) <= step
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped = True
    if dropped:
        _atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricsLogger:
    """Appends metrics to ``metrics.jsonl`` and, optionally, TensorBoard.

    ``resume_step``: the step of the checkpoint a run continues from; what was logged after it
    (by a run that crashed, or was stopped at once, after its last checkpoint) is discarded
    from both, so the resumed run does not log those steps twice."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        try:
            if resume_step is not None:
                truncate_metrics(run_dir, resume_step)
            self.file = open(run_dir / METRICS_FILE, "a", buffering=1)
        except OSError as exc:
            raise file_error("metrics file", run_dir / METRICS_FILE, exc) from None
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard drops the events at and after it from earlier event files.
            purge = resume_step + 1 if resume_step is not None else None
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        """Record ``values`` under ``kind`` (e.g. ``train``, ``episode``, ``eval``) at ``step``;
        a value that is NaN or infinite is written to ``metrics.jsonl`` as ``null``."""
        self.file.write(metrics_line({"step": step, "kind": kind, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):  # events such as {"event": "restarted"} are JSON only
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The run's metrics records, optionally only those of one ``kind``. A torn line (the last
    one of a run still writing, or of one killed mid-write) is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record and (kind is None or record.get("kind") == kind):
            records.append(record)
    return records


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a temporary file beside ``path``, fsync, then rename."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the previous checkpoint stays as it was
        raise


def load_checkpoint(path: Path, device: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; one sentence if it is damaged."""
    import torch

    if not path.is_file():
        raise ToolkitError(f"No checkpoint at {path}; the run has not saved one yet.")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        if _refused_by_safe_loading(exc):
            raise ToolkitError(
                f"Checkpoint {path} holds objects that safe loading (weights only) refuses, so it was not loaded "
                "and nothing in it was executed; use checkpoints written by toolkit."
            ) from None
        size = path.stat().st_size if path.exists() else 0
        what = "the file is empty" if size == 0 else f"its {size} bytes are not a complete toolkit checkpoint"
        raise ToolkitError(f"Checkpoint {path} is corrupt or truncated and cannot be read ({what}).") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ToolkitError(f"Checkpoint {path} is not a toolkit checkpoint.")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ToolkitError(
            f"Checkpoint {path} has format version {state.get('version')}, this toolkit reads version {CHECKPOINT_VERSION}."
        )
    return state


def _refused_by_safe_loading(exc: Exception) -> bool:
    """Whether torch.load(weights_only=True) refused an object the file names (a class or
    function it would have had to import or call), rather than failing to parse the file."""
    import pickle

    return isinstance(exc, pickle.UnpicklingError) and bool(
        re.search(r"unsupported global|GLOBAL |not an allowed global|safe_globals|Unsupported class", str(exc), re.I)
    )


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise file_error("results file", path, exc) from None
