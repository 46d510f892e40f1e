"""Learning curves from a run's ``metrics.jsonl``: one run's figure, or several runs overlaid.

* :func:`write_curves` draws ``curves.png`` in a run directory: for an agent the episode
  return (raw, faint, and smoothed) with the evaluation mean return and its ± std band where
  evaluations were logged, then a small panel per training metric; for a model (no episodes)
  a small panel per training and evaluation metric.
* :func:`plot_runs` overlays one metric of several runs. Runs whose ``config.yaml`` differ
  only in the seed form one group, drawn as the mean over its seeds with a min-max band.

Metrics are named ``KIND/KEY`` as logged: ``episode/return``, ``eval/return_mean``,
``train/critic_loss``; a bare ``KEY`` is accepted when only one kind logs it.

Smoothing: episode returns and training metrics are noisy, so a curve is drawn as the
trailing mean of its last ``n // 20`` points (at least 1, at most 50; ``n`` the curve's
points); evaluations are means already and are drawn as they are.

Figures are drawn on matplotlib's Agg canvas directly (never ``pyplot``), so they work
headless and leave the process-wide backend alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from toolkit.errors import ToolkitError
from toolkit.runs import read_metrics

CURVES_FILE = "curves.png"
#: Keys of a record that are not metrics worth a curve.
BOOKKEEPING = frozenset({"step", "kind", "steps_per_second", "updates", "event", "time", "wall_time"})
#: Kinds :func:`write_curves` draws; others (worker, replay, ...) are only for :func:`plot_runs`.
CURVE_KINDS = ("episode", "eval", "train")
#: Settings that do not make two runs different experiments.
NOT_CONFIGURATION = frozenset({"seed", "run_dir"})


# --- reading -----------------------------------------------------------------------------------


def read_series(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every numeric metric of a run as ``{"kind/key": (steps, values)}``, in logged order.

    A torn last line (a run still writing) is skipped (:func:`toolkit.runs.read_metrics`)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in read_metrics(Path(run_dir)):
        kind = str(record.get("kind", "?"))
        for key, value in record.items():
            if key in BOOKKEEPING or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = series.setdefault(f"{kind}/{key}", ([], []))
            steps.append(float(record["step"]))
            values.append(float(value))
    return {name: (np.asarray(s), np.asarray(v)) for name, (s, v) in series.items()}


def _check_run(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ToolkitError(f"{run_dir} is not a toolkit run: it has no config.yaml.")
    return run_dir


def smooth(values: np.ndarray) -> np.ndarray:
    """Trailing mean over the last ``clip(n // 20, 1, 50)`` points (see the module docstring)."""
    values = np.asarray(values, dtype=float)
    window = int(min(50, max(1, len(values) // 20)))
    if window == 1:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    idx = np.arange(len(values))
    lo = np.maximum(0, idx + 1 - window)
    out[:] = (sums[idx + 1] - sums[lo]) / (idx + 1 - lo)
    return out


# --- one run's figure ------------------------------------------------------------------------------


def curves_figure(run_dir: Path) -> Any:
    """The figure :func:`write_curves` saves (a ``matplotlib.figure.Figure``)."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    series = read_series(run_dir)
    has_return = "episode/return" in series or "eval/return_mean" in series
    main_keys = {"episode/return", "eval/return_mean", "eval/return_std"}
    train = sorted(k.split("/", 1)[1] for k in series if k.startswith("train/"))
    evals = sorted(k.split("/", 1)[1] for k in series if k.startswith("eval/") and k not in main_keys)
    small = train + [k for k in evals if k not in train]  # a key both logged shares a panel

    cols = 3
    rows = math.ceil(len(small) / cols)
    top = 1 if has_return else 0
    fig = Figure(figsize=(cols * 3.6, 3.4 * top + 2.5 * rows + (0.5 if not (top or rows) else 0)),
                 layout="constrained")
    fig.suptitle(_title(run_dir), fontsize=10)
    if not (top or rows):
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no metrics logged yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    grid = fig.add_gridspec(top * 2 + rows, cols, height_ratios=[1.4, 1.4][:top * 2] + [1.0] * rows)
    if has_return:
        ax = fig.add_subplot(grid[0:2, :])
        _draw_return(ax, series)
    for i, key in enumerate(small):
        ax = fig.add_subplot(grid[top * 2 + i // cols, i % cols])
        _draw_small(ax, series, key)
    return fig


def _title(run_dir: Path) -> str:
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    learner = cfg.get("model") or cfg.get("agent") or "?"
    where = cfg.get("dataset") if cfg.get("model") else cfg.get("env")
    where = _short_value(where) if where else where
    return f"{run_dir.name}: {learner}" + (f" on {where}" if where else "") + f", seed {cfg.get('seed', '?')}"


def _draw_return(ax: Any, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    if "episode/return" in series:
        steps, values = series["episode/return"]
        if len(values) >= 40:  # enough episodes to smooth (a window of 2 or more)
            ax.plot(steps, values, color="C0", alpha=0.25, linewidth=0.8, label="episode return")
            ax.plot(steps, smooth(values), color="C0", linewidth=1.6, label="episode return (smoothed)")
        else:
            ax.plot(steps, values, color="C0", marker=".", linewidth=1.2, label="episode return")
    if "eval/return_mean" in series:
        steps, mean = series["eval/return_mean"]
        ax.plot(steps, mean, color="C3", marker="o", markersize=3, linewidth=1.6, label="evaluation mean return")
        if "eval/return_std" in series and len(series["eval/return_std"][1]) == len(mean):
            std = series["eval/return_std"][1]
            ax.fill_between(steps, mean - std, mean + std, color="C3", alpha=0.2, linewidth=0,
                            label="evaluation ± std")
    ax.set_xlabel("step")
    ax.set_ylabel("return")
    ax.set_title("return", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _draw_small(ax: Any, series: dict[str, tuple[np.ndarray, np.ndarray]], key: str) -> None:
    if f"train/{key}" in series:
        steps, values = series[f"train/{key}"]
        ax.plot(steps, values, color="C0", alpha=0.3 if len(values) > 20 else 1.0, linewidth=0.8, label="train")
        if len(values) > 20:
            ax.plot(steps, smooth(values), color="C0", linewidth=1.3)
    if f"eval/{key}" in series:
        steps, values = series[f"eval/{key}"]
        ax.plot(steps, values, color="C3", marker="o", markersize=3, linewidth=1.2, label="eval")
    ax.set_title(key, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if f"train/{key}" in series and f"eval/{key}" in series:
        ax.legend(fontsize=7)


def write_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the run's learning curves into ``RUN/curves.png`` (or ``out``); return the path.

    Safe to call on any run directory, also one with no metrics yet (a note is drawn)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / CURVES_FILE
    fig = curves_figure(run_dir)
    _save(fig, out)
    return out


def _save(fig: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(out)  # a reader never sees half a PNG


# --- several runs ---------------------------------------------------------------------------------


def run_configuration(run_dir: Path) -> dict[str, Any]:
    """A run's config.yaml without what does not make it another experiment (seed, run dir)."""
    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    return {k: v for k, v in cfg.items() if k not in NOT_CONFIGURATION}


def group_by_seed(run_dirs: Sequence[Path], configs: Sequence[dict[str, Any]] | None = None) -> list[list[int]]:
    """Indices of ``run_dirs`` grouped so each group's configurations are equal but for the
    seed (and run dir); groups in order of first appearance. ``configs`` defaults to each
    run's :func:`run_configuration`."""
    if configs is None:
        configs = [run_configuration(d) for d in run_dirs]
    keys: list[str] = []
    groups: list[list[int]] = []
    for i, cfg in enumerate(configs):
        key = json.dumps({k: v for k, v in cfg.items() if k not in NOT_CONFIGURATION}, sort_keys=True, default=str)
        if key in keys:
            groups[keys.index(key)].append(i)
        else:
            keys.append(key)
            groups.append([i])
    return groups


def group_labels(configs: Sequence[dict[str, Any]], groups: list[list[int]], names: Sequence[str]) -> list[str]:
    """A label per group: the settings that tell the groups apart (``lr=0.001``), or the runs'
    directory names when nothing in the configurations differs. Groups of different learners
    (``ppo`` and ``sb3-ppo``) are labelled by the learner, followed by the settings that tell one
    learner's groups apart: their other settings differ only because they are other learners."""
    flat = [_flatten(configs[g[0]]) for g in groups]
    learners = [str(configs[g[0]].get("model") or configs[g[0]].get("agent") or "") for g in groups]
    by_learner = len(set(learners)) > 1
    differing = sorted({k for f in flat for k in f if any(f.get(k) != other.get(k) for other in flat)})
    if by_learner:
        differing = [k for k in differing if any(f.get(k) != o.get(k) for f, a in zip(flat, learners)
                                                 for o, b in zip(flat, learners) if a == b)]
    differing = [k for k in differing if k != "toolkit_version"] or differing
    labels = []
    for g, f, learner in zip(groups, flat, learners):
        if (differing or by_learner) and len(groups) > 1:
            parts = [learner] if by_learner else []
            parts += [f"{k.split('.')[-1]}={_short_value(f.get(k))}" for k in differing[:3]]
            label = ", ".join(parts) + (", ..." if len(differing) > 3 else "")
            label = label if len(label) <= 70 else label[:67] + "..."
        else:
            label = names[g[0]]
        labels.append(label + (f" ({len(g)} seeds)" if len(g) > 1 else ""))
    return labels


def _short_value(value: Any) -> str:
    """A setting as a legend shows it: a path by its last part."""
    text = str(value)
    return Path(text).name if "/" in text and len(text) > 24 else text


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, default=str) if isinstance(v, list) else v
    return out


def resolve_metric(metric: str | None, available: set[str]) -> str:
    """The ``KIND/KEY`` a user's metric names; the default is the evaluation return, else the
    episode return, else the training loss. Unknown names are one sentence listing the metrics."""
    if metric is None:
        for name in ("eval/return_mean", "episode/return", "train/loss"):
            if name in available:
                return name
        if available:
            return sorted(available)[0]
        raise ToolkitError("These runs have logged no metrics yet.")
    if metric in available:
        return metric
    matches = sorted(name for name in available if name.split("/", 1)[1] == metric)
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(sorted(available)) or "none"
    if len(matches) > 1:
        raise ToolkitError(f"Metric '{metric}' is logged by several kinds; name one of: {', '.join(matches)}.")
    raise ToolkitError(f"Unknown metric '{metric}'; these runs log: {listing}.")


def mean_band(curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 200
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max of several (steps, values) curves on a common step grid.

    Curves logged at the same steps (evaluations) are combined as they are; otherwise each is
    interpolated onto ``points`` steps spanning the range every curve covers."""
    if all(len(s) == len(curves[0][0]) and np.array_equal(s, curves[0][0]) for s, _ in curves):
        grid = curves[0][0]
        stack = np.stack([v for _, v in curves])
    else:
        lo = max(float(s.min()) for s, _ in curves)
        hi = min(float(s.max()) for s, _ in curves)
        if hi < lo:  # the runs share no steps: fall back to every run's own range
            lo, hi = min(float(s.min()) for s, _ in curves), max(float(s.max()) for s, _ in curves)
        grid = np.linspace(lo, hi, points)
        stack = np.stack([np.interp(grid, s, v) for s, v in curves])
    return grid, stack.mean(0), stack.min(0), stack.max(0)


def plot_runs(run_dirs: Sequence[Path], metric: str | None = None, out: Path | None = None) -> Path:
    """Overlay ``metric`` of several runs into ``out`` (default ``curves.png`` in the current
    directory); runs differing only by seed become one mean line with a min-max band."""
    from matplotlib.figure import Figure

    run_dirs = [_check_run(Path(d)) for d in run_dirs]
    if not run_dirs:
        raise ToolkitError("Name at least one run directory to plot.")
    all_series = [read_series(d) for d in run_dirs]
    available = set().union(*(s.keys() for s in all_series))
    name = resolve_metric(metric, available)
    missing = [str(d) for d, s in zip(run_dirs, all_series) if name not in s]
    if missing:
        raise ToolkitError(f"{', '.join(missing)} logged no '{name}'; plot runs that log it or pick another --metric.")
    configs = [run_configuration(d) for d in run_dirs]
    groups = group_by_seed(run_dirs, configs)
    labels = group_labels(configs, groups, [d.name for d in run_dirs])
    smoothed = not name.startswith("eval/")

    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for color, (group, label) in enumerate(zip(groups, labels)):
        curves = []
        for i in group:
            steps, values = all_series[i][name]
            curves.append((steps, smooth(values) if smoothed else values))
        if len(curves) == 1:
            ax.plot(*curves[0], color=f"C{color}", linewidth=1.5, label=label)
            continue
        grid, mean, low, high = mean_band(curves)
        ax.plot(grid, mean, color=f"C{color}", linewidth=1.5, label=label)
        ax.fill_between(grid, low, high, color=f"C{color}", alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    notes = (["mean over seeds, band: min-max"] if any(len(g) > 1 for g in groups) else []) + \
        (["smoothed: trailing mean of n/20 points"] if smoothed else [])
    ax.set_title(name + (f" ({'; '.join(notes)})" if notes else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    out = Path(out) if out is not None else Path(CURVES_FILE)
    _save(fig, out)
    return out


# --- the line after training ------------------------------------------------------------------


def last_eval(run_dir: Path) -> dict[str, Any] | None:
    """The run's last ``eval`` record of metrics.jsonl, or None."""
    evaluations = read_metrics(Path(run_dir), "eval")
    return evaluations[-1] if evaluations else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def summary_line(run_dir: Path, result: Any) -> str:
    """``Wall time 1m05s, 812 steps/s; last evaluation (step 10000): return 123.4 ± 5.6.``

    ``result`` is a :class:`toolkit.trainer.LoopResult` (its timing fields may be missing)."""
    parts = []
    wall = getattr(result, "wall_time", None)
    rate = getattr(result, "steps_per_second", None)
    if wall is not None:
        parts.append(f"Wall time {_duration(wall)}")
    if rate is not None:
        parts.append(f"{rate:,.0f} steps/s" if rate >= 10 else f"{rate:.2f} steps/s")
    text = ", ".join(parts) if parts else "Done"
    record = last_eval(run_dir)
    if record is None:
        return f"{text}; no evaluation logged (toolkit eval {run_dir} runs one)."
    if "return_mean" in record:
        std = record.get("return_std")
        value = f"return {record['return_mean']:.1f}" + (f" ± {std:.1f}" if isinstance(std, (int, float)) else "")
    else:
        numbers = [(k, v) for k, v in record.items() if k not in BOOKKEEPING and isinstance(v, (int, float))]
        value = ", ".join(f"{k} {v:.4g}" for k, v in numbers[:4]) + (", ..." if len(numbers) > 4 else "")
    return f"{text}; last evaluation (step {record['step']}): {value}."


def write_sweep_curves(sweep_dir: Path, run_dirs: Sequence[Path], metric: str | None = None) -> Path | None:
    """A sweep's ``curves.png``: every trial's default metric, each configuration one mean
    over its seeds with a min-max band. None (and no file) when no trial logged a metric
    every trial has; a figure never fails a sweep."""
    runs = [Path(d) for d in run_dirs if (Path(d) / "config.yaml").is_file() and (Path(d) / "metrics.jsonl").is_file()]
    if not runs:
        return None
    try:
        return plot_runs(runs, metric, Path(sweep_dir) / CURVES_FILE)
    except (ToolkitError, OSError, ValueError):
        return None
