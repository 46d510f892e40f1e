"""Hyper-parameter sweeps on Ray Tune: ``toolkit sweep AGENT --env ENV --grid key=v1,v2 --seeds S``
(or ``toolkit sweep MODEL --dataset SOURCE ...``).

A sweep is a list of *configurations* (one value per grid key) times seeds ``0 .. S-1``. Every
(configuration, seed) pair is one Tune trial that trains an ordinary run with
:func:`~toolkit.training.start_training` into ``<sweep dir>/<configuration>-s<seed>/``,
evaluates its final checkpoint with :func:`~toolkit.training.evaluate_run` and reports
``final_return`` to Tune. Tune schedules the trials over the cluster (``--address``), one CPU
each by default, and keeps its own records under ``<sweep dir>/tune/``. The sweep writes

    tune/, tune.log  Tune's experiment records and its console output
    results.csv   one row per trial: configuration, grid values, seed, final return, run dir
    summary.csv   one row per configuration: mean and std (over seeds) of the final return, n

``--search grid`` (the default) runs every combination of the grid's values;
``--search random --samples K`` runs K distinct combinations drawn at random from the same
grid (reproducibly: the draw is seeded). The draw happens before Tune starts, so every sampled
configuration runs with every seed; Tune's ``tune.choice`` would draw anew for each seed.

Trials write their run directories into the sweep directory from whichever node runs them, so
on a multi-node cluster it must be on storage every node shares (NFS and the like).

A model's trials report its score instead of a return (the test ELBO of a VAE, the test
accuracy of a classifier, minus the reconstruction error of an autoencoder: see
:meth:`toolkit.model_eval.ModelEvaluation.score`); the CSV columns keep their names.

Everything a user typed is checked before any trial starts: grid keys and values are typed
through the learner's config exactly like ``--set``, so a typo lists the valid keys.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.config import apply_overrides, parse_set_options
from toolkit.errors import ToolkitError
from toolkit.registry import registry

RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.csv"
SEARCHES = ("grid", "random")
#: Seed of the draw of configurations for ``--search random``.
SEARCH_SEED = 0


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["lr=1e-3,3e-4", "hidden_sizes=64,64;256,256"]`` -> ``{"lr": ["1e-3", "3e-4"], ...}``.

    Values are separated by commas, or by semicolons when a value itself holds commas (a tuple
    such as ``hidden_sizes``)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ToolkitError(f"--grid expects key=value1,value2,..., got '{item}'.")
        if key in grid:
            raise ToolkitError(f"--grid names '{key}' twice; give all its values in one --grid {key}=v1,v2.")
        values = [v.strip() for v in raw.split(";" if ";" in raw else ",")]
        if any(not v for v in values):
            raise ToolkitError(f"--grid {key} has an empty value in '{raw}'.")
        if len(set(values)) != len(values):
            raise ToolkitError(f"--grid {key} lists a value twice in '{raw}'.")
        grid[key] = values
    if not grid:
        raise ToolkitError("A sweep needs at least one --grid key=value1,value2.")
    return grid


@dataclass
class SweepPlan:
    """What a sweep runs: configurations (grid key -> value as typed) times seeds."""

    agent: str
    env: str
    keys: list[str]
    configurations: list[dict[str, str]]
    seeds: list[int]
    #: Everything else each trial's ``start_training`` gets (steps, --set items, dataset ...).
    training: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 5
    #: Trials train a model (scored by its test metric) rather than an agent (by its return).
    model: bool = False
    #: What the trials' ``final_return`` measures, as the table says it.
    metric: str = "final return"

    def label(self, index: int) -> str:
        """``lr=0.001 gamma=0.9``: how a configuration is shown in tables and CSVs."""
        return " ".join(f"{k}={v}" for k, v in self.configurations[index].items())

    def trial_name(self, index: int, seed: int) -> str:
        """The run directory of one trial, inside the sweep directory."""
        text = "_".join(f"{k}={v}" for k, v in self.configurations[index].items())
        return f"c{index:02d}-{re.sub(r'[^A-Za-z0-9._=,+-]', '-', text)}-s{seed}"

    @property
    def trials(self) -> int:
        return len(self.configurations) * len(self.seeds)


def plan_sweep(
    agent: str,
    env: str | None,
    grid_items: list[str],
    seeds: int = 1,
    search: str = "grid",
    samples: int | None = None,
    set_items: list[str] | None = None,
    config_file: Path | None = None,
    steps: int | None = None,
    eval_episodes: int = 5,
    dataset: str | Path | None = None,
    device: str = "auto",
) -> SweepPlan:
    """Check a sweep request completely, without starting anything, and lay out its trials."""
    from toolkit.envs import check_agent_fits, check_env_id, make_env
    from toolkit.registry import ModelSpec
    from toolkit.session import build_config
    from toolkit.training import check_learner_inputs

    if seeds < 1:
        raise ToolkitError(f"--seeds must be at least 1 (seeds 0 .. S-1 run for every configuration), got {seeds}.")
    if search not in SEARCHES:
        raise ToolkitError(f"--search must be one of {', '.join(SEARCHES)}, got '{search}'.")
    if samples is not None and search != "random":
        raise ToolkitError("--samples picks configurations at random; add --search random, or drop --samples.")
    if eval_episodes < 1:
        raise ToolkitError(f"--eval-episodes must be positive, got {eval_episodes}.")
    spec = registry.learner(agent)
    check_learner_inputs(spec, env, dataset)
    if isinstance(spec, ModelSpec):
        from toolkit.data.images import load_image_source

        load_image_source(str(dataset))  # an unknown source or a broken file, before any trial
    else:
        assert env is not None
        check_env_id(env)
        probe = make_env(env)
        try:
            check_agent_fits(spec, env, probe)
            if dataset is not None:
                from toolkit.data import check_dataset_fits, load_dataset

                check_dataset_fits(load_dataset(dataset), probe)
        finally:
            probe.close()
    grid = parse_grid(grid_items)
    fixed = parse_set_options(set_items or [])
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ToolkitError(f"'{both[0]}' is given both by --grid and by --set; keep one.")
    base = spec.config()
    for key, values in grid.items():  # unknown keys and ill-typed values, named precisely
        for value in values:
            apply_overrides(base, {key: value}, source="--grid")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if search == "random":
        if samples is None or samples < 1:
            raise ToolkitError("--search random needs --samples K (K >= 1): how many configurations to try.")
        if samples > len(combos):
            raise ToolkitError(
                f"--samples {samples} asks for more configurations than the grid has ({len(combos)}); "
                f"use at most {len(combos)}, or --search grid."
            )
        picked = np.random.default_rng(SEARCH_SEED).choice(len(combos), size=samples, replace=False)
        combos = [combos[i] for i in sorted(picked)]
    fixed_items = [f"{k}={v}" for k, v in fixed.items()]
    for combo in combos:  # whole configurations, through the config's own validate()
        try:
            build_config(spec, config_file, fixed_items + [f"{k}={v}" for k, v in combo.items()])
        except ToolkitError as exc:
            label = " ".join(f"{k}={v}" for k, v in combo.items())
            raise ToolkitError(f"Configuration {label}: {exc}") from None
    training = {
        "steps": steps, "device": device, "set_items": fixed_items, "dataset": _absolute(dataset),
        "config_file": _absolute(config_file), "eval_episodes": eval_episodes,
    }
    is_model = isinstance(spec, ModelSpec)
    where = env if env is not None else Path(str(dataset)).stem
    return SweepPlan(agent, where, list(grid), combos, list(range(seeds)), training, eval_episodes,
                     model=is_model, metric=_model_metric(spec.kind) if is_model else "final return")


def _model_metric(kind: str) -> str:
    """What a model kind's trials are scored by (see ModelEvaluation.score)."""
    return {"classifier": "test accuracy", "generative": "test ELBO",
            "world-model": "minus test MDN-RNN NLL"}.get(kind, "minus test reconstruction error")


def _absolute(path: str | Path | None) -> Any:
    """Trials may run in another working directory: files are passed by absolute path."""
    if path is None:
        return None
    return str(Path(path).resolve()) if Path(path).exists() else path


def default_sweep_dir(root: Path, agent: str, env: str) -> Path:
    """``root/<agent>/<env>/<YYYYmmdd-HHMMSS>``, never an existing directory."""
    base = root / agent / env.replace("/", "_") / time.strftime("%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


# --- running ---------------------------------------------------------------------------------


@dataclass
class TrialRow:
    """One trial's outcome, as written to results.csv."""

    configuration: int
    seed: int
    final_return: float | None
    final_return_std: float | None
    steps: int | None
    run_dir: str
    error: str = ""


@dataclass
class SummaryRow:
    """One configuration's outcome over its seeds, as written to summary.csv."""

    configuration: int
    mean: float | None
    std: float | None
    n: int
    failed: int


@dataclass
class SweepResult:
    """A finished sweep: where it is, its plan, one row per trial and per configuration."""

    sweep_dir: Path
    plan: SweepPlan
    trials: list[TrialRow]
    summary: list[SummaryRow]


def _trial(config: dict[str, Any], plan: SweepPlan, sweep_dir: str) -> None:
    """One Tune trial: an ordinary training run, then an evaluation of its final checkpoint."""
    from ray import tune

    from toolkit.training import evaluate_model_run, evaluate_run, start_training

    index, seed = int(config["configuration"]), int(config["seed"])
    t = plan.training
    overrides = [f"{k}={v}" for k, v in plan.configurations[index].items()]
    run_dir = Path(sweep_dir) / plan.trial_name(index, seed)
    _, loop_result = start_training(
        plan.agent, None if plan.model else plan.env, steps=t["steps"], seed=seed, device=t["device"],
        config_file=Path(t["config_file"]) if t["config_file"] else None, set_items=t["set_items"] + overrides,
        run_dir=run_dir, eval_episodes=t["eval_episodes"], progress=False, dataset=t["dataset"],
    )
    if plan.model:
        report, _, _ = evaluate_model_run(run_dir, figures=False, seed=seed)
        tune.report({"final_return": report.score()[1], "final_return_std": 0.0, "steps": int(loop_result.step)})
        return
    result, _, _ = evaluate_run(run_dir, episodes=plan.eval_episodes)
    tune.report({"final_return": result.mean, "final_return_std": result.std, "steps": int(loop_result.step)})


def run_sweep(
    plan: SweepPlan,
    sweep_dir: Path,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
) -> SweepResult:
    """Run every trial of ``plan`` on Ray Tune and write results.csv and summary.csv."""
    from toolkit.distributed.cluster import init_ray, require_resources

    if sweep_dir.exists() and (not sweep_dir.is_dir() or any(sweep_dir.iterdir())):
        raise ToolkitError(f"Sweep directory {sweep_dir} already exists; pick another --sweep-dir.")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise ToolkitError("--cpus-per-trial must be positive and --gpus-per-trial at least 0.")
    ray = init_ray(address)
    resources = {"CPU": cpus_per_trial, **({"GPU": gpus_per_trial} if gpus_per_trial > 0 else {})}
    require_resources(ray, resources, "one sweep trial")
    from ray import tune

    sweep_dir = sweep_dir.resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, plan=plan, sweep_dir=str(sweep_dir)),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            "configuration": tune.grid_search(list(range(len(plan.configurations)))),
            "seed": tune.grid_search(plan.seeds),
        },
        # Tune's experiment records (state, per-trial results) live with the sweep, not in ~/ray_results.
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=0),
    )
    # Tune prints its own progress boxes even at verbose=0; they go to a log beside its records.
    with open(sweep_dir / "tune.log", "w") as log, contextlib.redirect_stdout(log):
        grid = tuner.fit()
    rows = []
    for result in grid:
        index, seed = int(result.config["configuration"]), int(result.config["seed"])
        metrics = result.metrics or {}
        rows.append(TrialRow(
            configuration=index, seed=seed, final_return=metrics.get("final_return"),
            final_return_std=metrics.get("final_return_std"), steps=metrics.get("steps"),
            run_dir=str(sweep_dir / plan.trial_name(index, seed)),
            error=_first_line(result.error) if result.error is not None else "",
        ))
    rows.sort(key=lambda r: (r.configuration, r.seed))
    summary = summarise(plan, rows)
    write_results(sweep_dir, plan, rows, summary)
    from toolkit.plot import write_sweep_curves  # curves.png: a mean line per configuration

    write_sweep_curves(sweep_dir, [r.run_dir for r in rows if not r.error])
    return SweepResult(sweep_dir, plan, rows, summary)


def _first_line(error: BaseException) -> str:
    """The innermost line of a trial's error (Tune wraps the trial's own exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def summarise(plan: SweepPlan, rows: list[TrialRow]) -> list[SummaryRow]:
    """Mean and sample std (ddof 1; 0 for a single seed) of the final return per configuration,
    best mean first; failed trials are counted apart."""
    out = []
    for index in range(len(plan.configurations)):
        mine = [r for r in rows if r.configuration == index]
        values = [r.final_return for r in mine if r.final_return is not None and not r.error]
        mean = float(np.mean(values)) if values else None
        std = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)
        out.append(SummaryRow(index, mean, std, len(values), len(mine) - len(values)))
    out.sort(key=lambda s: -math.inf if s.mean is None else s.mean, reverse=True)
    return out


def write_results(sweep_dir: Path, plan: SweepPlan, rows: list[TrialRow], summary: list[SummaryRow]) -> None:
    """``results.csv`` (a row per trial) and ``summary.csv`` (a row per configuration)."""

    def grid_values(index: int) -> list[str]:
        return [plan.configurations[index][k] for k in plan.keys]

    with open(sweep_dir / RESULTS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", *plan.keys, "seed", "final_return", "final_return_std", "steps",
                         "run_dir", "error"])
        for r in rows:
            writer.writerow([r.configuration, *grid_values(r.configuration), r.seed, _cell(r.final_return),
                             _cell(r.final_return_std), _cell(r.steps), r.run_dir, r.error])
    with open(sweep_dir / SUMMARY_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", *plan.keys, "mean", "std", "n", "failed"])
        for s in summary:
            writer.writerow([s.configuration, *grid_values(s.configuration), _cell(s.mean), _cell(s.std), s.n, s.failed])


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def summary_table(result: SweepResult) -> Any:
    """A rich table of the summary: a row per configuration, best mean first."""
    from rich.markup import escape
    from rich.table import Table

    plan = result.plan
    seeds = len(plan.seeds)
    table = Table(title=f"{plan.agent} on {plan.env}: {plan.metric} over {seeds} seed{'s' * (seeds != 1)}")
    for key in plan.keys:
        table.add_column(key, no_wrap=True)
    table.add_column(plan.metric, justify="right", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("failed", justify="right")
    for s in result.summary:
        fmt = ".4g" if plan.model else ".2f"  # a model's score can be a small error
        ret = "-" if s.mean is None else f"{s.mean:{fmt}} ± {s.std:{fmt}}"
        values = [escape(plan.configurations[s.configuration][k]) for k in plan.keys]
        table.add_row(*values, ret, str(s.n), str(s.failed))
    return table
