"""The `toolkit` command line: parse, look up the registry, hand over.

No algorithm is imported by name here; agents and models come from the ``toolkit.agents``
and ``toolkit.models`` entry points.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.markup import escape
from rich.table import Table

from toolkit.console import console, err_console
from toolkit.console import fail as _fail
from toolkit.errors import ToolkitError

if TYPE_CHECKING:  # the command imports it when it runs; `toolkit --help` stays light
    from toolkit.prune_run import ScanResult

app = typer.Typer(
    name="toolkit",
    help="Train, evaluate and resume reinforcement-learning agents and generative models; every learner is a plugin.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from toolkit import __version__

        console.print(f"toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the toolkit version and exit.")] = False,
) -> None:
    """Train, evaluate and resume reinforcement-learning agents and generative models; every learner is a plugin."""


def _train_epilog() -> str:
    """Examples and the installed learners for `toolkit train --help` (entry-point names only:
    no plugin is imported, so --help stays fast)."""
    from importlib.metadata import entry_points

    def names(group: str) -> str:
        return ", ".join(sorted({ep.name for ep in entry_points(group=group)})) or "none installed"

    return (
        "Examples:\n\n"
        "  toolkit train sac --env Hopper-v4 --steps 1000000\n\n"
        "  toolkit train ppo --env CartPole-v1 --set num_envs=8\n\n"
        "  toolkit train vae --dataset digits --steps 5000\n\n"
        f"Agents: {names('toolkit.agents')}.\n\n"
        f"Models: {names('toolkit.models')}.\n\n"
        "Settings of a learner: toolkit describe NAME."
    )


@app.command(epilog=_train_epilog())
def train(
    agent: Annotated[str, typer.Argument(help="Agent or model name, as listed by `toolkit list`.")],
    env: Annotated[Optional[str], typer.Option("--env", "-e", help="Gymnasium environment id, e.g. Hopper-v4 (agents).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Environment steps to train; gradient steps for offline agents and models (default: the learner's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of env, networks and sampling.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of agent settings.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one agent setting: key=value (repeatable).")] = None,
    preset: Annotated[bool, typer.Option("--preset", help="Start from the agent's tuned settings for --env (see `toolkit describe AGENT --env ENV`); --config and --set override them.")] = False,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default: runs/<agent>/<env>/<time>-s<seed>).")] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps (0: never for online agents; offline agents and models: 10 times a run).")] = 0,
    eval_episodes: Annotated[int, typer.Option(help="Episodes per periodic evaluation.")] = 5,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps (and always at the end).")] = 10_000,
    log_every: Annotated[Optional[int], typer.Option(help="Write training metrics every N steps (default: 1000 for agents, 20 times a run for models).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    dataset: Annotated[Optional[str], typer.Option(help="Models: digits, mnist-5k, mnist1d, a frames .hdf5 file or an MNIST/CIFAR-10 directory. Offline agents: a D4RL HDF5 file or Minari dataset.")] = None,
    workers: Annotated[int, typer.Option(help="Ray workers: env-runner actors (online agents) or data-parallel trainers (offline); 0: no Ray.")] = 0,
    envs_per_worker: Annotated[int, typer.Option(help="Environments each env-runner actor steps side by side.")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per data-parallel training worker (offline agents).")] = 0.0,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: RAY_ADDRESS, else a local Ray).")] = None,
    env_kwargs: Annotated[Optional[str], typer.Option("--env-kwargs", help="Env constructor arguments: key=value,key=value (e.g. run=RUN_DIR,temperature=1.15 for toolkit/Dream-v0).")] = None,
    pixels: Annotated[Optional[int], typer.Option(help="Observe rendered frames of this side (e.g. 64) instead of the env's own observations.")] = None,
    frame_stack: Annotated[int, typer.Option(help="With --pixels: frames stacked into one observation.")] = 3,
    grey: Annotated[bool, typer.Option("--grey", help="With --pixels: one grey channel per frame.")] = False,
    compile: Annotated[str, typer.Option("--compile", help="Agents: how the update runs: none, compile (torch.compile) or cudagraphs (compiled and CUDA-graphed; CUDA only); auto: the device's measured default (docs/speed.md).")] = "auto",
) -> None:
    """Train an AGENT on an environment (online) or a dataset evaluated in it (offline), or a MODEL on a dataset."""
    from toolkit.envs import parse_env_kwargs
    from toolkit.training import start_training

    try:
        path, result = start_training(
            agent, env, steps, seed, device, config, set_, run_dir, eval_every=eval_every,
            eval_episodes=eval_episodes, checkpoint_every=checkpoint_every, log_every=log_every,
            progress=progress, dataset=dataset, workers=workers, envs_per_worker=envs_per_worker,
            gpus_per_worker=gpus_per_worker, address=address, env_kwargs=parse_env_kwargs(env_kwargs),
            pixels=pixels, frame_stack=frame_stack, grey=grey, compile=compile, preset=preset,
        )
    except ToolkitError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted_outside_the_loop(run_dir)
    _report(path, result)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `toolkit train`.")],
    steps: Annotated[Optional[int], typer.Option(help="Train up to this many total steps (default: the run's target).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join for a run with --workers (default: the run's own, else RAY_ADDRESS or a local Ray).")] = None,
) -> None:
    """Continue a run from its last checkpoint."""
    from toolkit.training import resume_training

    try:
        path, result = resume_training(run_dir, steps, progress, address=address)
    except ToolkitError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted_outside_the_loop(run_dir)
    _report(path, result)


def _interrupted_outside_the_loop(run_dir: Optional[Path]) -> NoReturn:
    """A Ctrl-C the training loop did not see: before it started, or (a second Ctrl-C) after it
    returned from saving. Say whether a checkpoint is there to resume from."""
    from toolkit.runs import CHECKPOINT

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # finishing the exit must not be cut short too
    if run_dir is not None and (run_dir / CHECKPOINT).is_file():
        console.print(f"Interrupted; the checkpoint is saved. Continue with: toolkit resume {run_dir}")
    elif run_dir is not None:
        console.print(f"Interrupted before {run_dir} held a checkpoint; nothing can be resumed.")
    else:
        console.print("Interrupted; a checkpoint saved before it stays in the run directory (toolkit resume RUN_DIR).")
    raise typer.Exit(130)


def _report(path: Path, result: object) -> None:
    step = getattr(result, "step", "?")
    last = getattr(result, "last_return", None)
    source = getattr(result, "return_source", "episode")
    ret = f", last {source} return {last:.1f}" if last is not None else ""
    if getattr(result, "interrupted", False):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the checkpoint is saved: another Ctrl-C must not cut the exit short
        console.print(f"Interrupted at step {step}; checkpoint saved. Continue with: toolkit resume {path}")
        raise typer.Exit(130)
    console.print(f"Trained {step} steps{ret}. Run directory: {path}")
    from toolkit.plot import summary_line  # wall time, steps/s and the last evaluation

    console.print(summary_line(path, result), highlight=False)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `toolkit train`.")],
    episodes: Annotated[int, typer.Option(help="Agents: deterministic episodes to run.")] = 10,
    video: Annotated[bool, typer.Option("--video", help="Agents: also write an MP4 of the first episode.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the evaluation episodes (models: of the probes and figures).")] = None,
    is_samples: Annotated[int, typer.Option(help="Models: importance samples per example for the NLL estimate.")] = 100,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Models: write PNG figures into the run dir and TensorBoard.")] = True,
    env: Annotated[Optional[str], typer.Option("--env", "-e", help="Agents: evaluate in this env instead of the run's (its spaces must fit).")] = None,
    env_kwargs: Annotated[Optional[str], typer.Option("--env-kwargs", help="Agents: env constructor arguments key=value,... for the evaluation env.")] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="latest, or best: the best periodic evaluation while training (--eval-every).")] = "latest",
) -> None:
    """Evaluate a run's latest (or best) checkpoint: episodes for an agent, a metrics table and figures for a model."""
    from toolkit.runs import load_settings

    try:
        if load_settings(run_dir).model:
            _eval_model(run_dir, is_samples, figures, seed or 0, checkpoint)
            return
        from toolkit.envs import parse_env_kwargs
        from toolkit.training import evaluate_run

        result, out, video_path = evaluate_run(run_dir, episodes, video, seed, env, parse_env_kwargs(env_kwargs),
                                               checkpoint=checkpoint)
    except ToolkitError as exc:
        _fail(exc)
    console.print(f"return {result.mean:.1f} ± {result.std:.1f} over {len(result.returns)} episodes -> {out}")
    if video_path is not None:
        console.print(f"video: {video_path}")


def _eval_model(run_dir: Path, is_samples: int, figures: bool, seed: int, checkpoint: str) -> None:
    from toolkit.training import evaluate_model_run

    report, out, paths = evaluate_model_run(run_dir, is_samples=is_samples, figures=figures, seed=seed,
                                            checkpoint=checkpoint)
    table = Table(title=f"{escape(str(run_dir))} (test split)")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right")
    for name, value in report.rows():
        table.add_row(escape(name), value)
    console.print(table)
    console.print(f"results: {out}")
    if paths:
        console.print(f"figures: {', '.join(str(p) for p in paths)}")


def _status_markup(entry: Any) -> str:
    """``ok``, or the status (yellow when only an optional library is missing) and its reason."""
    if entry.status == "ok":
        return "ok"
    colour = "yellow" if entry.status == "unavailable" else "red"
    return f"[{colour}]{entry.status}[/]: {escape(entry.reason)}"


def _library_column(entry: Any) -> str:
    """The library a bridged agent's algorithm comes from, with its installed version."""
    from toolkit.registry import library_version

    requires = getattr(entry.obj, "requires", ())
    return ", ".join(f"{name} {library_version(name) or '(not installed)'}" for name in requires)


@app.command("list")
def list_(
    check: Annotated[bool, typer.Option("--check", help="Also import every plugin's factory; one line per plugin, exit 1 on any problem.")] = False,
) -> None:
    """Every installed plugin: name, kind, distribution and version, a bridge's library, status."""
    from toolkit.registry import registry

    if check:
        checked = registry.check_all()
        for entry in checked:
            where = f"{entry.kind}, {entry.distribution} {entry.version}"
            console.print(f"{escape(entry.name)} ({escape(where)}): {_status_markup(entry)}", soft_wrap=True, highlight=False)
        # An agent whose optional library is not installed is not a broken plugin.
        problems = sum(e.status not in ("ok", "unavailable") for e in checked)
        console.print(f"{len(checked)} plugins checked, {problems} with a problem.", highlight=False)
        if problems or not checked:
            raise typer.Exit(1)
        return
    table = Table(show_lines=False)
    # Names and kinds are what users type or filter on: never cut them; the other columns
    # wrap in a narrow terminal instead. (The kind also tells the entry-point group apart:
    # agents have an agent kind, environments "env", models "model".)
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("distribution", no_wrap=True)  # with its version: "toolkit-rl 0.1.0"
    # A bridge's library and its version ("stable-baselines3 2.9.2"); wraps in a narrow terminal.
    table.add_column("library", overflow="fold")
    table.add_column("status", min_width=6)
    entries = registry.all_entries()
    for entry in entries:
        # Names and reasons come from third-party packages: print them verbatim, never as markup.
        table.add_row(escape(entry.name), entry.kind, escape(f"{entry.distribution} {entry.version}"),
                      escape(_library_column(entry)), _status_markup(entry))
    console.print(table)
    if not entries:
        console.print("No plugins found; is the toolkit installed (pip install -e .)?")


@app.command()
def describe(
    name: Annotated[str, typer.Argument(help="Agent or model name, as listed by `toolkit list`.")],
    env: Annotated[Optional[str], typer.Option("--env", "-e", help="Also show the agent's preset for this env id (applied by `toolkit train --preset`).")] = None,
) -> None:
    """Show an agent's or model's settings with their defaults and help; set them with --set key=value."""
    from toolkit.config import describe as describe_config
    from toolkit.registry import AgentSpec, registry

    try:
        spec = registry.learner(name)
    except ToolkitError as exc:
        _fail(exc)
    if isinstance(spec, AgentSpec):
        console.print(f"[bold]{spec.name}[/] ({spec.kind}; actions: {', '.join(spec.action_spaces)}): {spec.description}")
    else:
        console.print(f"[bold]{spec.name}[/] (model, {spec.kind}; trains with --dataset SOURCE): {spec.description}")
    table = Table()
    table.add_column("key", no_wrap=True)  # keys are what users type: never cut them
    table.add_column("type")
    table.add_column("default")
    table.add_column("bounds")
    table.add_column("help", ratio=1)
    for info in describe_config(spec.config):
        table.add_row(info.key, info.type_name, repr(info.default), info.bounds_text, info.help)
    console.print(table)
    if env is not None:
        _describe_preset(spec, env)


def _describe_preset(spec: object, env: str) -> None:
    """`describe NAME --env ENV`: the preset's settings, the return it reached and the command that measured it."""
    from toolkit.registry import AgentSpec

    if not isinstance(spec, AgentSpec):
        _fail(ToolkitError(f"Model '{getattr(spec, 'name', '?')}' has no presets: --env applies to agents."))
    try:
        preset = spec.preset(env)
    except ToolkitError as exc:
        _fail(exc)
    table = Table(title=f"Preset for {escape(env)} (toolkit train {spec.name} --env {escape(env)} --preset)")
    table.add_column("key", no_wrap=True)
    table.add_column("preset")
    for key, value in preset["settings"].items():
        table.add_row(escape(key), escape(repr(value)))
    console.print(table)
    if preset.get("return") is not None:
        console.print(f"Mean evaluation return reached: {preset['return']}")
    if preset.get("command"):
        console.print(f"Measured with: {escape(str(preset['command']))}")


@app.command()
def sweep(
    agent: Annotated[str, typer.Argument(help="Agent or model name, as listed by `toolkit list`; several comma-separated (sac,sb3-sac) are compared.")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="key=v1,v2 (repeatable; ';' separates values that hold commas). Every combination runs (for every agent). Optional when comparing several agents.")] = None,
    env: Annotated[Optional[str], typer.Option("--env", "-e", help="Gymnasium environment id, e.g. Hopper-v4 (agents).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds 0 .. S-1 run for every configuration.")] = 1,
    search: Annotated[str, typer.Option(help="grid: every combination; random: --samples of them, drawn at random.")] = "grid",
    samples: Annotated[Optional[int], typer.Option(help="With --search random: configurations to draw from the grid.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Steps per trial (default: the agent's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Agent setting fixed for every trial: key=value (repeatable).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of agent settings for every trial.")] = None,
    eval_episodes: Annotated[int, typer.Option(help="Episodes of each trial's final evaluation.")] = 5,
    dataset: Annotated[Optional[str], typer.Option(help="Models and offline agents: the dataset every trial learns from.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda, in each trial.")] = "auto",
    cpus_per_trial: Annotated[float, typer.Option(help="Ray CPUs each trial holds.")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="Ray GPUs each trial holds.")] = 0.0,
    sweep_dir: Annotated[Optional[Path], typer.Option(help="Where trials' run dirs and the CSVs go (default: sweeps/<agent>/<env>/<time>).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: RAY_ADDRESS, else a local Ray).")] = None,
) -> None:
    """Train AGENT (or MODEL) for every grid configuration and seed on Ray Tune; print mean ± std of the final return (a model's test score).

    AGENT may list several agents, comma-separated (sac,sb3-sac: native and bridged alike): each runs every configuration, and the tables get an agent column."""
    from toolkit.distributed.sweep import SUMMARY_FILE, default_sweep_dir, plan_sweep, run_sweep, summary_table

    try:
        plan = plan_sweep(agent, env, grid, seeds, search, samples, set_, config, steps, eval_episodes, dataset, device)
        target = sweep_dir or default_sweep_dir(Path("sweeps"), plan.agent, plan.env)
        agents = f"{len(plan.agents)} agents x " if plan.several else ""
        console.print(f"Sweep: {agents}{len(plan.configurations)} configuration(s) x {len(plan.seeds)} seed(s) = {plan.trials} trials -> {target}")
        result = run_sweep(plan, target, address, cpus_per_trial, gpus_per_trial)
    except ToolkitError as exc:
        _fail(exc)
    console.print(summary_table(result))
    failed = sum(1 for row in result.trials if row.error)
    if failed:
        err_console.print(f"[red]{failed} of {plan.trials} trials failed[/]; see the error column of {result.sweep_dir / 'results.csv'}")
    console.print(f"Results: {result.sweep_dir / 'results.csv'}, summary: {result.sweep_dir / SUMMARY_FILE}")
    if failed == plan.trials:
        raise typer.Exit(1)


@app.command()
def prune(
    run_dir: Annotated[Path, typer.Argument(help="A trained run directory (left untouched).")],
    scan: Annotated[bool, typer.Option("--scan", help="Per-layer sensitivity scan: each layer alone at sparsity 0.1 ... 0.9; writes scan.csv and scan.png.")] = False,
    sparsity: Annotated[Optional[float], typer.Option(help="Prune this fraction of the weights, in [0, 1).")] = None,
    scope: Annotated[str, typer.Option(help="With --sparsity: global (one magnitude ranking over all layers) or layer (each layer to the sparsity).")] = "global",
    per_layer: Annotated[Optional[str], typer.Option("--per-layer", help="Sparsity per layer: NAME=S,NAME=S (names as --scan lists them).")] = None,
    max_drop: Annotated[Optional[float], typer.Option(help="Choose per-layer sparsities from a scan so the predicted metric drop stays within X.")] = None,
    finetune: Annotated[int, typer.Option(help="Training steps after pruning, the pruned weights held at zero.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="New directory for the result (default: RUN-pruned or RUN-scan beside the run).")] = None,
    episodes: Annotated[int, typer.Option(help="Agents: evaluation episodes per measurement of the return.")] = 10,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    structured: Annotated[Optional[float], typer.Option(help="Classifiers: remove this fraction of every layer's channels (structured, needs torch-pruning) and report the speed-up; writes OUT/structured.json, no run.")] = None,
) -> None:
    """Prune a trained run's weights (L1 magnitude) into a new run; optionally fine-tune it with the masks held.

    With --structured R, remove whole channels of a classifier instead and measure size, speed and accuracy."""
    from toolkit.prune_run import PruneRequest, parse_per_layer, prune_run

    if structured is not None:
        _prune_structured(run_dir, structured, out, {"--sparsity": sparsity is not None, "--per-layer": per_layer is not None,
                                                     "--max-drop": max_drop is not None, "--scan": scan,
                                                     "--finetune": finetune != 0})
        return
    try:
        request = PruneRequest(scan=scan, sparsity=sparsity, scope=scope, per_layer=parse_per_layer(per_layer),
                               max_drop=max_drop, finetune=finetune, episodes=episodes)
        outcome = prune_run(run_dir, request, out, progress)
    except ToolkitError as exc:
        _fail(exc)
    if outcome.scan is not None:
        _print_scan(outcome.scan)
    if outcome.report is not None:
        _print_prune_report(outcome.report)
    console.print(f"written: {', '.join(str(p) for p in outcome.files)}")
    if outcome.report is not None:
        console.print(f"Pruned run: {outcome.out} (toolkit eval {outcome.out})")


def _prune_structured(run_dir: Path, ratio: float, out: Optional[Path], others: dict[str, bool]) -> None:
    """`toolkit prune RUN --structured R`: prune channels, print dense vs structured, write the report."""
    from toolkit.structured import check_alone, run_structured

    try:
        check_alone(others)
        report, path = run_structured(run_dir, ratio, out)
    except ToolkitError as exc:
        _fail(exc)
    dense, pruned = report.dense, report.structured
    table = Table(title=f"Structured pruning: {report.ratio:g} of the channels removed (L1 filter norm)")
    table.add_column("", no_wrap=True)
    for title in ("dense", "structured", "structured / dense"):
        table.add_column(title, justify="right")
    batch, threads = report.latency["batch"], report.latency["threads"]
    rows = [
        ("parameters", f"{dense.parameters:,}", f"{pruned.parameters:,}", f"{pruned.parameters / dense.parameters:.3f}"),
        ("MACs per example", f"{dense.macs:,}", f"{pruned.macs:,}", f"{pruned.macs / max(1, dense.macs):.3f}"),
        (f"latency, batch {batch}, {threads} CPU thread{'s' if threads != 1 else ''} (ms)",
         f"{dense.latency_ms:.2f}", f"{pruned.latency_ms:.2f}", f"{pruned.latency_ms / dense.latency_ms:.3f}"),
        ("test accuracy (no fine-tuning)", f"{dense.accuracy:.4f}", f"{pruned.accuracy:.4f}",
         f"{pruned.accuracy - dense.accuracy:+.4f}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"speed-up: {report.speedup:.2f}x (median of {report.latency['repeats']} forward passes each)", highlight=False)
    console.print("channels per layer: " + ", ".join(f"{escape(name)} {w['before']}->{w['after']}"
                                                     for name, w in report.layers.items()), highlight=False)
    console.print(f"written: {path} (the pruned network is measured, not saved as a run)")


def _print_scan(scan: ScanResult) -> None:
    """The scan as aligned plain text: a table of ten columns would be cut in 80 columns."""
    points, sizes = scan.points, scan.sizes
    sparsities = list(next(iter(points.values())))
    width = max(len("layer"), *(len(name) for name in points))
    console.print(f"Sensitivity scan: {escape(scan.metric)}, dense {_short(scan.dense)}; "
                  "each layer alone pruned to:", highlight=False)
    header = f"{'layer':<{width}} {'weights':>9}" + "".join(f"{s:>6.0%}" for s in sparsities)
    console.print(header, highlight=False)
    for name, row in points.items():
        cells = "".join(f"{_short(row[s]):>6}" for s in sparsities)
        console.print(f"{escape(name):<{width}} {sizes[name]:>9,}{cells}", highlight=False, soft_wrap=True)


def _short(value: float) -> str:
    """A metric in a few characters (the scan table has ten columns): returns as integers,
    accuracies with two decimals."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _print_prune_report(report: dict) -> None:
    columns = [("dense", report["dense"], report["metric_dense"]), ("pruned", report["pruned"], report["metric_pruned"])]
    if report["finetuned"] is not None:
        columns.append((f"fine-tuned {report['finetune_steps']:,} steps", report["finetuned"], report["metric_finetuned"]))
    table = Table(title=f"Pruned: {escape(report['method'])}")
    table.add_column("", no_wrap=True)
    for title, _, _ in columns:
        table.add_column(title, justify="right")
    rows = [
        ("sparsity of prunable weights", lambda w: f"{w['sparsity']:.1%}"),
        ("parameters, non-zero", lambda w: f"{w['nonzero_parameters']:,}"),
        ("parameters, all", lambda w: f"{w['parameters']:,}"),
        ("size on disk, dense (bytes)", lambda w: f"{w['size_dense_bytes']:,}"),
        ("size on disk, sparse (bytes)", lambda w: f"{w['size_sparse_bytes']:,}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(weights) for _, weights, _ in columns))
    table.add_row(escape(report["metric"]), *(f"{metric:.4g}" for _, _, metric in columns))
    console.print(table)
    layers = report["finetuned"] or report["pruned"]
    console.print("sparsity per layer: " + ", ".join(f"{escape(name)} {info['sparsity']:.1%}"
                                                    for name, info in layers["layers"].items()), highlight=False)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories; runs that differ only by seed are drawn as one mean with a min-max band.")],
    metric: Annotated[Optional[str], typer.Option(help="KIND/KEY as logged, e.g. eval/return_mean, episode/return, train/critic_loss (default: the evaluation return, else the episode return).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="PNG to write (default: RUN/curves.png for one run without --metric, else ./curves.png).")] = None,
) -> None:
    """Draw learning curves: one run's return and training metrics, or one metric of several runs overlaid."""
    from toolkit.plot import plot_runs, write_curves

    try:
        for run in runs:
            if not (run / "config.yaml").is_file():
                raise ToolkitError(f"{run} is not a toolkit run: it has no config.yaml.")
        if len(runs) == 1 and metric is None:
            path = write_curves(runs[0], out)
        else:
            path = plot_runs(runs, metric, out)
    except ToolkitError as exc:
        _fail(exc)
    console.print(f"written: {path}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A trained agent's run directory.")],
    format_: Annotated[str, typer.Option("--format", help="torchscript (load with torch.jit.load) or onnx (onnxruntime; needs toolkit-rl[export]).")] = "torchscript",
    out: Annotated[Optional[Path], typer.Option(help="File to write (default: RUN/policy.pt or RUN/policy.onnx).")] = None,
) -> None:
    """Export a run's deterministic policy (observation batch to the actions `toolkit eval` takes) as a standalone file."""
    from toolkit.export import export_run

    try:
        path = export_run(run_dir, format_, out)
    except ToolkitError as exc:
        _fail(exc)
    console.print(f"written: {path} (input: a batch of observations; output: the deterministic actions)")


from toolkit.dataset_cli import dataset_app  # noqa: E402  (cheap: no torch at import)

app.add_typer(dataset_app, name="dataset", help="Collect offline datasets and env frames; inspect datasets.")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
