"""Run directories: resolved config, metrics, checkpoints.

Layout of ``runs/<agent>/<env>/<time>-s<seed>/``::

    config.yaml               what was asked for, resolved (agent, env, seed, agent_config ...)
    metrics.jsonl             one JSON object per line: {"step": ..., "kind": ..., ...}
    tb/                       TensorBoard events of the same metrics
    checkpoints/latest.pt     everything needed to continue exactly
    eval/                     results of `toolkit eval`, one JSON per call
    videos/                   MP4s of evaluation episodes

Checkpoints are written to a temporary file and renamed into place, so a crash never
leaves half a file, and they are read with ``torch.load(weights_only=True)``: loading a
checkpoint never runs code from it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import ToolkitError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT = Path("checkpoints") / "latest.pt"
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
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_settings(run_dir: Path, settings: RunSettings) -> None:
    """Write ``config.yaml`` atomically."""
    _atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(settings.to_dict(), sort_keys=False))


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


class MetricsLogger:
    """Appends metrics to ``metrics.jsonl`` and, optionally, TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.file = open(run_dir / METRICS_FILE, "a", buffering=1)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        """Record ``values`` under ``kind`` (e.g. ``train``, ``episode``, ``eval``) at ``step``."""
        self.file.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):  # events such as {"event": "restarted"} are JSON only
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The run's metrics records, optionally only those of one ``kind``."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a temporary file beside ``path``, fsync, then rename."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; one sentence if it is damaged."""
    import torch

    if not path.is_file():
        raise ToolkitError(f"No checkpoint at {path}; the run has not saved one yet.")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"Checkpoint {path} is corrupt or truncated and cannot be read ({reason[:160]}).") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ToolkitError(f"Checkpoint {path} is not a toolkit checkpoint.")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ToolkitError(
            f"Checkpoint {path} has format version {state.get('version')}, this toolkit reads version {CHECKPOINT_VERSION}."
        )
    return state


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(data, indent=2) + "\n")
