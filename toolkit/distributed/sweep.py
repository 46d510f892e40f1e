"""Hyper-parameter sweeps on Ray Tune: ``toolkit sweep AGENT --env ENV --grid key=v1,v2 --seeds S``
(or ``toolkit sweep MODEL --dataset SOURCE ...``), and comparisons of several agents:
``toolkit sweep sac,sb3-sac --env Pendulum-v1 [--grid ...] --seeds S``.

A sweep is a list of *configurations* (one value per grid key) times seeds ``0 .. S-1``. Every
(configuration, seed) pair is one Tune trial that trains an ordinary run with
:func:`~toolkit.training.start_training` into ``<sweep dir>/<configuration>-s<seed>/``,
evaluates its final checkpoint with :func:`~toolkit.training.evaluate_run` and reports
``final_return`` to Tune. Tune schedules the trials over the cluster (``--address``), one CPU
each by default, and keeps its own records under ``<sweep dir>/tune/``. The sweep writes

    tune/, tune.log  Tune's experiment records and its console output
    results.csv   one row per trial: configuration, grid values, seed, final return, run dir
    summary.csv   one row per configuration: mean and std (over seeds) of the final return, n
    curves.png    every trial's learning curve, one mean line (and min-max band) per configuration

Several agents (a comma-separated list, native and bridged alike) run every configuration each,
in one sweep: its trials are (agent, configuration, seed), its run directories are prefixed
with the agent (``sac-c00-lr=0.001-s0``), and results.csv, summary.csv and the printed table
gain an ``agent`` column. Grid and ``--set`` keys must then be settings of every listed agent;
the grid may be empty (a pure comparison of the agents' defaults). One agent's sweep is laid out
exactly as before, and needs a grid.

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
from collections.abc import Iterator, Sequence
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


def parse_grid(items: list[str], allow_empty: bool = False) -> dict[str, list[str]]:
    """``["lr=1e-3,3e-4", "hidden_sizes=64,64;256,256"]`` -> ``{"lr": ["1e-3", "3e-4"], ...}``.

    Values are separated by commas, or by semicolons when a value itself holds commas (a tuple
    such as ``hidden_sizes``). An empty grid is refused unless ``allow_empty`` (a comparison of
    several agents needs no grid)."""
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
    if not grid and not allow_empty:
        raise ToolkitError("A sweep needs at least one --grid key=value1,value2.")
    return grid


def parse_agents(text: str) -> list[str]:
    """``"sac, sb3-sac"`` -> ``["sac", "sb3-sac"]``: the learners a sweep compares."""
    names = [name.strip() for name in text.split(",")]
    if any(not name for name in names):
        raise ToolkitError(f"The agent list '{text}' has an empty name; separate agents by single commas (sac,sb3-sac).")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ToolkitError(f"The agent list '{text}' names '{twice[0]}' twice.")
    return names


@dataclass
class SweepPlan:
    """What a sweep runs: agents times configurations (grid key -> value as typed) times seeds.

    ``agent`` is one learner's name, or several separated by commas (see :attr:`agents`)."""

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

    @property
    def agents(self) -> list[str]:
        """The learners the sweep trains, in the order given."""
        return self.agent.split(",")

    @property
    def several(self) -> bool:
        """Whether the sweep compares several agents (its tables then have an agent column)."""
        return len(self.agents) > 1

    def label(self, index: int) -> str:
        """``lr=0.001 gamma=0.9``: how a configuration is shown in tables and CSVs."""
        return " ".join(f"{k}={v}" for k, v in self.configurations[index].items())

    def trial_name(self, index: int, seed: int, agent: int = 0) -> str:
        """The run directory of one trial, inside the sweep directory; prefixed by the agent
        when the sweep has several (each runs the same configurations)."""
        text = "_".join(f"{k}={v}" for k, v in self.configurations[index].items())
        name = f"c{index:02d}-{_safe(text)}-s{seed}" if text else f"c{index:02d}-s{seed}"
        return f"{_safe(self.agents[agent])}-{name}" if self.several else name

    @property
    def trials(self) -> int:
        """How many trials the sweep runs: agents x configurations x seeds."""
        return len(self.agents) * len(self.configurations) * len(self.seeds)


def _safe(text: str) -> str:
    """``text`` with every character a directory name should not hold replaced by ``-``."""
    return re.sub(r'[^A-Za-z0-9._=,+-]', '-', text)


def plan_sweep(
    agent: str,
    env: str | None,
    grid_items: list[str] | None,
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
    """Check a sweep request completely, without starting anything, and lay out its trials.

    ``agent`` names one learner or several, comma-separated; every check that concerns a
    learner (its inputs, the env's spaces, every grid and ``--set`` key and value) is made for
    each, and with several agents its sentence starts by naming the agent it is about."""
    from toolkit.envs import check_env_id

    if seeds < 1:
        raise ToolkitError(f"--seeds must be at least 1 (seeds 0 .. S-1 run for every configuration), got {seeds}.")
    if search not in SEARCHES:
        raise ToolkitError(f"--search must be one of {', '.join(SEARCHES)}, got '{search}'.")
    if samples is not None and search != "random":
        raise ToolkitError("--samples picks configurations at random; add --search random, or drop --samples.")
    if eval_episodes < 1:
        raise ToolkitError(f"--eval-episodes must be positive, got {eval_episodes}.")
    names = parse_agents(agent)
    several = len(names) > 1
    specs = [registry.learner(name) for name in names]
    if env is not None and any(not _is_model(spec) for spec in specs):
        check_env_id(env)  # once: the env is every agent's
    for spec in specs:
        with _about(spec.name, several):
            _check_inputs(spec, env, dataset)
    metric = _common_metric(specs)
    grid = parse_grid(grid_items or [], allow_empty=several)
    fixed = parse_set_options(set_items or [])
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ToolkitError(f"'{both[0]}' is given both by --grid and by --set; keep one.")
    for spec in specs:  # unknown keys and ill-typed values, named precisely
        with _about(spec.name, several):
            _check_grid_values(spec, grid)
    combos = _configurations(grid, search, samples)
    fixed_items = [f"{k}={v}" for k, v in fixed.items()]
    for spec in specs:
        with _about(spec.name, several):
            _check_configurations(spec, combos, fixed_items, config_file)
    training = {
        "steps": steps, "device": device, "set_items": fixed_items, "dataset": _absolute(dataset),
        "config_file": _absolute(config_file), "eval_episodes": eval_episodes,
    }
    is_model = _is_model(specs[0])
    where = env if env is not None else Path(str(dataset)).stem
    return SweepPlan(",".join(names), where, list(grid), combos, list(range(seeds)), training, eval_episodes,
                     model=is_model, metric=metric)


@contextlib.contextmanager
def _about(agent: str, several: bool) -> Iterator[None]:
    """In a sweep of several agents, a refusal that does not name the agent it is about
    already starts by naming it."""
    try:
        yield
    except ToolkitError as exc:
        if not several or f"'{agent}'" in str(exc):
            raise
        raise ToolkitError(f"Agent '{agent}': {exc}") from None


def _is_model(spec: Any) -> bool:
    from toolkit.registry import ModelSpec

    return isinstance(spec, ModelSpec)


def _check_inputs(spec: Any, env: str | None, dataset: str | Path | None) -> None:
    """What one learner needs from the env or dataset, checked before any trial starts."""
    from toolkit.envs import check_agent_fits, make_env
    from toolkit.training import check_learner_inputs

    check_learner_inputs(spec, env, dataset)
    if _is_model(spec):
        from toolkit.data.images import load_image_source

        load_image_source(str(dataset))  # an unknown source or a broken file, before any trial
        return
    assert env is not None
    probe = make_env(env)
    try:
        check_agent_fits(spec, env, probe)
        if dataset is not None:  # what `toolkit train` refuses, refused before any trial starts
            from toolkit.data import check_dataset_fits, load_dataset
            from toolkit.data.validate import check_finite

            data = load_dataset(dataset)
            check_finite(data)
            check_dataset_fits(data, probe)
    finally:
        probe.close()


def _common_metric(specs: list[Any]) -> str:
    """What every trial's ``final_return`` measures; learners scored differently (a return
    and a test accuracy, say) cannot share one table."""
    metrics = {spec.name: _model_metric(spec.kind) if _is_model(spec) else "final return" for spec in specs}
    distinct = sorted(set(metrics.values()))
    if len(distinct) > 1:
        listing = "; ".join(f"{name}: {metric}" for name, metric in metrics.items())
        raise ToolkitError(f"These learners are scored by different measures ({listing}); sweep them separately.")
    return distinct[0]


def _check_grid_values(spec: Any, grid: dict[str, list[str]]) -> None:
    """Every grid value typed through the learner's config, as ``--set`` would be."""
    base = spec.config()
    for key, values in grid.items():
        for value in values:
            apply_overrides(base, {key: value}, source="--grid")


def _configurations(grid: dict[str, list[str]], search: str, samples: int | None) -> list[dict[str, str]]:
    """The grid's configurations: all of them, or ``samples`` drawn at random (seeded)."""
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
    return combos


def _check_configurations(spec: Any, combos: list[dict[str, str]], fixed_items: list[str],
                          config_file: Path | None) -> None:
    """Whole configurations, through the learner's config and its own validate()."""
    from toolkit.session import build_config

    for combo in combos:
        try:
            build_config(spec, config_file, fixed_items + [f"{k}={v}" for k, v in combo.items()])
        except ToolkitError as exc:
            label = " ".join(f"{k}={v}" for k, v in combo.items())
            if not label:  # no grid: the error is the --set items' or the config file's alone
                raise
            raise ToolkitError(f"Configuration {label}: {exc}") from None


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
    """``root/<agent>/<env>/<YYYYmmdd-HHMMSS>``, never an existing directory; several agents
    ``sac,sb3-sac`` make the folder ``sac+sb3-sac``."""
    base = root / agent.replace(",", "+") / env.replace("/", "_") / time.strftime("%Y%m%d-%H%M%S")
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
    #: Index of the trial's agent in :attr:`SweepPlan.agents`.
    agent: int = 0


@dataclass
class SummaryRow:
    """One configuration's (of one agent) outcome over its seeds, as written to summary.csv."""

    configuration: int
    mean: float | None
    std: float | None
    n: int
    failed: int
    #: Index of the agent in :attr:`SweepPlan.agents`.
    agent: int = 0


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

    index, seed, agent = int(config["configuration"]), int(config["seed"]), int(config["agent"])
    t = plan.training
    overrides = [f"{k}={v}" for k, v in plan.configurations[index].items()]
    run_dir = Path(sweep_dir) / plan.trial_name(index, seed, agent)
    _, loop_result = start_training(
        plan.agents[agent], None if plan.model else plan.env, steps=t["steps"], seed=seed, device=t["device"],
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
            "agent": tune.grid_search(list(range(len(plan.agents)))),
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
        index, seed, agent = (int(result.config[k]) for k in ("configuration", "seed", "agent"))
        metrics = result.metrics or {}
        rows.append(TrialRow(
            configuration=index, seed=seed, final_return=metrics.get("final_return"),
            final_return_std=metrics.get("final_return_std"), steps=metrics.get("steps"),
            run_dir=str(sweep_dir / plan.trial_name(index, seed, agent)),
            error=_first_line(result.error) if result.error is not None else "", agent=agent,
        ))
    rows.sort(key=lambda r: (r.agent, r.configuration, r.seed))
    summary = summarise(plan, rows)
    write_results(sweep_dir, plan, rows, summary)
    from toolkit.plot import write_sweep_curves  # curves.png: a mean line per configuration (and agent)

    write_sweep_curves(sweep_dir, [r.run_dir for r in rows if not r.error])
    return SweepResult(sweep_dir, plan, rows, summary)


def _first_line(error: BaseException) -> str:
    """The innermost line of a trial's error (Tune wraps the trial's own exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof 1) over seeds: the std of a single seed is 0, and no
    values give ``(None, None)``."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(plan: SweepPlan, rows: list[TrialRow]) -> list[SummaryRow]:
    """Mean and sample std (ddof 1; 0 for a single seed) of the final return per configuration
    (of each agent), best mean first; failed trials are counted apart."""
    out = []
    for agent, index in itertools.product(range(len(plan.agents)), range(len(plan.configurations))):
        mine = [r for r in rows if r.configuration == index and r.agent == agent]
        values = [r.final_return for r in mine if r.final_return is not None and not r.error]
        mean, std = mean_std(values)
        out.append(SummaryRow(index, mean, std, len(values), len(mine) - len(values), agent))
    out.sort(key=lambda s: -math.inf if s.mean is None else s.mean, reverse=True)
    return out


def write_results(sweep_dir: Path, plan: SweepPlan, rows: list[TrialRow], summary: list[SummaryRow]) -> None:
    """``results.csv`` (a row per trial) and ``summary.csv`` (a row per configuration, and
    agent); both start with an ``agent`` column when the sweep has several."""

    def grid_values(index: int) -> list[str]:
        return [plan.configurations[index][k] for k in plan.keys]

    def agent(row: TrialRow | SummaryRow) -> list[str]:
        return [plan.agents[row.agent]] if plan.several else []

    first = ["agent"] if plan.several else []
    with open(sweep_dir / RESULTS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*first, "configuration", *plan.keys, "seed", "final_return", "final_return_std", "steps",
                         "run_dir", "error"])
        for r in rows:
            writer.writerow([*agent(r), r.configuration, *grid_values(r.configuration), r.seed, _cell(r.final_return),
                             _cell(r.final_return_std), _cell(r.steps), r.run_dir, r.error])
    with open(sweep_dir / SUMMARY_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*first, "configuration", *plan.keys, "mean", "std", "n", "failed"])
        for s in summary:
            writer.writerow([*agent(s), s.configuration, *grid_values(s.configuration), _cell(s.mean), _cell(s.std),
                             s.n, s.failed])


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def summary_table(result: SweepResult) -> Any:
    """A rich table of the summary: a row per configuration (and agent), best mean first."""
    from rich.markup import escape
    from rich.table import Table

    plan = result.plan
    seeds = len(plan.seeds)
    table = Table(title=f"{', '.join(plan.agents)} on {plan.env}: {plan.metric} over {seeds} seed{'s' * (seeds != 1)}")
    if plan.several:
        table.add_column("agent", no_wrap=True)
    for key in plan.keys:
        table.add_column(key, no_wrap=True)
    table.add_column(plan.metric, justify="right", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("failed", justify="right")
    for s in result.summary:
        fmt = ".4g" if plan.model else ".2f"  # a model's score can be a small error
        ret = "-" if s.mean is None else f"{s.mean:{fmt}} ± {s.std:{fmt}}"
        values = [escape(plan.configurations[s.configuration][k]) for k in plan.keys]
        agent = [escape(plan.agents[s.agent])] if plan.several else []
        table.add_row(*agent, *values, ret, str(s.n), str(s.failed))
    return table
