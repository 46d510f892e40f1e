"""How stable is dqn's CartPole policy late in training? Evaluation curves per seed.

Trains ``dqn`` on CartPole-v1 for ``--steps`` env steps per seed, evaluating every
``--eval-every`` steps (10 deterministic episodes), and prints each seed's curve, so the
return at the end can be compared with the best one reached (the CI check stops at the first
evaluation >= 475; this shows what happens after it), then a table of each seed's final and
best return and how many seeds end at >= 475.

    python scripts/dqn_late_stability.py                       # the defaults
    python scripts/dqn_late_stability.py --preset              # dqn's CartPole-v1 preset
    python scripts/dqn_late_stability.py --set n_step=3        # a variant
    python scripts/dqn_late_stability.py --set lr_final=1e-4
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from toolkit.training import start_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run are FIRST .. FIRST+SEEDS-1 (split a run over processes)")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--set", dest="set_items", action="append", default=[], help="agent setting key=value")
    parser.add_argument("--preset", action="store_true", help="start from dqn's CartPole-v1 preset (--set overrides it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run, _ = start_training("dqn", "CartPole-v1", steps=args.steps, seed=seed, device="cpu", progress=False,
                                    run_dir=Path(tmp) / f"s{seed}", checkpoint_every=0, eval_every=args.eval_every,
                                    eval_episodes=10, log_every=args.eval_every, set_items=args.set_items,
                                    preset=args.preset)
            lines = (run / "metrics.jsonl").read_text().splitlines()
            curve = [round(json.loads(line)["return_mean"]) for line in lines if '"eval"' in line]
            print(f"seed {seed}: {curve}  final {curve[-1]}, best {max(curve)}", flush=True)
            rows.append((seed, curve[-1], max(curve)))
    print(f"\n| seed | final return at {args.steps} | best |\n|---|---|---|")
    for seed, final, best in rows:
        print(f"| {seed} | {final} | {best} |")
    print(f"\n{sum(final >= 475 for _, final, _ in rows)} of {len(rows)} seeds end at >= 475.")


if __name__ == "__main__":
    main()
