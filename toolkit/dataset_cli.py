"""`toolkit dataset ...`: build offline datasets from trained runs, record env frames, inspect datasets.

Importing this module stays cheap (no torch, h5py or minari): `toolkit list` and `--help`
load it with the rest of the CLI, so the heavy imports live inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.console import console, fail as _fail
from toolkit.errors import ToolkitError

dataset_app = typer.Typer(
    help="Collect offline datasets (D4RL HDF5 or Minari) and env frames; inspect datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MinariRoot = Annotated[
    Optional[Path],
    typer.Option("--minari-root", help="Where Minari datasets live (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)."),
]


def _refuse_existing(out: str, format: str, minari_root: Path | None) -> None:
    """Check --out before collecting, so a mistake costs no rollout time and loses no file."""
    from toolkit.data import FORMATS
    from toolkit.data.minari_io import minari_root as root_of

    if format not in FORMATS:
        raise ToolkitError(f"Unknown --format '{format}'; use one of: {', '.join(FORMATS)}.")
    target = Path(out) if format == "d4rl" else root_of(minari_root) / out
    if target.exists():
        raise ToolkitError(f"{target} already exists; choose another --out or delete it first.")


@dataset_app.command()
def collect(
    out: Annotated[str, typer.Option("--out", "-o", help="Output: an .hdf5 path (d4rl) or a dataset id such as toolkit/hopper-medium-v0 (minari).")],
    run_dir: Annotated[Optional[Path], typer.Option("--from", help="Run directory whose agent collects (not needed for --quality random).")] = None,
    env: Annotated[Optional[str], typer.Option("--env", "-e", help="Environment id (default: the run's).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Environment steps to record (replay: newest rows to keep, default all).")] = None,
    quality: Annotated[str, typer.Option(help="medium, expert (the run's policy), random or replay (the run's replay buffer).")] = "medium",
    noise: Annotated[float, typer.Option(help="Gaussian action noise, as a fraction of the action half-range; for discrete actions the chance of a random one.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the env resets and the noise.")] = 0,
    format: Annotated[str, typer.Option("--format", help="d4rl (HDF5 file) or minari.")] = "d4rl",
    minari_root: MinariRoot = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Record a dataset from a trained run (or random actions) and write it to --out."""
    from toolkit.data import save_dataset
    from toolkit.data.collect import collect_dataset

    try:
        _refuse_existing(out, format, minari_root)
        if steps is None and quality != "replay":
            raise ToolkitError(f"--quality {quality} needs --steps, the number of environment steps to record.")
        dataset = collect_dataset(run_dir, env, steps or 0, quality, noise, seed, progress)
        path = save_dataset(dataset, out, format, minari_root)
    except ToolkitError as exc:
        _fail(exc)
    episodes = len(dataset.episode_bounds()[0])
    console.print(f"Wrote {len(dataset)} transitions in {episodes} episodes to {path}")


def _fmt(value: float) -> str:
    return f"{value:.2f}"


@dataset_app.command()
def info(
    dataset: Annotated[str, typer.Argument(help="A D4RL .hdf5 file, a Minari dataset folder or a local Minari dataset id.")],
    env: Annotated[Optional[str], typer.Option("--env", "-e", help="Env for the D4RL normalised score (default: the dataset's).")] = None,
    minari_root: MinariRoot = None,
) -> None:
    """Show a dataset's size, episodes, shapes, returns, D4RL normalised scores and any NaN or inf values."""
    from rich.markup import escape
    from rich.table import Table

    from toolkit.data import load_dataset
    from toolkit.data.summary import summarize
    from toolkit.data.validate import describe_nonfinite

    try:
        data = load_dataset(dataset, minari_root)
    except ToolkitError as exc:
        _fail(exc)
    summary = summarize(data, env)
    table = Table(title=escape(dataset), show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for key in ("env_id", "quality", "source_run", "agent", "noise"):
        if data.metadata.get(key):
            table.add_row(key.replace("_", " "), escape(str(data.metadata[key])))
    table.add_row("transitions", str(summary.transitions))
    table.add_row(
        "episodes",
        f"{summary.episodes} ({summary.terminated} terminated, {summary.timed_out} timed out, {summary.unfinished} unfinished)",
    )
    table.add_row("observation shape", str(summary.observation_shape))
    table.add_row("action shape", str(summary.action_shape))
    console.print(table)

    stats = Table(title="per-episode statistics")
    for column in ("", "mean", "std", "min", "max"):
        stats.add_column(column, justify="right" if column else "left")
    rows = [("return", summary.returns)]
    if summary.scores is not None:
        rows.append((f"D4RL normalised score ({summary.env_id})", summary.scores))
    for name, s in rows:
        stats.add_row(escape(name), _fmt(s.mean), _fmt(s.std), _fmt(s.min), _fmt(s.max))
    console.print(stats)
    if summary.scores is None:
        console.print(f"No D4RL reference scores for {summary.env_id or 'an unknown env'}; normalised score omitted.")
    for bad in summary.nonfinite:
        console.print(f"[bold red]non-finite:[/] {escape(describe_nonfinite(bad))}.", highlight=False, soft_wrap=True)
    if summary.nonfinite:
        console.print("Training refuses this dataset until those rows are fixed or dropped.", highlight=False)


@dataset_app.command()
def frames(
    env: Annotated[str, typer.Option("--env", "-e", help="Any gymnasium env that renders rgb_array, e.g. CarRacing-v3 or Hopper-v4.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .hdf5 file to write (never overwritten).")],
    steps: Annotated[int, typer.Option(help="Environment steps (frames) to record.")] = 1_000,
    size: Annotated[int, typer.Option(help="Side of the square frames in pixels.")] = 64,
    run_dir: Annotated[Optional[Path], typer.Option("--from", help="A trained run whose policy acts (default: random actions).")] = None,
    grey: Annotated[bool, typer.Option("--grey", help="Store one grey channel instead of RGB.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the env resets and the random actions.")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    env_kwargs: Annotated[Optional[str], typer.Option("--env-kwargs", help="Env constructor arguments: key=value,key=value.")] = None,
) -> None:
    """Record rendered frames, actions, rewards and episode ends from an env, for models and world models."""
    from toolkit.data.frames import record_frames
    from toolkit.envs import parse_env_kwargs

    try:
        summary = record_frames(env, steps, size, out, run_dir=run_dir, seed=seed, progress=progress, grey=grey,
                                env_kwargs=parse_env_kwargs(env_kwargs))
    except ToolkitError as exc:
        _fail(exc)
    console.print(
        f"Wrote {summary.frames} frames of {summary.size}x{summary.size} in {summary.episodes} episodes to "
        f"{summary.path} ({summary.frames / max(summary.seconds, 1e-9):.0f} frames/s)"
    )
