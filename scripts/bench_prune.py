"""Benchmark: what magnitude pruning costs a classifier and a policy, and what fine-tuning buys back.

Two studies, each trained and pruned through the toolkit's own functions (what
``toolkit train`` and ``toolkit prune`` call), in one run:

1. **VGG11 on mnist-5k** (the reference report's study, on the data this machine has): a
   ``vgg11`` (its default width for 28x28 inputs) trained ``--vgg-steps`` gradient steps; a
   sensitivity scan (each layer alone at 0.1 ... 0.9); per-layer sparsities chosen from the scan
   for a predicted accuracy drop of at most ``--max-drop`` (``toolkit prune --max-drop``); and,
   for contrast, one global L1 ranking at ``--global-sparsity``. Each pruned network is then
   fine-tuned ``--vgg-finetune`` steps with its masks held. Rows: test accuracy (all 1,000 test
   examples), non-zero and total parameters, size on disk dense and sparse (bit mask + non-zero
   values), before and after fine-tuning.
2. **A SAC policy on Pendulum-v1**: ``sac`` trained ``--sac-steps`` environment steps, its actor
   pruned globally to 50%, 70% and 90% (the critics stay dense), each evaluated (``--episodes``
   deterministic episodes with ``toolkit eval``'s seeds) before and after ``--sac-finetune``
   environment steps of fine-tuning, masks held (the replay buffer comes with the checkpoint).

Figures: ``<out>/vgg11-scan.png`` (the scan), ``<out>/pruning.png`` (accuracy and return
against sparsity, pruned and fine-tuned). Tables are printed as markdown and written to
``<out>/results.md``. Everything runs on one device (``--device``, default cpu) with
``--threads`` torch threads.

    python scripts/bench_prune.py --out bench-prune
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from toolkit.prune_run import PruneRequest, prune_run
from toolkit.training import start_training


def train(name: str, out: Path, steps: int, device: str, seed: int, **kwargs: Any) -> Path:
    run_dir = out / "runs" / name
    started = time.perf_counter()
    start_training(kwargs.pop("learner"), kwargs.pop("env", None), steps=steps, seed=seed, device=device,
                   run_dir=run_dir, progress=False, **kwargs)
    print(f"trained {name}: {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def prune(run_dir: Path, out_dir: Path, **request: Any) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = prune_run(run_dir, PruneRequest(**request), out_dir, progress=False)
    print(f"pruned {out_dir.name}: {time.perf_counter() - started:.0f} s", flush=True)
    assert outcome.report is not None
    return outcome.report


def weights_row(label: str, weights: dict[str, Any], metric: float, fmt: str) -> str:
    return (f"| {label} | {format(metric, fmt)} | {weights['sparsity']:.1%} | {weights['nonzero_parameters']:,} "
            f"| {weights['parameters']:,} | {weights['size_dense_bytes'] / 1024:,.0f} | "
            f"{weights['size_sparse_bytes'] / 1024:,.0f} |")


HEADER = ("| network | {metric} | sparsity (prunable weights) | non-zero params | params | dense KiB | sparse KiB |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def vgg_study(args: argparse.Namespace, out: Path) -> tuple[list[str], dict[str, Any]]:
    run = train("vgg11", out, args.vgg_steps, args.device, args.seed, learner="vgg11", dataset="mnist-5k")
    chosen = prune(run, out / "vgg11-maxdrop", max_drop=args.max_drop, finetune=args.vgg_finetune)
    shutil.copy(out / "vgg11-maxdrop" / "prune" / "scan.png", out / "vgg11-scan.png")
    glob = prune(run, out / "vgg11-global", sparsity=args.global_sparsity, finetune=args.vgg_finetune)
    # The control: the dense network trained the same extra steps (a pruning of nothing), so
    # what fine-tuning recovers is told apart from what more training adds.
    control = prune(run, out / "vgg11-dense-more", sparsity=0.0, finetune=args.vgg_finetune)
    lines = [f"VGG11 on mnist-5k, {args.vgg_steps} steps, fine-tuned {args.vgg_finetune} steps "
             f"(test accuracy on 1,000 examples)", "", HEADER.format(metric="test accuracy"),
             weights_row("dense", chosen["dense"], chosen["metric_dense"], ".3f"),
             weights_row(f"dense, trained {args.vgg_finetune} more steps", control["finetuned"],
                         control["metric_finetuned"], ".3f"),
             weights_row(f"scan-chosen (max drop {args.max_drop:g}), pruned", chosen["pruned"], chosen["metric_pruned"], ".3f"),
             weights_row("scan-chosen, fine-tuned", chosen["finetuned"], chosen["metric_finetuned"], ".3f"),
             weights_row(f"global {args.global_sparsity:g}, pruned", glob["pruned"], glob["metric_pruned"], ".3f"),
             weights_row(f"global {args.global_sparsity:g}, fine-tuned", glob["finetuned"], glob["metric_finetuned"], ".3f"),
             "", f"Scan choice: {chosen['method']}; measured drop before fine-tuning "
             f"{chosen['metric_dense'] - chosen['metric_pruned']:.3f}.",
             "", "Per-layer sparsity the scan chose: " + ", ".join(
                 f"{name} {info['sparsity']:.0%}" for name, info in chosen["pruned"]["layers"].items())]
    return lines, {"maxdrop": chosen, "global": glob, "control": control}


def sac_study(args: argparse.Namespace, out: Path) -> tuple[list[str], dict[float, dict[str, Any]]]:
    run = train("sac", out, args.sac_steps, args.device, args.seed, learner="sac", env="Pendulum-v1")
    reports = {s: prune(run, out / f"sac-{int(s * 100)}", sparsity=s, finetune=args.sac_finetune, episodes=args.episodes)
               for s in (0.0, 0.5, 0.7, 0.9)}
    control = reports.pop(0.0)  # the dense actor trained the same extra steps
    lines = [f"SAC actor on Pendulum-v1, {args.sac_steps} env steps, fine-tuned {args.sac_finetune} env steps "
             f"(mean return over {args.episodes} deterministic episodes)", "",
             HEADER.format(metric="return"), weights_row("dense", control["dense"], control["metric_dense"], ".1f"),
             weights_row(f"dense, trained {args.sac_finetune} more steps", control["finetuned"],
                         control["metric_finetuned"], ".1f")]
    for s, report in reports.items():
        lines.append(weights_row(f"global {s:g}, pruned", report["pruned"], report["metric_pruned"], ".1f"))
        lines.append(weights_row(f"global {s:g}, fine-tuned", report["finetuned"], report["metric_finetuned"], ".1f"))
    reports[0.0] = control
    return lines, reports


def figure(vgg: dict[str, Any] | None, sac: dict[float, dict[str, Any]] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (vgg, sac) if p is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=110, squeeze=False)
    i = 0
    if vgg is not None:
        ax = axes[0][i]
        i += 1
        for key, marker in (("maxdrop", "o"), ("global", "s")):
            r = vgg[key]
            label = "scan-chosen" if key == "maxdrop" else "global"
            ax.plot([0, r["pruned"]["sparsity"]], [r["metric_dense"], r["metric_pruned"]], marker=marker, linestyle=":",
                    label=f"{label}, pruned")
            ax.plot([r["finetuned"]["sparsity"]], [r["metric_finetuned"]], marker=marker, markersize=9,
                    linestyle="none", label=f"{label}, fine-tuned")
        control = vgg["control"]
        ax.axhline(control["metric_finetuned"], color="grey", linestyle="--", linewidth=1,
                   label="dense, trained as long")
        ax.set_title("VGG11 on mnist-5k")
        ax.set_xlabel("sparsity of prunable weights")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if sac is not None:
        ax = axes[0][i]
        xs = sorted(sac)
        ax.plot(xs, [sac[s]["metric_pruned"] for s in xs], marker="o", label="pruned")
        ax.plot(xs, [sac[s]["metric_finetuned"] for s in xs], marker="s", label="fine-tuned (0: dense trained as long)")
        ax.set_title("SAC actor on Pendulum-v1")
        ax.set_xlabel("sparsity of the actor's weights (global L1)")
        ax.set_ylabel("mean evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-prune"))
    parser.add_argument("--vgg-steps", type=int, default=1500)
    parser.add_argument("--vgg-finetune", type=int, default=300)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--global-sparsity", type=float, default=0.9)
    parser.add_argument("--sac-steps", type=int, default=20_000)
    parser.add_argument("--sac-finetune", type=int, default=2_000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--only", choices=("vgg", "sac"), default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; pass another --out")
    args.out.mkdir(parents=True)
    lines: list[str] = [f"device: {args.device}, {args.threads} torch threads, seed {args.seed}", ""]
    vgg = sac = None
    if args.only in (None, "vgg"):
        vgg_lines, vgg = vgg_study(args, args.out)
        lines += vgg_lines + [""]
    if args.only in (None, "sac"):
        sac_lines, sac = sac_study(args, args.out)
        lines += sac_lines + [""]
    figure(vgg, sac, args.out / "pruning.png")
    text = "\n".join(lines)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    print(f"figures: {args.out / 'pruning.png'}" + (f", {args.out / 'vgg11-scan.png'}" if vgg else ""))


if __name__ == "__main__":
    main()
