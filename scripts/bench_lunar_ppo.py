"""Benchmark: this toolkit's ppo on LunarLander-v3, and the evaluation return it reaches within a
budget of env steps (the issue's target: >= 200 within 1M steps).

Trains through the same path as ``toolkit train`` with rl-zoo's tuned LunarLander PPO settings
(16 envs x 1024 steps, minibatch 64, 4 epochs, gamma 0.999, lambda 0.98, entropy 0.01; pass
``--defaults`` to use the agent's own defaults instead), evaluates the deterministic policy every
``--eval-every`` steps on the way, and scores the final policy over ``--eval-episodes`` episodes.

    python scripts/bench_lunar_ppo.py                          # 1M steps
    python scripts/bench_lunar_ppo.py --budget 200000          # a shorter check
    python scripts/bench_lunar_ppo.py --set lr=1e-3 --run-dir runs/lunar-ppo

One torch thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ENV_ID = "LunarLander-v3"

#: rl-zoo's LunarLander PPO hyperparameters.
ZOO = ["num_envs=16", "rollout_steps=1024", "minibatch_size=64", "epochs=4", "gamma=0.999", "gae_lambda=0.98",
       "ent_coef=0.01"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=1_000_000, help="env steps to train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100_000, help="env steps between evaluations on the way")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--defaults", action="store_true", help="use ppo's defaults instead of rl-zoo's settings")
    parser.add_argument("--set", dest="set_items", action="append", default=[], help="extra key=value overrides")
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the run here (default: a temporary dir)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from toolkit.training import evaluate_run, start_training

    settings = ([] if args.defaults else ZOO) + args.set_items
    print(f"ppo on {ENV_ID}, {args.budget} steps, seed {args.seed}, settings: {' '.join(settings) or 'defaults'}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        start = time.perf_counter()
        run, result = start_training(
            "ppo", ENV_ID, steps=args.budget, seed=args.seed, device="cpu", set_items=settings, run_dir=run_dir,
            eval_every=args.eval_every, eval_episodes=args.eval_episodes, checkpoint_every=0, progress=False,
        )
        seconds = time.perf_counter() - start
        for line in (run / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "eval":
                print(f"  step {record['step']:>8d}: eval return {record['return_mean']:8.1f} ± {record['return_std']:.1f}")
        evaluation, _, _ = evaluate_run(run, episodes=args.eval_episodes)
    print(f"ppo {ENV_ID}: return {evaluation.mean:.1f} ± {evaluation.std:.1f} over {args.eval_episodes} deterministic "
          f"episodes after {result.step} steps ({seconds:.0f} s training, {result.step / seconds:.0f} steps/s)")


if __name__ == "__main__":
    main()
