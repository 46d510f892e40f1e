"""Benchmark: does curiosity reach a sparse reward that plain agents never find?

Every run is trained through the toolkit's own functions (what ``toolkit train`` and
``toolkit eval`` call), one run directory per (task, row, seed) under ``<out>/runs``, seeds
0 .. ``--seeds``-1, ``--steps`` environment steps each. Studies (``--only`` picks one):

1. **continuous**: ``toolkit/SparsePointMass-v0`` (:mod:`toolkit_envs.sparse_point_mass`: cross
   the square to a goal disc, +10, while every move costs a little) with ``sac``, ``sac-icm``
   (its defaults) and ``sac-rnd`` (``sac-icm`` with ``curiosity.kind=rnd``).
2. **discrete**: ``toolkit/SparsePointMassDiscrete-v0`` (the same task, Discrete(5) actions) with
   ``dqn``, ``dqn-icm`` and ``dqn-rnd`` (``dqn-icm`` with ``curiosity.kind=rnd``); ``--ppo`` adds
   ``ppo`` and ``ppo-icm``.
3. **ablation**: multi-frame ICM, ``sac-icm`` with ``curiosity.frame_stack=1`` against ``4``, on
   the continuous task. A row whose settings come out identical to another's (k=1 is the
   default) reuses that row's runs instead of training them again.
4. **hopper** (only with ``--hopper``): a dense-reward check that curiosity does not hurt,
   ``sac`` against ``sac-icm`` on ``Hopper-v4`` for ``--hopper-steps``.

Measured per row, over the seeds:

* **reached goal**: seeds that reached the goal at least once in training, i.e. logged a
  training episode (``kind == "episode"`` in ``metrics.jsonl``) with a return above
  ``goal_reward / 2`` (the move cost of an episode is far below that);
* **first success**: the environment step of that first successful episode's end, the median
  over the seeds that succeeded (each seed's in brackets, ``-`` for none);
* **eval return / eval success**: after training, ``toolkit.training.evaluate_run`` (10
  deterministic episodes on ``toolkit eval``'s seeds); the mean return over seeds, and the
  fraction of all evaluation episodes with a return above ``goal_reward / 2``;
* **coverage**: the last ``coverage_fraction`` a curious agent logged (``kind == "train"``), the
  mean over seeds, ``-`` where the agent logs none;
* **time/run**: wall-clock seconds per training run (evaluation not included).

A row that cannot train (e.g. a setting the installed curiosity module does not know yet)
reads ``failed: <reason>`` and the benchmark goes on; the traceback goes to
``<out>/errors.log``. Extra curiosity settings for the curious rows (``-icm``/``-rnd``) come
with ``--set KEY=VALUE`` (repeatable; ``curiosity.`` is prefixed where missing); the rows' own
settings (``kind``, ``frame_stack``) are applied after them. The tables are printed as markdown
and written to ``<out>/results.md`` after each study, so an interrupted benchmark keeps what it
finished.

    python scripts/bench_curiosity.py --out bench-curiosity
    python scripts/bench_curiosity.py --out /tmp/bc --only discrete --set eta=2 --set intrinsic_weight=1
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toolkit.config import to_dict
from toolkit.envs import make_env, parse_env_kwargs
from toolkit.registry import registry
from toolkit.runs import read_metrics
from toolkit.session import build_config
from toolkit.training import evaluate_run, start_training

CONTINUOUS = "toolkit/SparsePointMass-v0"
DISCRETE = "toolkit/SparsePointMassDiscrete-v0"
HOPPER = "Hopper-v4"
#: Evaluation episodes per run after training (``toolkit eval``'s seeds).
EVAL_EPISODES = 10


@dataclass
class Row:
    """One line of a table: an agent with its own settings, trained on every seed."""

    name: str
    agent: str
    sets: list[str] = field(default_factory=list)

    @property
    def curious(self) -> bool:
        """Whether the agent has a curiosity module, so that ``--set`` applies to it."""
        return self.agent.endswith("-icm")


@dataclass
class SeedResult:
    """What one training run (one seed) gave."""

    first_success: int | None
    eval_returns: list[float]
    coverage: float | None
    seconds: float
    best_return: float | None


@dataclass
class RowResult:
    """A row's seeds, or why the row could not be trained."""

    row: Row
    seeds: list[SeedResult] = field(default_factory=list)
    failure: str | None = None


def curiosity_items(items: list[str]) -> list[str]:
    """``--set eta=2`` means ``curiosity.eta=2``: every extra setting is a curiosity one."""
    return [item if item.startswith("curiosity.") else f"curiosity.{item}" for item in items]


def row_settings(row: Row, extra: list[str]) -> list[str]:
    """The ``--set`` items a row trains with: the user's curiosity settings (curious rows
    only), then the row's own, so a row stays what its name says."""
    return (extra if row.curious else []) + row.sets


def config_key(env: str, row: Row, extra: list[str]) -> str:
    """What identifies a training run's settings: rows with equal keys share their runs. A
    configuration that does not build gives a key of its own, so the row fails by itself."""
    try:
        config = to_dict(build_config(registry.learner(row.agent), None, row_settings(row, extra)))
    except Exception:  # noqa: BLE001 - the training call reports the reason
        return f"{env}|{row.name}|unbuildable"
    return f"{env}|{row.agent}|{sorted(config.items())!r}"


def goal_reward(env: str, env_kwargs: dict[str, Any]) -> float | None:
    """The task's goal reward (success means a return above half of it); None for a task
    without one (Hopper)."""
    instance = make_env(env, **env_kwargs)
    try:
        value = getattr(instance.unwrapped, "goal_reward", None)
        return None if value is None else float(value)
    finally:
        instance.close()


class Bench:
    """Trains and evaluates the rows, sharing runs between rows with identical settings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.extra = curiosity_items(args.set or [])
        self.env_kwargs = parse_env_kwargs(args.env_kwargs)
        #: config key -> result, so a row identical to an earlier one reuses its runs.
        self.done: dict[str, RowResult] = {}

    def run_row(self, env: str, row: Row, steps: int, threshold: float | None) -> RowResult:
        """Train ``row`` on every seed (stopping at its first failure), then evaluate each run."""
        kwargs = self.env_kwargs if env != HOPPER else {}
        key = config_key(env, row, self.extra) + f"|{steps}|{kwargs!r}"
        if key in self.done:
            print(f"{row.name}: same settings as {self.done[key].row.name}, reusing its runs", flush=True)
            earlier = self.done[key]
            return RowResult(row, earlier.seeds, earlier.failure)
        result = RowResult(row)
        for seed in range(self.args.seeds):
            run_dir = self.args.out / "runs" / env.replace("/", "_") / row.name / f"seed-{seed}"
            try:
                result.seeds.append(self.run_seed(env, row, seed, steps, run_dir, kwargs, threshold))
            except Exception as exc:  # noqa: BLE001 - one broken row must not stop the benchmark
                reason = " ".join(str(exc).split()) or type(exc).__name__
                result.failure = reason[:160].replace("|", "\\|")  # a pipe would split the table cell
                with open(self.args.out / "errors.log", "a") as log:
                    log.write(f"== {env} {row.name} seed {seed}\n{traceback.format_exc()}\n")
                print(f"{row.name} seed {seed}: failed: {reason}", flush=True)
                break
        self.done[key] = result
        return result

    def run_seed(self, env: str, row: Row, seed: int, steps: int, run_dir: Path,
                 env_kwargs: dict[str, Any], threshold: float | None) -> SeedResult:
        """Train one run, evaluate its last checkpoint, read what its metrics say."""
        started = time.perf_counter()
        start_training(row.agent, env, steps=steps, seed=seed, device=self.args.device,
                       set_items=row_settings(row, self.extra), run_dir=run_dir, progress=False,
                       env_kwargs=env_kwargs)
        seconds = time.perf_counter() - started
        evaluation, _, _ = evaluate_run(run_dir, episodes=EVAL_EPISODES)
        episodes = read_metrics(run_dir, "episode")
        first = next((int(e["step"]) for e in episodes if threshold is not None and e["return"] > threshold), None)
        coverage = [r["coverage_fraction"] for r in read_metrics(run_dir, "train") if "coverage_fraction" in r]
        best = max((float(e["return"]) for e in episodes), default=None)
        outcome = SeedResult(first, list(evaluation.returns), coverage[-1] if coverage else None, seconds, best)
        reached = "-" if threshold is None else ("goal at step " + str(first) if first is not None else "no goal")
        print(f"{row.name} seed {seed}: {seconds:.0f} s, {reached}, eval return {evaluation.mean:.2f}", flush=True)
        return outcome


def sparse_table(results: list[RowResult], threshold: float) -> list[str]:
    """The markdown table of a sparse task's rows."""
    lines = ["| agent | reached goal | first success (median; per seed) | eval return | eval success | coverage | time/run (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        if result.failure is not None and not result.seeds:
            lines.append(f"| {result.row.name} | failed: {result.failure} | | | | | |")
            continue
        seeds = result.seeds
        firsts = [s.first_success for s in seeds]
        reached = [f for f in firsts if f is not None]
        per_seed = ", ".join("-" if f is None else str(f) for f in firsts)
        first = f"{statistics.median(reached):.0f} ({per_seed})" if reached else f"- ({per_seed})"
        returns = [statistics.fmean(s.eval_returns) for s in seeds]
        episodes = [r for s in seeds for r in s.eval_returns]
        success = sum(r > threshold for r in episodes) / len(episodes)
        covered = [s.coverage for s in seeds if s.coverage is not None]
        coverage = f"{statistics.fmean(covered):.2f}" if covered else "-"
        note = f" (failed after {len(seeds)} seeds: {result.failure})" if result.failure else ""
        lines.append(f"| {result.row.name}{note} | {len(reached)}/{len(seeds)} | {first} | {statistics.fmean(returns):.2f} "
                     f"| {success:.0%} | {coverage} | {statistics.fmean(s.seconds for s in seeds):.0f} |")
    return lines


def dense_table(results: list[RowResult]) -> list[str]:
    """The markdown table of the dense (Hopper) check: returns, no goal."""
    lines = ["| agent | eval return (mean ± std over seeds) | best training episode | coverage | time/run (s) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for result in results:
        if result.failure is not None and not result.seeds:
            lines.append(f"| {result.row.name} | failed: {result.failure} | | | |")
            continue
        returns = [statistics.fmean(s.eval_returns) for s in result.seeds]
        spread = statistics.pstdev(returns) if len(returns) > 1 else 0.0
        best = max(s.best_return for s in result.seeds if s.best_return is not None)
        covered = [s.coverage for s in result.seeds if s.coverage is not None]
        coverage = f"{statistics.fmean(covered):.2f}" if covered else "-"
        note = f" (failed after {len(result.seeds)} seeds: {result.failure})" if result.failure else ""
        lines.append(f"| {result.row.name}{note} | {statistics.fmean(returns):.1f} ± {spread:.1f} | {best:.1f} | {coverage} "
                     f"| {statistics.fmean(s.seconds for s in result.seeds):.0f} |")
    return lines


def studies(args: argparse.Namespace) -> list[tuple[str, str, list[Row]]]:
    """(title, env, rows) of each study ``--only`` and ``--hopper`` select."""
    rnd = ["curiosity.kind=rnd"]
    chosen: list[tuple[str, str, list[Row]]] = []
    if args.only in (None, "continuous"):
        chosen.append(("continuous", CONTINUOUS, [Row("sac", "sac"), Row("sac-icm", "sac-icm"),
                                                  Row("sac-rnd", "sac-icm", rnd)]))
    if args.only in (None, "discrete"):
        rows = [Row("dqn", "dqn"), Row("dqn-icm", "dqn-icm"), Row("dqn-rnd", "dqn-icm", rnd)]
        if args.ppo:
            rows += [Row("ppo", "ppo"), Row("ppo-icm", "ppo-icm")]
        chosen.append(("discrete", DISCRETE, rows))
    if args.only in (None, "ablation"):
        chosen.append(("ablation: multi-frame ICM", CONTINUOUS,
                       [Row(f"sac-icm k={k}", "sac-icm", [f"curiosity.frame_stack={k}"]) for k in (1, 4)]))
    if args.hopper:
        chosen.append(("dense check", HOPPER, [Row("sac", "sac"), Row("sac-icm", "sac-icm")]))
    return chosen


def main() -> None:
    """Parse the options, run the chosen studies, print and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-curiosity"))
    parser.add_argument("--steps", type=int, default=15_000, help="Env steps per run on the sparse tasks.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 0 .. SEEDS-1 per row.")
    parser.add_argument("--only", choices=("continuous", "discrete", "ablation"), default=None)
    parser.add_argument("--ppo", action="store_true", help="Add ppo and ppo-icm to the discrete study.")
    parser.add_argument("--hopper", action="store_true", help="Add the dense check: sac vs sac-icm on Hopper-v4.")
    parser.add_argument("--hopper-steps", type=int, default=50_000)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="Extra curiosity setting for the curious rows (repeatable), e.g. eta=2.")
    parser.add_argument("--env-kwargs", default=None,
                        help="Constructor arguments of both sparse tasks, key=value,... (e.g. goal_distance=1.8).")
    parser.add_argument("--device", default="cpu")
    # One thread by default: these networks are small, and on a busy 2-core machine a second
    # torch thread made a gradient step ~10x slower (thread hand-offs), not faster.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.steps <= 0 or args.seeds <= 0 or args.hopper_steps <= 0:
        raise SystemExit("--steps, --seeds and --hopper-steps must be positive")
    torch.set_num_threads(args.threads)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; pass another --out")
    args.out.mkdir(parents=True)
    bench = Bench(args)
    started = time.perf_counter()
    lines = [f"device: {args.device}, {args.threads} torch threads, seeds 0..{args.seeds - 1}, "
             f"{args.steps} env steps per sparse run"
             + (f", env kwargs {args.env_kwargs}" if args.env_kwargs else "")
             + (f", curious rows with {' '.join(bench.extra)}" if bench.extra else ""), ""]
    for title, env, rows in studies(args):
        steps = args.hopper_steps if env == HOPPER else args.steps
        reward = goal_reward(env, bench.env_kwargs if env != HOPPER else {})
        threshold = None if reward is None else reward / 2  # a success's return, move costs and all
        print(f"== {title}: {env}, {steps} steps", flush=True)
        results = [bench.run_row(env, row, steps, threshold) for row in rows]
        lines.append(f"### {title}: {env}, {steps} env steps")
        if threshold is not None:
            lines.append(f"(success: an episode return above {threshold:g}, half the goal reward)")
        lines += [""] + (dense_table(results) if threshold is None else sparse_table(results, threshold)) + [""]
        (args.out / "results.md").write_text("\n".join(lines) + "\n")  # after each study: survives a Ctrl-C
    elapsed = time.perf_counter() - started
    lines.append(f"elapsed: {elapsed / 60:.1f} min")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
