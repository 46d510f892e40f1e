"""`toolkit prune RUN`: scan, prune and fine-tune a trained run into a new run directory.

The source run is only read. What is judged is the run's own metric: test accuracy for a
classifier, the test score sweeps rank by for other models (the ELBO, minus the
reconstruction error), and the mean deterministic evaluation return for an agent. What is
pruned and how is :mod:`toolkit.pruning`; the output layout is in ``docs/pruning.md``:

* ``--scan`` alone: ``OUT/scan.csv`` (one row per layer and sparsity) and ``OUT/scan.png``;
* a pruning (``--sparsity``, ``--per-layer`` or ``--max-drop``): ``OUT`` is a run directory
  (config.yaml, ``checkpoints/latest.pt`` with the masks) that `toolkit eval`, `resume` and
  `prune` read like any other, and ``OUT/prune/report.json`` (plus the scan that
  ``--max-drop`` chose from). ``--finetune N`` trains N more steps there, masks held.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.runs import CHECKPOINT, CONFIG_FILE, create_run_dir, load_checkpoint, save_checkpoint, save_settings, write_json

#: Where a pruned run keeps what `toolkit prune` measured.
REPORT_DIR = "prune"


@dataclass
class PruneRequest:
    """What the user asked `toolkit prune` to do (checked by :meth:`check`)."""

    scan: bool = False
    sparsity: float | None = None
    #: ``global``: one magnitude ranking over all layers; ``layer``: each layer to ``sparsity``.
    scope: str = "global"
    per_layer: dict[str, float] = field(default_factory=dict)
    max_drop: float | None = None
    finetune: int = 0
    #: Agents: evaluation episodes per measurement.
    episodes: int = 10

    @property
    def prunes(self) -> bool:
        """Whether a pruned run will be written (not just a scan)."""
        return self.sparsity is not None or bool(self.per_layer) or self.max_drop is not None

    def check(self) -> None:
        """One sentence for each request that cannot be carried out."""
        from toolkit.pruning import check_sparsity

        chosen = [flag for flag, on in (("--sparsity", self.sparsity is not None), ("--per-layer", bool(self.per_layer)),
                                        ("--max-drop", self.max_drop is not None)) if on]
        if len(chosen) > 1:
            raise ToolkitError(f"Give one of --sparsity, --per-layer and --max-drop, not {' and '.join(chosen)}.")
        if not self.scan and not chosen:
            raise ToolkitError("Say what to do: --scan, --sparsity S, --per-layer NAME=S,... or --max-drop X.")
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        for name, value in self.per_layer.items():
            check_sparsity(value, f"The sparsity of {name}")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise ToolkitError(f"--max-drop must be a non-negative drop of the run's metric, got {self.max_drop}.")
        if self.scope not in ("global", "layer"):
            raise ToolkitError(f"--scope must be global or layer, got '{self.scope}'.")
        if self.finetune < 0:
            raise ToolkitError(f"--finetune must be a non-negative number of steps, got {self.finetune}.")
        if self.finetune and not chosen:
            raise ToolkitError("--finetune trains a pruned run; add --sparsity, --per-layer or --max-drop.")
        if self.episodes <= 0:
            raise ToolkitError(f"--episodes must be positive, got {self.episodes}.")


def parse_per_layer(text: str | None) -> dict[str, float]:
    """``conv1=0.5,fc1=0.8`` -> ``{"conv1": 0.5, "fc1": 0.8}``."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ToolkitError(f"--per-layer expects NAME=SPARSITY pairs separated by commas, got '{item}'.") from None
    return out


@dataclass
class Metric:
    """The number a run is judged by, higher is better, and how to measure it now."""

    name: str
    measure: Callable[[], float]


@dataclass
class ScanResult:
    """The metric with each layer alone pruned to each scan sparsity."""

    metric: str
    dense: float
    #: ``{layer: {sparsity: metric}}``.
    points: dict[str, dict[float, float]]
    #: Weights per layer.
    sizes: dict[str, int]


@dataclass
class PruneOutcome:
    """Where `toolkit prune` wrote and what it measured."""

    out: Path
    scan: ScanResult | None
    report: dict[str, Any] | None
    files: list[Path]


# --------------------------------------------------------------------------- the command


def prune_run(run_dir: Path, request: PruneRequest, out: Path | None = None, progress: bool = True) -> PruneOutcome:
    """Carry out ``request`` on the trained run ``run_dir`` (left untouched); see the module doc."""
    from toolkit.pruning import SCAN_SPARSITIES, choose_sparsities, prunable_layers
    from toolkit.session import open_trained_run

    request.check()
    run_dir = Path(run_dir)
    _check_trained(run_dir)
    out = out or _default_out(run_dir, "pruned" if request.prunes else "scan")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise ToolkitError(f"--out {out} is inside the source run {run_dir}; `toolkit prune` never writes there.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ToolkitError(f"{out} already exists; pick another --out.")
    session, step = open_trained_run(run_dir)
    from toolkit.external import refuse_external

    refuse_external(session.learner, session.settings.learner, "prune")
    layers = prunable_layers(session.learner)
    if not layers:
        raise ToolkitError(f"{run_dir}'s {session.settings.learner} has no Linear or convolution weights to prune.")
    check_names = list(request.per_layer)
    if check_names:
        from toolkit.pruning import check_layer_names

        check_layer_names(check_names, layers, str(run_dir))
    metric = run_metric(session, request.episodes)

    files: list[Path] = []
    scan = None
    if request.scan or request.max_drop is not None:
        scan = sensitivity_scan(session.learner, metric, SCAN_SPARSITIES, progress)
    if not request.prunes:
        assert scan is not None
        return PruneOutcome(out, scan, None, write_scan(scan, out))

    dense = scan.dense if scan is not None else metric.measure()
    if request.max_drop is not None:
        assert scan is not None
        per_layer = choose_sparsities(scan.points, scan.dense, request.max_drop, scan.sizes)
        predicted = sum(max(0.0, scan.dense - scan.points[name][s]) for name, s in per_layer.items())
        how = f"per layer, chosen from the scan: predicted drop {predicted:.3g} (at most {request.max_drop:g})"
    elif request.per_layer:
        per_layer, how = dict(request.per_layer), "per layer, as asked"
    else:
        per_layer, how = {}, f"{request.scope} L1 magnitude at {request.sparsity:g}"
    before = _describe_weights(session.learner)
    _apply_pruning(session.learner, request, per_layer)
    pruned = metric.measure()
    after = _describe_weights(session.learner)

    settings = replace(session.settings, steps=step + request.finetune,
                       pruning={"source": str(run_dir.resolve()), "source_step": step, "method": how,
                                "sparsities": {name: info["sparsity"] for name, info in after["layers"].items()}})
    _write_pruned_run(run_dir, out, session, settings)
    if scan is not None:  # the scan --max-drop chose from, beside the report
        files += write_scan(scan, out / REPORT_DIR)
    finetuned, tuned = None, None
    if request.finetune:
        from toolkit.training import resume_training

        resume_training(out, steps=step + request.finetune, progress=progress)
        session, _ = open_trained_run(out)
        finetuned = run_metric(session, request.episodes).measure()
        tuned = _describe_weights(session.learner)
    report = {
        "source": str(run_dir.resolve()), "source_step": step, "method": how, "metric": metric.name,
        "metric_dense": dense, "metric_pruned": pruned, "metric_finetuned": finetuned,
        "finetune_steps": request.finetune, "dense": before, "pruned": after, "finetuned": tuned,
    }
    report_path = out / REPORT_DIR / "report.json"
    write_json(report_path, report)
    files.append(report_path)
    return PruneOutcome(out, scan, report, files)


def _check_trained(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise ToolkitError(f"Run directory {run_dir} does not exist.")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ToolkitError(f"{run_dir} is not a toolkit run: it has no {CONFIG_FILE}, so there is nothing to prune.")
    if not (run_dir / CHECKPOINT).is_file():
        raise ToolkitError(f"{run_dir} has no checkpoint ({CHECKPOINT}) yet, so there are no trained weights to prune.")


def _default_out(run_dir: Path, tag: str) -> Path:
    base = run_dir.resolve().with_name(f"{run_dir.resolve().name}-{tag}")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _apply_pruning(learner: Any, request: PruneRequest, per_layer: Mapping[str, float]) -> None:
    from toolkit.pruning import prunable_layers, prune_global, prune_per_layer

    if per_layer:
        prune_per_layer(learner, per_layer)
    elif request.scope == "layer":
        assert request.sparsity is not None
        prune_per_layer(learner, {name: request.sparsity for name in prunable_layers(learner)})
    else:
        assert request.sparsity is not None
        prune_global(learner, request.sparsity)


def _write_pruned_run(source: Path, out: Path, session: Any, settings: Any) -> None:
    """The source's checkpoint (counters, replay buffer, random streams) with the pruned
    learner's weights and masks, and its settings, in a new run directory."""
    state = load_checkpoint(source / CHECKPOINT, device=session.device)
    key = "model" if session.is_model else "agent"
    state[key] = session.learner.state_dict()
    create_run_dir(out)
    save_settings(out, settings)
    save_checkpoint(out / CHECKPOINT, state)


# --------------------------------------------------------------------------- measuring


def run_metric(session: Any, episodes: int) -> Metric:
    """The run's metric (higher is better) as a function of the learner's current weights."""
    if not session.is_model:
        return _return_metric(session, episodes)
    from toolkit.model import ClassifierModel
    from toolkit.model_eval import ModelEvaluation, seeded, test_metrics

    model, data, device, seed = session.learner, session.data, session.device, session.settings.seed

    def metrics() -> dict[str, float]:
        with seeded(seed + 1_000_000, device):  # a VAE's sampled ELBO: the same draws every time
            return test_metrics(model, data, device)

    if isinstance(model, ClassifierModel):
        return Metric("test accuracy", lambda: metrics()["accuracy"])
    name, _ = ModelEvaluation(metrics()).score()
    return Metric(name, lambda: ModelEvaluation(metrics()).score()[1])


def _return_metric(session: Any, episodes: int) -> Metric:
    from toolkit.evaluation import evaluate

    settings = session.settings
    env = session.make_env()  # one env for every measurement; each episode is reset with its own seed
    seed = settings.seed + 2_000_000  # the seeds `toolkit eval` uses

    def measure() -> float:
        return evaluate(session.agent, settings.env, episodes, seed, session.device, env=env,
                        options=settings.env_options).mean

    return Metric(f"mean evaluation return over {episodes} episodes", measure)


def sensitivity_scan(learner: Any, metric: Metric, sparsities: tuple[float, ...], progress: bool = True) -> ScanResult:
    """Each prunable layer alone at each sparsity (L1 magnitude), the metric at each point;
    every weight is put back afterwards."""
    import torch
    from rich.progress import Progress

    from toolkit.console import err_console
    from toolkit.pruning import l1_mask, prunable_layers

    layers = prunable_layers(learner)
    dense = metric.measure()
    points: dict[str, dict[float, float]] = {name: {} for name in layers}
    with Progress(console=err_console, disable=not progress, transient=True) as bar:
        task = bar.add_task("sensitivity scan", total=len(layers) * len(sparsities))
        for name, layer in layers.items():
            original = layer.weight.detach().clone()
            try:
                for sparsity in sparsities:
                    with torch.no_grad():
                        layer.weight.copy_(original * l1_mask(original, sparsity))
                    points[name][sparsity] = metric.measure()
                    bar.advance(task)
            finally:
                with torch.no_grad():
                    layer.weight.copy_(original)
    return ScanResult(metric.name, dense, points, {name: layer.weight.numel() for name, layer in layers.items()})


def _describe_weights(learner: Any) -> dict[str, Any]:
    """Parameter counts, per-layer sparsity and sizes on disk of the prunable modules."""
    from toolkit.pruning import count_weights, prunable_layers, serialized_sizes, weight_sparsity

    layers = prunable_layers(learner)
    weights, nonzero = count_weights(layers)
    params = [p for m in learner.prunable_modules().values() for p in m.parameters()]
    dense_bytes, sparse_bytes = serialized_sizes(learner)
    return {
        "parameters": sum(p.numel() for p in params),
        "nonzero_parameters": sum(int((p.detach() != 0).sum()) for p in params),
        "prunable_weights": weights,
        "nonzero_weights": nonzero,
        "sparsity": 1.0 - nonzero / max(1, weights),
        "size_dense_bytes": dense_bytes,
        "size_sparse_bytes": sparse_bytes,
        "layers": {name: {"weights": layer.weight.numel(), "sparsity": weight_sparsity(layer)}
                   for name, layer in layers.items()},
    }


# --------------------------------------------------------------------------- scan files


def write_scan(scan: ScanResult, out_dir: Path) -> list[Path]:
    """``scan.csv`` (layer, weights, sparsity, metric, drop) and ``scan.png`` (one curve per
    layer, the dense metric dashed) in ``out_dir``; also ``scan.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "scan.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "weights", "sparsity", "metric", "drop"])
        for name, row in scan.points.items():
            for sparsity, value in row.items():
                writer.writerow([name, scan.sizes[name], f"{sparsity:g}", f"{value:.6g}", f"{scan.dense - value:.6g}"])
    json_path = out_dir / "scan.json"
    json_path.write_text(json.dumps({"metric": scan.metric, "dense": scan.dense, "sizes": scan.sizes,
                                     "points": {n: {f"{s:g}": v for s, v in r.items()} for n, r in scan.points.items()}},
                                    indent=2))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, row in scan.points.items():
        xs = [0.0, *row.keys()]
        ax.plot(xs, [scan.dense, *row.values()], marker="o", markersize=3, label=f"{name} ({scan.sizes[name]:,})")
    ax.axhline(scan.dense, color="black", linestyle="--", linewidth=1, label="dense")
    ax.set_xlabel("sparsity of the layer alone (L1 magnitude)")
    ax.set_ylabel(scan.metric)
    ax.set_title("Per-layer pruning sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(scan.points) > 8 else 1)
    fig.tight_layout()
    png_path = out_dir / "scan.png"
    fig.savefig(png_path)
    plt.close(fig)
    return [csv_path, png_path, json_path]
