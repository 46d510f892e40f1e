"""Compare agents, the toolkit's own and bridged ones, on one env with one protocol.

Every agent trains every seed ``0 .. S-1`` for the same ``--steps`` env steps, one run after
another, through :func:`toolkit.training.start_training`: an ordinary run directory each,
``OUT/<agent>/s<seed>/``, evaluated every ``--eval-every`` steps on ``--eval-episodes``
deterministic episodes (the toolkit's evaluation, whatever library trained the agent). Then
one table, a row per agent, is printed and written to ``OUT/comparison.md`` and
``OUT/comparison.csv``:

    final eval return   the run's last evaluation (at the end of training), mean ± std over seeds
    best eval return    the run's best evaluation, mean ± std over seeds
    env steps/s         the run's logged env steps over their logged time, mean over seeds
    wall time           seconds from start_training's call to its return, mean over seeds

and ``OUT/comparison.png`` overlays the evaluation curves (mean return vs env step), one line
per agent with its seeds' min-max band (:func:`toolkit.plot.plot_runs`). Every number is read
back from the runs' ``metrics.jsonl``; ``toolkit plot OUT/<agent>/s*`` redraws any subset.

An agent whose library is not installed, or whose runs fail, is a row saying why; the other
agents still run. Unknown agent names and bad ``--set`` items are refused before anything
trains. ``--set AGENT:key=value`` sets one agent's setting (repeatable); ``--preset`` applies
each agent's tuned settings for the env (an agent without one is a row saying so).

The comparisons of the bridges' issue (stable-baselines3 and RLlib against the toolkit)::

    python scripts/compare.py --env Hopper-v4 --agents sac,sb3-sac,rllib-sac \\
        --steps 1000000 --seeds 3 --eval-every 10000 --eval-episodes 10
    python scripts/compare.py --env CartPole-v1 --agents ppo,sb3-ppo,rllib-ppo \\
        --steps 50000 --seeds 2 --eval-every 5000 --eval-episodes 10
    python scripts/compare.py --env LunarLander-v3 --agents ppo,sb3-ppo,rllib-ppo \\
        --steps 1000000 --seeds 3 --eval-every 20000 --eval-episodes 10

Run it with ``OMP_NUM_THREADS=1`` on a small machine: the libraries' tiny networks are slower
with threads that wait for each other.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.distributed.sweep import default_sweep_dir, mean_std, parse_agents
from toolkit.errors import ToolkitError
from toolkit.runs import read_metrics

TABLE_FILE = "comparison.md"
CSV_FILE = "comparison.csv"
PLOT_FILE = "comparison.png"
#: How many evaluations a run gets when --eval-every is not given.
DEFAULT_EVALUATIONS = 10


@dataclass
class RunOutcome:
    """One agent's run with one seed: what its metrics.jsonl says, or why it failed."""

    seed: int
    run_dir: Path
    final: float | None = None
    best: float | None = None
    rate: float | None = None
    wall: float | None = None
    error: str = ""


@dataclass
class AgentRow:
    """One agent's line of the table: its runs, or why none ran (``unavailable``)."""

    agent: str
    runs: list[RunOutcome] = field(default_factory=list)
    unavailable: str = ""

    @property
    def ok(self) -> list[RunOutcome]:
        """The runs that finished and logged at least one evaluation."""
        return [r for r in self.runs if not r.error and r.final is not None]

    def stat(self, name: str) -> tuple[float | None, float | None]:
        """Mean and std over the finished runs of ``final``, ``best``, ``rate`` or ``wall``."""
        return mean_std([getattr(r, name) for r in self.ok if getattr(r, name) is not None])

    @property
    def note(self) -> str:
        """Why this row is missing runs: the agent's unavailability, or its first failure."""
        if self.unavailable:
            return self.unavailable
        failed = [r for r in self.runs if r.error]
        if failed:
            return f"{len(failed)} of {len(self.runs)} runs failed (seed {failed[0].seed}: {failed[0].error})"
        if len(self.ok) < len(self.runs):
            return "a run logged no evaluation; raise --steps or lower --eval-every"
        return ""


# --- arguments -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True, help="Gymnasium env id every agent trains on.")
    parser.add_argument("--agents", required=True, help="Comma-separated agents: sac,sb3-sac,rllib-sac.")
    parser.add_argument("--steps", type=int, required=True, help="Env steps of every run.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 0 .. S-1 run for every agent.")
    parser.add_argument("--eval-every", type=int, default=None,
                        help=f"Env steps between evaluations; must divide --steps (default: --steps / {DEFAULT_EVALUATIONS}).")
    parser.add_argument("--eval-episodes", type=int, default=10, help="Deterministic episodes of every evaluation.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Where the runs and the table go (default: comparisons/<agents>/<env>/<time>).")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="AGENT:key=value",
                        help="A setting of one agent (repeatable).")
    parser.add_argument("--preset", action="store_true", help="Apply each agent's tuned settings for the env.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    return parser.parse_args(argv)


def parse_agent_sets(items: list[str], agents: list[str]) -> dict[str, list[str]]:
    """``["sb3-ppo:n_steps=512"]`` -> ``{"sb3-ppo": ["n_steps=512"], "ppo": []}``."""
    sets: dict[str, list[str]] = {agent: [] for agent in agents}
    for item in items:
        agent, sep, setting = item.partition(":")
        if not sep or "=" not in setting:
            raise ToolkitError(f"--set expects AGENT:key=value, got '{item}'.")
        if agent not in sets:
            raise ToolkitError(f"--set {item} names agent '{agent}', which is not in --agents ({', '.join(agents)}).")
        sets[agent].append(setting)
    return sets


def eval_period(steps: int, eval_every: int | None) -> int:
    """The evaluation period, dividing ``steps`` so that the last evaluation ends training."""
    if steps < 1:
        raise ToolkitError(f"--steps must be positive, got {steps}.")
    period = eval_every if eval_every is not None else steps // DEFAULT_EVALUATIONS
    if period < 1 or steps % period:
        raise ToolkitError(
            f"--eval-every must be a positive divisor of --steps {steps} (got {period}), so that every run's "
            "final evaluation is at its last step."
        )
    return period


def availability(agent: str, env: str, settings: list[str], preset: bool = False) -> str:
    """Why ``agent`` cannot run (its library is missing, it does not fit the env, it has no
    preset for it): "" if it can. An unknown name or a setting it lacks is the user's mistake
    and raises instead."""
    from toolkit.envs import check_agent_fits, make_env
    from toolkit.registry import AGENTS, registry
    from toolkit.session import build_config

    if agent not in registry.names(AGENTS):
        registry.agent(agent)  # raises the registry's sentence, with suggestions
    try:
        spec = registry.agent(agent)
        probe = make_env(env)
        try:
            check_agent_fits(spec, env, probe)
        finally:
            probe.close()
        if preset:
            spec.preset(env)
    except ToolkitError as exc:
        return str(exc)
    try:
        build_config(spec, None, settings)
    except ToolkitError as exc:
        raise ToolkitError(f"--set for {agent}: {exc}") from None
    return ""


# --- training --------------------------------------------------------------------------------


def run_numbers(run_dir: Path) -> tuple[float | None, float | None, float | None]:
    """A run's last and best evaluation mean return and its env steps/s over the whole run."""
    evals = [r["return_mean"] for r in read_metrics(run_dir, "eval") if _finite(r.get("return_mean"))]
    rate = training_rate(read_metrics(run_dir, "train"))
    return (evals[-1], max(evals), rate) if evals else (None, None, rate)


def training_rate(rows: list[dict]) -> float | None:
    """Env steps per second over all the logged windows: their steps over their summed time.
    Not the mean of the windows' rates, which the fast windows before learning starts (random
    actions, thousands of steps/s) would inflate many times over."""
    steps = seconds = 0.0
    previous = 0
    for row in rows:
        window = row["step"] - previous
        previous = row["step"]
        if _finite(row.get("steps_per_second")) and row["steps_per_second"] > 0 and window > 0:
            steps += window
            seconds += window / row["steps_per_second"]
    return steps / seconds if seconds > 0 else None


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def train_run(agent: str, seed: int, args: argparse.Namespace, settings: list[str], out: Path) -> RunOutcome:
    """Train one agent with one seed into ``out/<agent>/s<seed>``; a failure is recorded, not raised."""
    from toolkit.training import start_training

    run_dir = out / agent / f"s{seed}"
    outcome = RunOutcome(seed, run_dir)
    started = time.perf_counter()
    try:
        start_training(agent, args.env, steps=args.steps, seed=seed, device=args.device, set_items=settings,
                       run_dir=run_dir, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                       progress=False, preset=args.preset)
    except Exception as exc:  # noqa: BLE001 - one agent's crash (its library's too) is a row, not the end
        outcome.error = _reason(exc)
    outcome.wall = time.perf_counter() - started
    if not outcome.error:
        outcome.final, outcome.best, outcome.rate = run_numbers(run_dir)
    return outcome


def _reason(exc: BaseException) -> str:
    """A failure in one line: the toolkit's own sentence, or a library's exception and its last line."""
    if isinstance(exc, ToolkitError):
        return str(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")[:300]


def compare(args: argparse.Namespace, out: Path) -> list[AgentRow]:
    """Train every available agent x seed, one run after another; a row per agent."""
    agents = parse_agents(args.agents)
    sets = parse_agent_sets(args.sets, agents)
    rows = [AgentRow(agent, unavailable=availability(agent, args.env, sets[agent], args.preset)) for agent in agents]
    for row in rows:
        if row.unavailable:
            print(f"{row.agent}: skipped, {row.unavailable}", flush=True)
            continue
        for seed in range(args.seeds):
            run = train_run(row.agent, seed, args, sets[row.agent], out)
            row.runs.append(run)
            told = f"failed: {run.error}" if run.error else f"final eval {_number(run.final)}, best {_number(run.best)}"
            print(f"{row.agent} seed {seed}: {told} ({run.wall:.0f} s) -> {run.run_dir}", flush=True)
    return rows


# --- the table and the figure ----------------------------------------------------------------

HEADER = ["agent", "seeds", "final eval return", "best eval return", "env steps/s", "wall time", "note"]


def table_cells(row: AgentRow) -> list[str]:
    """One row of the printed and Markdown table."""
    rate, wall = row.stat("rate")[0], row.stat("wall")[0]
    return [row.agent, f"{len(row.ok)}/{len(row.runs)}" if row.runs else "0", _mean_std(row.stat("final")),
            _mean_std(row.stat("best")), "-" if rate is None else f"{rate:,.0f}",
            "-" if wall is None else f"{wall:,.0f} s", row.note.replace("|", "/")]


def _mean_std(stat: tuple[float | None, float | None]) -> str:
    mean, std = stat
    return "-" if mean is None else f"{mean:.1f} ± {std:.1f}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(rows: list[AgentRow], title: str) -> str:
    """The table as Markdown, under a one-line title."""
    lines = [f"**{title}**", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[AgentRow], path: Path) -> None:
    """The table's numbers unrounded, one line per agent."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["agent", "seeds_ok", "seeds", "final_return_mean", "final_return_std", "best_return_mean",
                         "best_return_std", "steps_per_second", "wall_time_s", "note"])
        for row in rows:
            cells = [*row.stat("final"), *row.stat("best"), row.stat("rate")[0], row.stat("wall")[0]]
            writer.writerow([row.agent, len(row.ok), len(row.runs), *("" if c is None else c for c in cells), row.note])


def write_plot(rows: list[AgentRow], path: Path) -> Path | None:
    """The evaluation curves of every finished run, seeds as a band (None if there are none)."""
    from toolkit.plot import plot_runs

    runs = [run.run_dir for row in rows for run in row.ok]
    if not runs:
        return None
    try:
        return plot_runs(runs, "eval/return_mean", path)
    except ToolkitError as exc:  # a figure never fails a comparison whose table is written
        print(f"warning: no {path.name}: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; 0 when every agent ran every seed, 1 otherwise, 2 for a user error."""
    args = parse_args(argv)
    try:
        args.eval_every = eval_period(args.steps, args.eval_every)
        if args.seeds < 1:
            raise ToolkitError(f"--seeds must be at least 1, got {args.seeds}.")
        from toolkit.envs import check_env_id

        check_env_id(args.env)
        out = args.out or default_sweep_dir(Path("comparisons"), ",".join(parse_agents(args.agents)), args.env)
        if out.exists() and any(out.iterdir()):
            raise ToolkitError(f"{out} already exists and is not empty; pick another --out.")
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        rows = compare(args, out)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    title = (f"{args.env}: {args.steps:,} env steps, {args.seeds} seed{'s' * (args.seeds != 1)}, evaluation every "
             f"{args.eval_every:,} steps on {args.eval_episodes} episodes (total {time.perf_counter() - started:,.0f} s)")
    text = markdown(rows, title)
    (out / TABLE_FILE).write_text(text)
    write_csv(rows, out / CSV_FILE)
    figure = write_plot(rows, out / PLOT_FILE)
    print("\n" + text)
    print(f"Table: {out / TABLE_FILE}, {out / CSV_FILE}" + (f"; curves: {figure}" if figure else ""))
    return 0 if all(len(row.ok) == args.seeds for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
