"""Benchmark: bc, decision-lstm and decision-transformer on Hopper-v4 datasets built here.

1. A partially trained ``sac`` run on Hopper-v4 (``--sac-run DIR`` to reuse one, else one is
   trained for ``--sac-steps``) plays the role of D4RL's "medium" policy (Fu et al. 2020: a
   policy stopped at about a third of expert performance).
2. Two datasets in D4RL's layout: ``medium`` (``--dataset-steps`` transitions of that policy
   with Gaussian action noise ``--noise``) and ``medium-replay`` (the run's replay buffer, in
   order: everything the agent saw while it learned).
3. Each learner trains on each dataset for the same number of gradient steps
   (``--train-steps``), each with its own default batch (bc 256 transitions, the sequence
   models 64 windows), over ``--seeds`` seeds. The two sequence models share one context
   length (``--context``), width (``--embed-dim``), learning rate and warm-up (``--lr``,
   ``--warmup``): the paper's width 128 and lr 1e-4 over 10^5 steps do not fit a CPU budget,
   so the defaults are a smaller model trained faster. Each run ends with
   ``--eval-episodes`` evaluation episodes in Hopper-v4.

Printed per dataset and learner: the D4RL normalised score (100 * (return - random) /
(expert - random), hopper random -20.272305, expert 3234.3), mean and std over seeds, and the
training throughput in gradient steps/s (evaluation excluded). The issue's target:
decision-lstm >= bc, and within the spread of decision-transformer.

    python scripts/bench_offline.py --sac-steps 60000 --seeds 3
    python scripts/bench_offline.py --sac-run runs/sac/Hopper-v4/<run> --train-steps 5000 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ENV_ID = "Hopper-v4"
LEARNERS = ("bc", "decision-lstm", "decision-transformer")


@dataclass
class Outcome:
    """One training run's result."""

    dataset: str
    learner: str
    seed: int
    score: float
    ret: float
    steps_per_second: float


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def train_one(learner: str, dataset: str, dataset_file: str, seed: int, steps: int, sequence_settings: list[str],
              eval_episodes: int, out_dir: str) -> Outcome:
    """Train one learner on one dataset and read its final evaluation from the run's metrics."""
    _one_thread()
    from toolkit.training import start_training

    settings = [] if learner == "bc" else sequence_settings
    run = Path(out_dir) / "runs" / f"{dataset}-{learner}-s{seed}"
    start_training(learner, ENV_ID, steps=steps, seed=seed, device="cpu", progress=False, run_dir=run,
                   checkpoint_every=0, eval_every=steps, eval_episodes=eval_episodes,
                   log_every=max(1, steps // 10), set_items=settings, dataset=dataset_file)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    speeds = [r["steps_per_second"] for r in records if r["kind"] == "train"]
    return Outcome(dataset, learner, seed, final["normalized_score"], final["return_mean"], statistics.median(speeds))


def build_datasets(args: argparse.Namespace, out_dir: Path) -> dict[str, Path]:
    """The SAC run (trained unless given) and its medium and medium-replay datasets."""
    from toolkit.data import save_dataset, summary
    from toolkit.data.collect import collect_dataset
    from toolkit.training import start_training

    sac_run = Path(args.sac_run) if args.sac_run else out_dir / "sac-medium"
    if not args.sac_run and not (sac_run / "checkpoints" / "latest.pt").exists():
        print(f"training sac on {ENV_ID} for {args.sac_steps} steps -> {sac_run}")
        start_training("sac", ENV_ID, steps=args.sac_steps, seed=0, device="cpu", run_dir=sac_run,
                       checkpoint_every=args.sac_steps, progress=True)
    files = {"medium": out_dir / "hopper-medium.hdf5", "medium-replay": out_dir / "hopper-medium-replay.hdf5"}
    if not files["medium"].exists():
        data = collect_dataset(sac_run, ENV_ID, args.dataset_steps, "medium", noise=args.noise, seed=0, progress=True)
        save_dataset(data, files["medium"])
    if not files["medium-replay"].exists():
        save_dataset(collect_dataset(sac_run, None, 0, "replay", progress=False), files["medium-replay"])
    from toolkit.data import load_dataset

    for name, path in files.items():
        s = summary.summarize(load_dataset(path), ENV_ID)
        print(f"{name:14s} {s.transitions:>8d} transitions, {s.episodes:>5d} episodes, "
              f"return {s.returns.mean:8.1f} ± {s.returns.std:6.1f}, "
              f"normalised {s.scores.mean if s.scores else float('nan'):5.1f}")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sac-run", help="an existing sac run on Hopper-v4 to build the datasets from")
    parser.add_argument("--sac-steps", type=int, default=60_000, help="env steps of the sac run trained otherwise")
    parser.add_argument("--dataset-steps", type=int, default=50_000, help="transitions in the medium dataset")
    parser.add_argument("--noise", type=float, default=0.1, help="action noise of the medium dataset (fraction of range)")
    parser.add_argument("--train-steps", type=int, default=3_000, help="gradient steps per learner and seed")
    parser.add_argument("--context", type=int, default=20, help="context length K of both sequence models")
    parser.add_argument("--embed-dim", type=int, default=64, help="width of both sequence models")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of both sequence models")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up steps of both sequence models")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=LEARNERS)
    parser.add_argument("--jobs", type=int, default=2, help="training runs in parallel (one thread each)")
    parser.add_argument("--out-dir", default="bench-offline", help="where datasets and runs go")
    args = parser.parse_args()

    _one_thread()
    out_dir = Path(args.out_dir).resolve()
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files = build_datasets(args, out_dir)

    sequence = [f"context_length={args.context}", f"embed_dim={args.embed_dim}", f"lr={args.lr}",
                f"warmup_steps={args.warmup}"]
    jobs = [(learner, name, str(path), seed, args.train_steps, sequence, args.eval_episodes, str(out_dir))
            for name, path in files.items() for learner in args.learners for seed in range(args.seeds)]
    for job in jobs:  # a rerun starts the runs afresh
        run = out_dir / "runs" / f"{job[1]}-{job[0]}-s{job[3]}"
        if run.exists():
            import shutil

            shutil.rmtree(run)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(train_one, *zip(*jobs)))

    print(f"\n{ENV_ID}: D4RL normalised score after {args.train_steps} gradient steps, "
          f"{args.seeds} seed(s), {args.eval_episodes} evaluation episodes; sequence models: {' '.join(sequence)}")
    print(f"{'dataset':14s} {'learner':22s} {'score':>14s} {'return':>9s} {'steps/s':>8s}")
    table: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        table.setdefault((o.dataset, o.learner), []).append(o)
    for (dataset, learner), runs in table.items():
        scores = [o.score for o in runs]
        spread = statistics.pstdev(scores) if len(scores) > 1 else 0.0
        print(f"{dataset:14s} {learner:22s} {statistics.mean(scores):7.1f} ± {spread:4.1f} "
              f"{statistics.mean(o.ret for o in runs):9.1f} {statistics.median(o.steps_per_second for o in runs):8.1f}")
    for dataset in files:
        mean = {l: statistics.mean(o.score for o in table[(dataset, l)]) for l in args.learners if (dataset, l) in table}
        if {"bc", "decision-lstm", "decision-transformer"} <= set(mean):
            dt = [o.score for o in table[(dataset, "decision-transformer")]]
            within = min(dt) <= mean["decision-lstm"] or mean["decision-lstm"] >= mean["decision-transformer"]
            print(f"{dataset}: decision-lstm {'>=' if mean['decision-lstm'] >= mean['bc'] else '<'} bc; "
                  f"{'within' if within else 'below'} decision-transformer's spread (min {min(dt):.1f})")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
