"""Structured pruning of a classifier: remove whole channels and hidden units, measure the speed-up.

`toolkit prune RUN --structured R` (see ``docs/pruning.md``). Unstructured pruning
(:mod:`toolkit.pruning`) zeroes single weights: the tensors keep their shapes, so dense
hardware does the same work. Here every convolution loses the fraction ``R`` of its output
channels (filters) and every hidden ``nn.Linear`` the fraction ``R`` of its units, and the
layers that read them lose the matching inputs, so the network really is smaller and its
multiply-adds fewer.

* **Which channels.** Those of smallest L1 norm: the sum of the absolute weights of the
  filter (a convolution's output channel) or of the unit's row (a linear layer's output), the
  criterion of Li et al. 2017, "Pruning Filters for Efficient ConvNets" (ICLR). Each layer
  loses the same fraction (their "prune each layer independently"); nothing is fine-tuned.
* **What else changes.** Removing channel ``c`` of ``conv2`` also removes ``bn2``'s ``c``-th
  scale and shift and the inputs of the next layer that read channel ``c`` (after a flatten,
  every spatial position of it). These couplings are found by tracing the network with a
  dependency graph (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning", CVPR), as
  implemented by the `torch-pruning` library (its ``MagnitudePruner``), which this module
  calls through its public API. The output head's own layers are ignored, so the class count
  and the head's structure are kept; only the head's inputs shrink with the last hidden layer.
* **What is measured.** Parameters and multiply-accumulates per example
  (``torch_pruning.utils.count_ops_and_params``), CPU inference latency (median over timed
  forward passes of a fixed batch of test examples, in evaluation mode under
  :func:`torch.inference_mode`, after warm-up, dense and pruned passes interleaved so that the
  load of a shared machine hits both alike), and test accuracy.

The source run is only read, and the pruned network is not written as a run: its shapes no
longer match the run's config, so no other command could rebuild it. What is written is the
report, ``OUT/structured.json``.

`torch-pruning` is an optional dependency (``pip install -e ".[prune]"``); it is imported
only when structured pruning is asked for.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

#: Where ``toolkit prune --structured`` writes its report inside ``--out``.
REPORT_FILE = "structured.json"

#: Test examples per timed forward pass (fewer when the test split is smaller).
LATENCY_BATCH = 256
#: Timed forward passes per network, and untimed ones before them.
LATENCY_REPEATS = 20
LATENCY_WARMUP = 3

#: The flags of `toolkit prune` that ``--structured`` cannot be combined with.
_EXCLUSIVE_FLAGS = ("--sparsity", "--per-layer", "--max-drop", "--scan", "--finetune")


@dataclass
class NetworkCost:
    """What one network costs and how well it classifies."""

    #: All parameters of the network (body and head).
    parameters: int
    #: Multiply-accumulate operations for one example.
    macs: int
    #: Median wall time of one forward pass of the latency batch, in milliseconds.
    latency_ms: float
    #: Fraction of the test split classified right.
    accuracy: float


@dataclass
class StructuredReport:
    """What ``toolkit prune --structured`` measured; :meth:`to_dict` is ``structured.json``."""

    source: str
    source_step: int
    #: The run's model name (``cnn``, ``vgg11``, ...).
    learner: str
    #: Fraction of the channels / hidden units removed from every prunable layer.
    ratio: float
    method: str
    dense: NetworkCost
    structured: NetworkCost
    #: ``{layer: {"before": width, "after": width}}``: output channels or units of every
    #: convolution and linear layer, the head's included (unchanged).
    layers: dict[str, dict[str, int]]
    #: How latency was measured: device, batch, threads, repeats, warm-up, and every timing.
    latency: dict[str, Any]
    #: Always False: the accuracy after is that of the pruned weights as they are.
    fine_tuned: bool = False
    #: The pruned network itself (on the CPU, evaluation mode); not part of the JSON.
    network: Any = field(default=None, repr=False, compare=False)

    @property
    def speedup(self) -> float:
        """Dense latency over pruned latency (above 1: the pruned network is faster)."""
        return self.dense.latency_ms / self.structured.latency_ms

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (without the network)."""
        data = {name: value for name, value in asdict(self).items() if name != "network"}
        data["speedup"] = self.speedup
        data["parameter_ratio"] = self.structured.parameters / self.dense.parameters
        data["macs_ratio"] = self.structured.macs / max(1, self.dense.macs)
        data["accuracy_drop"] = self.dense.accuracy - self.structured.accuracy
        return data


# --------------------------------------------------------------------------- checks


def check_ratio(ratio: float) -> None:
    """One sentence unless ``ratio`` is a fraction of channels strictly between 0 and 1."""
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 < ratio < 1.0):
        raise ToolkitError(f"--structured must lie in (0, 1), the fraction of channels to remove, got {ratio}.")


def check_alone(others: dict[str, bool]) -> None:
    """One sentence if ``--structured`` comes with another pruning flag (``{flag: given}``).

    Structured pruning measures a different network (smaller shapes, no masks) and writes no
    run, so a scan, unstructured sparsities or fine-tuning of a run cannot be part of it.
    """
    given = [flag for flag in _EXCLUSIVE_FLAGS if others.get(flag)]
    if given:
        raise ToolkitError(f"--structured cannot be combined with {' or '.join(given)}; "
                           "run `toolkit prune` once for each.")


def import_torch_pruning() -> Any:
    """The `torch_pruning` module, or one sentence on how to install it."""
    try:
        import torch_pruning
    except ImportError:
        raise ToolkitError('Structured pruning needs the torch-pruning library; install it with '
                           'pip install -e ".[prune]" (or pip install torch-pruning).') from None
    return torch_pruning


def classifier_network(session: Any) -> Any:
    """The one network of a classifier run (``checkpointed["network"]``), or one sentence."""
    from torch import nn

    from toolkit.model import ClassifierModel

    name = session.settings.model or session.settings.agent
    learner = session.learner
    network = getattr(learner, "checkpointed", {}).get("network")
    if not (session.is_model and isinstance(learner, ClassifierModel) and isinstance(network, nn.Module)):
        kind = "an agent" if not session.is_model else "not a classifier"
        raise ToolkitError(f"Structured pruning (--structured) is for classifiers (vgg11, cnn, mlp) so far, and "
                           f"{name} is {kind}; use --sparsity for unstructured pruning.")
    return network


# --------------------------------------------------------------------------- pruning


def output_layers(network: Any) -> list[Any]:
    """The layers whose outputs are the classes, never pruned: the output head (``network.head``,
    every module in it), or, for a network without one, its last ``nn.Linear``."""
    from torch import nn

    head = getattr(network, "head", None)
    if isinstance(head, nn.Module):
        return [head]
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def prune_channels(network: Any, ratio: float, example: Any) -> Any:
    """A copy of ``network`` with the fraction ``ratio`` of every convolution's channels and every
    hidden linear layer's units removed (smallest L1 filter norm first, Li et al. 2017), the
    couplings found by a dependency graph (Fang et al. 2023); ``network`` is left untouched.

    ``example`` is an input batch (a single example suffices) on the network's device, used to
    trace the network. The copy is returned in evaluation mode.
    """
    check_ratio(ratio)
    tp = import_torch_pruning()
    pruned = copy.deepcopy(network).eval()  # eval: batch norm must not move its statistics while tracing
    old_features = _feature_width(pruned, example)
    # p=1, "first": the L1 norm of the pruned layer's own filter or row, exactly Li et al.'s
    # criterion; the default group mean would also add the coupled batch-norm scales and the next
    # layer's input columns. No normaliser: with one ratio per layer only the order matters.
    importance = tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None)
    with warnings.catch_warnings():
        # The tracer warns about modules it walks through but cannot prune (e.g. a hierarchical
        # softmax's tree); the report's per-layer widths show what was pruned.
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(pruned, example, importance=importance, pruning_ratio=ratio,
                                           ignored_layers=output_layers(pruned))
        pruner.step()
    new_features = _feature_width(pruned, example)
    if new_features is not None and new_features != old_features:
        # The library resizes Linear layers; the heads' own records of their input width (read
        # by repr and by nn.AdaptiveLogSoftmaxWithLoss's forward) must follow.
        for module in getattr(pruned, "head", pruned).modules():
            if not isinstance(module, _library_resized()) and getattr(module, "in_features", None) == old_features:
                module.in_features = new_features
    return pruned


def _library_resized() -> tuple[type, ...]:
    from torch import nn

    return (nn.Linear, nn.modules.conv._ConvNd)


def _feature_width(network: Any, example: Any) -> int | None:
    """The width of the features a classifier network hands its head (None without ``features``)."""
    import torch

    if not callable(getattr(network, "features", None)):
        return None
    with torch.inference_mode():
        return int(network.features(example[:1]).shape[1])


def layer_widths(network: Any) -> dict[str, int]:
    """Output channels (convolutions) or units (linear layers) by module path."""
    from torch import nn

    widths: dict[str, int] = {}
    for name, module in network.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = int(module.out_channels)
        elif isinstance(module, nn.Linear):
            widths[name] = int(module.out_features)
    return widths


# --------------------------------------------------------------------------- measuring


def count_cost(network: Any, example: Any) -> tuple[int, int]:
    """``(parameters, multiply-accumulates per example)`` by torch-pruning's counter."""
    tp = import_torch_pruning()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, params = tp.utils.count_ops_and_params(network, example[:1])
    return int(params), int(macs)


def predict(network: Any, x: Any) -> Any:
    """The predicted class ``[B]``: the head's own argmax when the network has one (as the
    classifier's evaluation does), else the argmax of the network's output."""
    head = getattr(network, "head", None)
    if callable(getattr(network, "features", None)) and callable(getattr(head, "predict", None)):
        return head.predict(network.features(x))
    return network(x).argmax(dim=1)


def test_accuracy(network: Any, data: Any) -> float:
    """Fraction of ``data``'s test split that ``network`` (on the CPU) classifies right."""
    import torch

    from toolkit.model_eval import iterate_examples

    correct = total = 0
    network.eval()
    with torch.inference_mode():
        for batch in iterate_examples(data, "test", "cpu"):
            if batch.y is None:
                raise ToolkitError(f"The test split of {data.source or 'the dataset'} has no labels to score accuracy by.")
            correct += int((predict(network, batch.x) == batch.y).sum())
            total += len(batch.y)
    if total == 0:
        raise ToolkitError(f"The test split of {data.source or 'the dataset'} is empty; nothing to evaluate.")
    return correct / total


test_accuracy.__test__ = False  # type: ignore[attr-defined]  # pytest: not a test despite its name


def time_forward(networks: list[Any], x: Any, repeats: int = LATENCY_REPEATS,
                 warmup: int = LATENCY_WARMUP) -> list[list[float]]:
    """Wall times in milliseconds of ``repeats`` forward passes of ``x`` through each network.

    Evaluation mode, :func:`torch.inference_mode` (no autograd bookkeeping), ``warmup`` untimed
    passes first (allocator and kernel selection). The networks take turns within each repeat,
    so a neighbour's load on a shared CPU slows all of them alike rather than one.
    """
    import torch

    for network in networks:
        network.eval()
    times: list[list[float]] = [[] for _ in networks]
    with torch.inference_mode():
        for _ in range(warmup):
            for network in networks:
                network(x)
        for _ in range(repeats):
            for k, network in enumerate(networks):
                start = time.perf_counter()
                network(x)
                times[k].append((time.perf_counter() - start) * 1000.0)
    return times


def structured_prune(session: Any, ratio: float, example: Any = None, *, batch: int = LATENCY_BATCH,
                     repeats: int = LATENCY_REPEATS, warmup: int = LATENCY_WARMUP,
                     threads: int | None = None) -> StructuredReport:
    """Prune the classifier of ``session`` structurally (see the module doc) and measure it.

    ``example`` traces the network (default: the first test example). Latency is timed on the
    first ``batch`` test examples with ``threads`` CPU threads (default: torch's current
    number, which ``OMP_NUM_THREADS`` sets at start-up). Everything runs on CPU copies: the
    session's learner is never changed. ``source``/``source_step`` of the report are left empty
    for the caller to fill. The pruned network is ``report.network``.
    """
    import torch

    from toolkit.model_eval import iterate_examples

    check_ratio(ratio)
    network = classifier_network(session)
    import_torch_pruning()
    dense = copy.deepcopy(network).cpu().eval()  # CPU latency is what is reported
    timing = next(iterate_examples(session.data, "test", "cpu", batch_size=batch), None)
    if timing is None:
        raise ToolkitError(f"The test split of {session.data.source or 'the dataset'} is empty; nothing to measure.")
    example = timing.x[:1] if example is None else example.detach().cpu()

    pruned = prune_channels(dense, ratio, example)
    dense_params, dense_macs = count_cost(dense, example)
    pruned_params, pruned_macs = count_cost(pruned, example)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        dense_times, pruned_times = time_forward([dense, pruned], timing.x, repeats, warmup)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    before, after = layer_widths(dense), layer_widths(pruned)
    return StructuredReport(
        source="", source_step=0, learner=str(session.settings.model), ratio=ratio,
        method=(f"structured: {ratio:g} of every convolution's channels and hidden layer's units removed, "
                "smallest L1 filter norm first (Li et al. 2017), couplings by dependency graph "
                "(Fang et al. 2023, torch-pruning); output head kept; no fine-tuning"),
        dense=NetworkCost(dense_params, dense_macs, statistics.median(dense_times), test_accuracy(dense, session.data)),
        structured=NetworkCost(pruned_params, pruned_macs, statistics.median(pruned_times),
                               test_accuracy(pruned, session.data)),
        layers={name: {"before": width, "after": after.get(name, 0)} for name, width in before.items()},
        latency={"device": "cpu", "batch": int(timing.x.shape[0]), "threads": used,
                 "repeats": repeats, "warmup": warmup, "statistic": "median",
                 "dense_ms": dense_times, "structured_ms": pruned_times},
        network=pruned,
    )


# --------------------------------------------------------------------------- the command


def run_structured(run_dir: Path, ratio: float, out: Path | None = None) -> tuple[StructuredReport, Path]:
    """`toolkit prune RUN --structured R`: measure, write ``OUT/structured.json``; returns the
    report and the file. ``run_dir`` is only read; ``out`` (default ``RUN-structured`` beside
    the run) must be new or empty."""
    from toolkit.prune_run import _check_trained, _default_out
    from toolkit.runs import write_json
    from toolkit.session import open_trained_run

    check_ratio(ratio)
    run_dir = Path(run_dir)
    _check_trained(run_dir)
    out = Path(out) if out is not None else _default_out(run_dir, "structured")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise ToolkitError(f"--out {out} is inside the source run {run_dir}; `toolkit prune` never writes there.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ToolkitError(f"{out} already exists; pick another --out.")
    session, step = open_trained_run(run_dir)
    # An agent is refused before a missing library: installing it would not help.
    classifier_network(session)
    import_torch_pruning()
    report = structured_prune(session, ratio)
    report.source, report.source_step = str(run_dir.resolve()), step
    path = out / REPORT_FILE
    write_json(path, report.to_dict())
    return report, path
