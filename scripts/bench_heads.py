"""Benchmark: when do the output-layer variants of :mod:`toolkit.nn.heads` pay off?

The task
--------
A synthetic classification problem with ``C`` classes (``--classes``, default 10, 1,000 and
50,000), built so that only the output layer matters:

* Class frequencies follow Zipf's law with exponent ``--zipf`` (1.0): the class of frequency
  rank ``k`` (1-based) has probability proportional to ``1 / k``, like word frequencies in
  text. Ranks are assigned to labels in a random order, so label order says nothing about
  frequency (the adaptive head must re-index classes itself). At 50,000 classes the top 10
  classes hold 26% of the examples and the rarest half of the classes together hold 6%.
* The feature extractor is fixed: every class has a prototype vector ``mu_c ~ N(0, I_d)`` in
  ``--dim`` (64) dimensions, and an example of class ``c`` is ``mu_c + sigma * eps`` with
  ``eps ~ N(0, I_d)`` and ``sigma = --noise`` (2.0). The classes are then Gaussians with a shared
  covariance, so the Bayes-optimal classifier is linear: a softmax head can represent it
  exactly, and any gap is the head's (or its training budget's) doing.
* Training data: ``--steps`` minibatches of ``--batch-size`` examples drawn from the Zipf law,
  the same minibatches for every head. The heads get the training set's per-class counts
  (``class_counts``, what a user would have; classes never drawn count 0).
  Test data: ``--test-size`` (10,240) fresh examples from the same Zipf law.

Every head (``softmax``, ``gumbel``, ``hierarchical``, ``adaptive``, built by ``make_head`` with
its defaults) sits on a small trainable trunk (``d -> --trunk-hidden (256) -> d``, ReLU; the
same initialisation for every head, from ``--seed``) and is trained with it for the same steps
with the same batch size and optimiser (Adam, ``--lr`` 5e-3) on the mean of the head's
``loss``. The trunk matters for the hierarchical head: its tree groups classes by frequency,
not by where they lie in feature space, and each internal node is a linear split, so on the
raw prototype features (``--trunk-hidden 0``) it is far less accurate; a trunk can learn
features that suit the tree, as a real network's would. (With the default ``anneal_rate`` the
gumbel head's temperature only falls from 1.0 to ~0.97 in a default run.)

What is measured
----------------
* ``train ms/step``: wall time of one training step (zero_grad, ``loss``, backward, Adam step),
  median over the steps after the first ``--warmup`` (10); on CUDA with a synchronise.
  ``vs softmax``: the softmax head's median over this head's, at the same class count.
* ``params+Adam MB``: the head's parameter bytes plus Adam's two moment buffers for them (3x
  the parameter bytes, exact; the trunk's are the same for every head and left out).
* ``step peak MB``: on CPU, the peak of bytes that torch allocated during one training step
  and that were live at once (activations, gradients and temporaries), from
  ``torch.profiler`` memory events (``profile_memory=True``) over the last training step,
  which is excluded from the timing. Frees of blocks allocated before the step are not events,
  so this is the peak of what the step itself holds, not of the whole process. On CUDA:
  ``torch.cuda.max_memory_allocated`` during that step minus what was allocated before it.
  It includes the trunk's activations, the same for every head (~0.8 MB at the defaults).
* ``test acc`` and ``test NLL``: accuracy of ``predict`` and mean exact ``nll`` (nats) on the
  test set, in evaluation mode.
* ``eval ms/batch``: median wall time of ``predict`` plus ``nll`` on one test batch of
  ``--batch-size`` examples. ``predict`` needs every class's score for the softmax and
  hierarchical heads; the adaptive head's ``predict`` skips tail clusters unless the head's best
  entry is a cluster.

How to read it
--------------
Compare rows within one class count. The variants pay off where ``vs softmax`` is well above 1
and the test metrics are close to the softmax head's: the hierarchical head trains in
O(log C) per example and the adaptive head in roughly O(shortlist), so their advantage grows
with C while the softmax head's cost grows linearly; at 10 classes there is nothing to save.
The gumbel head costs what softmax costs (same logits, plus noise) and is here to show what
training through relaxed samples does to accuracy and NLL. Times on a shared CPU are noisy
(the machine's other jobs): differences within ~20% are not meaningful; the orders of
magnitude are. ``--threads`` sets torch's CPU threads, 1 by default: on two cores shared with
other jobs, two OpenMP threads made small elementwise ops 10x slower (each waits for a
descheduled sibling), which would swamp what is measured. Tensors above glibc's mmap
threshold (32 MB, e.g. the softmax's [256, 50,000] logits) are mapped fresh every step, so
page faults are part of the large-C softmax's CPU cost, as they are in any CPU run of it.

Run: ``python scripts/bench_heads.py [--steps 300] [--classes 10,1000,50000] [--out table.md]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from toolkit.nn.heads import HEADS, OutputHead, make_head


def zipf_probabilities(num_classes: int, exponent: float, generator: torch.Generator) -> torch.Tensor:
    """``p[label]``: rank ``k`` has probability ``∝ k^-exponent``; ranks go to labels at random."""
    by_rank = torch.arange(1, num_classes + 1, dtype=torch.float64) ** -exponent
    by_rank /= by_rank.sum()
    labels = torch.randperm(num_classes, generator=generator)
    probs = torch.empty(num_classes, dtype=torch.float64)
    probs[labels] = by_rank
    return probs


class Task:
    """The synthetic task of one class count: prototypes, a training stream, a test set."""

    def __init__(self, num_classes: int, args: argparse.Namespace, device: torch.device) -> None:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + num_classes)
        self.num_classes = num_classes
        probs = zipf_probabilities(num_classes, args.zipf, g)
        self.prototypes = torch.randn(num_classes, args.dim, generator=g)
        train_labels = torch.multinomial(probs, args.steps * args.batch_size, replacement=True, generator=g)
        self.class_counts = torch.bincount(train_labels, minlength=num_classes).tolist()
        self.train_x = self._features(train_labels, args.noise, g).view(args.steps, args.batch_size, -1).to(device)
        self.train_y = train_labels.view(args.steps, args.batch_size).to(device)
        test_labels = torch.multinomial(probs, args.test_size, replacement=True, generator=g)
        self.test_x = self._features(test_labels, args.noise, g).to(device)
        self.test_y = test_labels.to(device)

    def _features(self, labels: torch.Tensor, noise: float, g: torch.Generator) -> torch.Tensor:
        return self.prototypes[labels] + noise * torch.randn(len(labels), self.prototypes.shape[1], generator=g)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during ``step`` and live at once (see the module docstring)."""
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()  # positive: an allocation; negative: a free
        peak = max(peak, live)
    return peak


def _trunk(args: argparse.Namespace) -> torch.nn.Module:
    """The trainable trunk under every head: ``d -> hidden -> d`` with a ReLU, or nothing."""
    if args.trunk_hidden <= 0:
        return torch.nn.Identity()
    return torch.nn.Sequential(
        torch.nn.Linear(args.dim, args.trunk_hidden), torch.nn.ReLU(), torch.nn.Linear(args.trunk_hidden, args.dim)
    )


def run_head(kind: str, task: Task, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Train one head on ``task`` and measure it."""
    torch.manual_seed(args.seed)
    trunk = _trunk(args).to(device)
    head: OutputHead = make_head(kind, args.dim, task.num_classes, task.class_counts).to(device)
    optimizer = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=args.lr)
    trunk.train()
    head.train()

    def train_step(i: int) -> None:
        optimizer.zero_grad()
        head.loss(trunk(task.train_x[i]), task.train_y[i]).mean().backward()
        optimizer.step()

    times = []
    for i in range(args.steps - 1):
        start = time.perf_counter()
        train_step(i)
        _sync(device)
        times.append(time.perf_counter() - start)
    # The last step is profiled for memory (after the first, so Adam's state already exists).
    peak = step_peak_bytes(lambda: train_step(args.steps - 1), device)
    param_bytes = sum(p.numel() * p.element_size() for p in head.parameters())  # the head's only

    trunk.eval()
    head.eval()
    correct, nll_sum, eval_times = 0, 0.0, []
    with torch.no_grad():
        for start_row in range(0, len(task.test_y), args.batch_size):
            x = task.test_x[start_row : start_row + args.batch_size]
            y = task.test_y[start_row : start_row + args.batch_size]
            _sync(device)
            start = time.perf_counter()
            features = trunk(x)
            predicted = head.predict(features)
            nll = head.nll(features, y)
            _sync(device)
            eval_times.append(time.perf_counter() - start)
            correct += int((predicted == y).sum())
            nll_sum += float(nll.sum())
    return {
        "train_ms": 1e3 * statistics.median(times[args.warmup :] or times),
        "static_mb": 3 * param_bytes / 2**20,  # parameters + Adam's exp_avg and exp_avg_sq
        "peak_mb": peak / 2**20,
        "acc": correct / len(task.test_y),
        "nll": nll_sum / len(task.test_y),
        "eval_ms": 1e3 * statistics.median(eval_times[1:] or eval_times),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse options, run every head at every class count, print (and optionally save) the table."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per head (default 300)")
    parser.add_argument("--batch-size", type=int, default=256, help="training and evaluation batch size")
    parser.add_argument("--classes", default="10,1000,50000", help="comma-separated class counts")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see the module docstring)")
    parser.add_argument("--dim", type=int, default=64, help="feature dimension")
    parser.add_argument("--trunk-hidden", type=int, default=256, help="hidden width of the trainable trunk; 0: none")
    parser.add_argument("--noise", type=float, default=2.0, help="feature noise sigma around the class prototype")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the class frequencies")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    parser.add_argument("--test-size", type=int, default=10_240, help="held-out examples")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the timing")
    parser.add_argument("--heads", default=",".join(HEADS), help="comma-separated heads to run")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the last step is profiled for memory).")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    class_counts = [int(c) for c in args.classes.split(",") if c.strip()]
    kinds = [k.strip() for k in args.heads.split(",") if k.strip()]

    started = time.perf_counter()
    rows: list[tuple[str, int, dict[str, float]]] = []
    for num_classes in class_counts:
        task = Task(num_classes, args, device)
        for kind in kinds:
            t0 = time.perf_counter()
            result = run_head(kind, task, args, device)
            rows.append((kind, num_classes, result))
            print(
                f"# {kind:>12} C={num_classes:<6} {time.perf_counter() - t0:6.1f}s  "
                f"{result['train_ms']:.2f} ms/step  acc {result['acc']:.3f}  nll {result['nll']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - started

    softmax_ms = {c: r["train_ms"] for k, c, r in rows if k == "softmax"}
    lines = [
        f"Output heads, {args.steps} steps of batch {args.batch_size}, Adam lr {args.lr}, features d={args.dim} "
        f"(noise {args.noise}), Zipf exponent {args.zipf}, test set {args.test_size}, device {args.device}, "
        f"{args.threads} thread(s), seed {args.seed}; {elapsed:.0f} s in all.",
        "",
        "| classes | head | train ms/step | vs softmax | params+Adam MB | step peak MB | test acc "
        "| test NLL (nats) | eval ms/batch |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, num_classes, r in rows:
        ratio = f"{softmax_ms[num_classes] / r['train_ms']:.1f}x" if num_classes in softmax_ms else "-"
        lines.append(
            f"| {num_classes:,} | {kind} | {r['train_ms']:.2f} | {ratio} | {r['static_mb']:.2f} | {r['peak_mb']:.2f} "
            f"| {r['acc']:.3f} | {r['nll']:.3f} | {r['eval_ms']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
