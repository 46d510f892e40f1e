"""What a trained model is worth on held-out data: test metrics, likelihood, linear probes.

:func:`evaluate_model` composes everything a model's base class allows into one
:class:`ModelEvaluation` (an ordered table of named metrics with units):

* every :class:`~toolkit.model.Model`: the mean of its per-example ``evaluate`` metrics over
  the test split;
* :class:`~toolkit.model.GenerativeModel`: the importance-sampled negative log-likelihood;
* :class:`~toolkit.model.AutoencoderModel` on labelled data: the accuracy of a linear probe
  (logistic regression) on the latents, next to the same probe on as many principal
  components of the raw pixels, the baseline a useful representation has to beat;
* :class:`~toolkit.model.ClassifierModel`: its size, as parameters, non-zero parameters (which
  pruning lowers) and MiB of float32 weights.

Evaluation never changes a weight, always runs in evaluation mode without gradients, puts
the model's mode back afterwards, and draws its randomness from a private generator state
seeded with ``seed``, so evaluating in the middle of training neither perturbs the training
run's random stream nor varies from one call to the next.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from toolkit.errors import ToolkitError
from toolkit.model import AutoencoderModel, ClassifierModel, ExampleBatch, GenerativeModel, Model

if TYPE_CHECKING:  # the data module imports nothing from here; keep importing this one cheap
    from toolkit.data.images import ImageDataset

Split = Literal["train", "test"]

#: Examples per forward pass of importance sampling: a batch makes ``batch * k`` decoder
#: passes at once, so the batch shrinks as ``k`` grows to keep memory bounded.
_IS_EXAMPLES_PER_PASS = 16_384


# --------------------------------------------------------------------------- data access


def _split_arrays(data: ImageDataset, split: Split) -> tuple[np.ndarray, np.ndarray | None]:
    if split == "train":
        return data.x_train, data.y_train
    if split == "test":
        return data.x_test, data.y_test
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def has_labels(data: ImageDataset) -> bool:
    """True when both splits carry class labels (what the probes need)."""
    return data.y_train is not None and data.y_test is not None


def iterate_examples(
    data: ImageDataset,
    split: Split,
    device: torch.device | str,
    batch_size: int = 512,
    limit: int | None = None,
) -> Iterator[ExampleBatch]:
    """The first ``limit`` (default: all) examples of ``split`` in order, as float32 batches
    in ``[0, 1]`` on ``device``, with int64 labels when the dataset has them."""
    x, y = _split_arrays(data, split)
    n = len(x) if limit is None else min(limit, len(x))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        xb = torch.as_tensor(data.to_float(x[start:stop]), dtype=torch.float32, device=device)
        yb = None if y is None else torch.as_tensor(np.asarray(y[start:stop]), dtype=torch.int64, device=device)
        yield ExampleBatch(xb, yb)


def flat_pixels(data: ImageDataset, split: Split) -> np.ndarray:
    """Every example of ``split`` as a float32 row ``[N, prod(shape)]`` in ``[0, 1]``."""
    x, _ = _split_arrays(data, split)
    return np.asarray(data.to_float(x), dtype=np.float32).reshape(len(x), -1)


# --------------------------------------------------------------------------- modes and RNG


def _modules(model: Model) -> list[torch.nn.Module]:
    return [obj for obj in model.checkpointed.values() if isinstance(obj, torch.nn.Module)]


@contextlib.contextmanager
def eval_mode(model: Model) -> Iterator[None]:
    """Evaluation mode and no gradients inside; every checkpointed module gets back exactly
    the training flag it had (a model without modules is put back in training mode, the
    state the model loop keeps it in)."""
    modules = _modules(model)
    # Remember each module's own flag: a model may keep, say, a frozen target net in eval
    # mode while training, and restoring everything to True would silently change it.
    flags = [m.training for m in modules]
    model.train_mode(False)
    try:
        with torch.no_grad():
            yield
    finally:
        if modules:
            model.train_mode(any(flags))
            for module, flag in zip(modules, flags):
                module.train(flag)
        else:
            model.train_mode(True)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str) -> Iterator[None]:
    """Torch's global generators seeded with ``seed`` inside, their previous state restored
    after, so evaluation is reproducible and leaves the training run's random stream alone."""
    dev = torch.device(device)
    cuda_devices: list[int] = []
    if dev.type == "cuda" or (torch.cuda.is_available() and torch.cuda.is_initialized()):
        cuda_devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- metrics


def test_metrics(
    model: Model, data: ImageDataset, device: torch.device | str, limit: int | None = None
) -> dict[str, float]:
    """Mean over the test split (first ``limit`` examples) of every per-example metric that
    ``model.evaluate`` returns, in the order the model gives them."""
    sums: dict[str, float] = {}
    count = 0
    with eval_mode(model):
        for batch in iterate_examples(data, "test", device, limit=limit):
            out = model.evaluate(batch)
            b = len(batch.x)
            for name, value in out.items():
                v = value.detach().float()
                # Per-example [B] tensors are the contract; a scalar is taken as a batch mean.
                total = v.sum() if v.ndim > 0 else v * b
                sums[name] = sums.get(name, 0.0) + float(total)
            count += b
    if count == 0:
        raise ToolkitError(f"The test split of {data.source or 'the dataset'} is empty; nothing to evaluate.")
    return {name: total / count for name, total in sums.items()}


test_metrics.__test__ = False  # type: ignore[attr-defined]  # pytest: not a test despite its name


def encode_split(
    model: AutoencoderModel,
    data: ImageDataset,
    split: Split,
    device: torch.device | str,
    limit: int | None = None,
) -> np.ndarray:
    """Latents ``[N, latent_dim]`` (float32) of ``split`` (its first ``limit`` examples)."""
    chunks: list[np.ndarray] = []
    with eval_mode(model):
        for batch in iterate_examples(data, split, device, limit=limit):
            chunks.append(model.encode(batch.x).detach().float().cpu().numpy())
    if not chunks:
        return np.zeros((0, model.latent_dim), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def linear_probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
) -> float:
    """Test accuracy in ``[0, 1]`` of a multinomial logistic regression fit on the training
    features (standardised with training statistics, which puts latents of any scale on an
    equal footing and lets L-BFGS converge quickly)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr = np.asarray(train_features, dtype=np.float64).reshape(len(train_features), -1)
    xte = np.asarray(test_features, dtype=np.float64).reshape(len(test_features), -1)
    ytr, yte = np.asarray(train_labels), np.asarray(test_labels)
    if len(np.unique(ytr)) < 2:
        raise ToolkitError("A linear probe needs at least two classes among the training labels.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    with warnings.catch_warnings(), _one_blas_thread():
        # A probe a hair short of the optimum is still a fair probe; don't spam the user.
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(xtr, ytr)
        predictions = probe.predict(xte)
    return float(np.mean(predictions == yte))


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Single-threaded BLAS for the probes. Their problems are small (thousands of rows,
    at most a few thousand columns: well under a second on one core), while evaluation runs
    beside training threads; a BLAS pool spinning on every core then slows both by an order
    of magnitude (measured: 5 s instead of 0.1 s for the MNIST-5k probe on 2 busy cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _pca_components(data: ImageDataset, k: int) -> int:
    n_train = len(data.x_train)
    return max(1, min(k, int(np.prod(data.shape)), n_train))


def pca_probe_accuracy(data: ImageDataset, k: int, seed: int = 0) -> float:
    """Accuracy of the linear probe on the top ``k`` principal components of the raw pixels
    (PCA fit on the training split; ``k`` is capped to the pixel and example counts)."""
    from sklearn.decomposition import PCA

    if not has_labels(data):
        raise ToolkitError(f"{data.source or 'The dataset'} has no labels, so it cannot be probed.")
    train, test = flat_pixels(data, "train"), flat_pixels(data, "test")
    with _one_blas_thread():
        pca = PCA(n_components=_pca_components(data, k), random_state=seed).fit(train)
        train, test = pca.transform(train), pca.transform(test)
    return linear_probe_accuracy(train, data.y_train, test, data.y_test, seed=seed)


def importance_nll(
    model: GenerativeModel, data: ImageDataset, device: torch.device | str, k: int, limit: int | None = None
) -> float:
    """Mean importance-sampled ``-log p(x)`` (nats per example) over the first ``limit``
    test examples, with ``k`` samples each."""
    batch_size = max(1, _IS_EXAMPLES_PER_PASS // max(1, k))
    total, count = 0.0, 0
    with eval_mode(model):
        for batch in iterate_examples(data, "test", device, batch_size=batch_size, limit=limit):
            total += float(model.importance_nll(batch.x, k).detach().double().sum())
            count += len(batch.x)
    if count == 0:
        raise ToolkitError(f"The test split of {data.source or 'the dataset'} is empty; nothing to evaluate.")
    return total / count


def _effective_parameters(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Every parameter of ``module`` as the forward pass sees it.

    ``torch.nn.utils.prune`` replaces a pruned ``weight`` by a ``weight_orig`` parameter and a
    ``weight_mask`` buffer, and recomputes ``weight`` (a plain tensor) from them; counting
    ``weight_orig`` would miss every pruned zero, so where such a pair exists the masked
    tensor is counted instead.
    """
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            masked = getattr(sub, name[: -len("_orig")], None) if name.endswith("_orig") else None
            yield masked if isinstance(masked, torch.Tensor) else param


def parameter_counts(model: Model) -> dict[str, float]:
    """``parameters`` (every entry of the checkpointed modules' parameters), ``nonzero_parameters``
    (those not exactly zero, which pruning lowers) and ``size_mib`` (the parameters stored as
    dense float32, in MiB)."""
    total = nonzero = 0
    seen: set[int] = set()
    for module in _modules(model):
        for tensor in _effective_parameters(module):
            if id(tensor) in seen:  # a tensor shared between modules counts once
                continue
            seen.add(id(tensor))
            total += tensor.numel()
            nonzero += int(torch.count_nonzero(tensor.detach()))
    return {"parameters": float(total), "nonzero_parameters": float(nonzero), "size_mib": total * 4 / 2**20}


# --------------------------------------------------------------------------- the table

#: Display names (with units) of the metrics models conventionally report and this module adds.
METRIC_LABELS: dict[str, str] = {
    "recon_error": "reconstruction error (MSE per value)",
    "elbo": "ELBO (nats)",
    "recon": "reconstruction log-likelihood (nats)",
    "kl": "KL(q(z|x) || p(z)) (nats)",
    "nll_is": "NLL, importance sampled (nats)",
    "probe_accuracy": "linear probe accuracy, latents",
    "pca_probe_accuracy": "linear probe accuracy, PCA pixels",
    "accuracy": "accuracy",
    "parameters": "parameters",
    "nonzero_parameters": "non-zero parameters",
    "size_mib": "size (MiB as float32)",
}

#: Metrics that count things: shown as whole numbers with thousands separators.
_COUNTS = ("parameters", "nonzero_parameters")


def _format(name: str, value: float) -> str:
    if not np.isfinite(value):
        return str(value)
    if name in _COUNTS:
        return f"{int(round(value)):,}"
    if name == "size_mib":
        return f"{value:.4g}"
    if "accuracy" in name:
        return f"{value:.3f}"
    if name in ("recon_error",) or "mse" in name or "error" in name:
        return f"{value:.4g}"  # small values: significant digits, not decimals
    return f"{value:.2f}"


@dataclass
class ModelEvaluation:
    """Held-out metrics of one model, in the order a table shows them.

    ``metrics`` maps stable machine names (``elbo``, ``nll_is``, ``probe_accuracy``, ...) to
    values; ``labels`` maps some of them to display names with units and settings (for
    example ``"NLL, importance sampled k=100 (nats)"``); others fall back to
    :data:`METRIC_LABELS` or their own name.
    """

    metrics: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)

    def label(self, name: str) -> str:
        """The display name of metric ``name``."""
        return self.labels.get(name) or METRIC_LABELS.get(name, name)

    def rows(self) -> list[tuple[str, str]]:
        """``(display name, formatted value)`` per metric, in order, e.g. ``("ELBO (nats)", "-65.21")``."""
        return [(self.label(name), _format(name, value)) for name, value in self.metrics.items()]

    def score(self) -> tuple[str, float]:
        """The one number where higher is better that sweeps rank models by (:func:`model_score`)."""
        return model_score(self.metrics, self.label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"metrics": {name: value}, "labels": {name: display name}}``."""
        return {
            "metrics": {name: float(v) for name, v in self.metrics.items()},
            "labels": {name: self.label(name) for name in self.metrics},
        }


def model_score(metrics: dict[str, float], label: Any = None) -> tuple[str, float]:
    """The one number where higher is better that sweeps rank models by and training keeps
    ``checkpoints/best.pt`` by: test accuracy for classifiers, minus M's NLL for world models,
    the ELBO for VAEs, else minus the reconstruction error; with its display name (``label``
    maps a metric to its display name)."""
    label = label or (lambda name: METRIC_LABELS.get(name, name))
    if "mdn_nll" in metrics:  # a world model is worth its forecasts, not V's reconstructions
        return "minus test NLL of z(t+1) per latent dim (nats)", -metrics["mdn_nll"]
    for name in ("accuracy", "elbo"):
        if name in metrics:
            return f"test {label(name)}", metrics[name]
    if "recon_error" in metrics:
        return "minus test reconstruction error (MSE per value)", -metrics["recon_error"]
    name, value = next(iter(metrics.items()))
    return f"test {label(name)}", value


def evaluate_model(
    model: Model,
    data: ImageDataset,
    device: torch.device | str,
    is_samples: int = 100,
    is_limit: int = 500,
    probe: bool = True,
    seed: int = 0,
) -> ModelEvaluation:
    """Everything the model's base class allows, on the test split.

    * the mean of each metric ``model.evaluate`` gives (all test examples);
    * ``nll_is``: importance-sampled NLL with ``is_samples`` samples over the first
      ``is_limit`` test examples, for a :class:`GenerativeModel` (skipped when ``is_samples`` is 0);
    * ``probe_accuracy`` and ``pca_probe_accuracy``: linear probes on the latents and on as
      many principal components of the pixels, for an :class:`AutoencoderModel` on labelled
      data when ``probe`` is set;
    * ``parameters``, ``nonzero_parameters`` and ``size_mib`` (:func:`parameter_counts`) for a
      :class:`ClassifierModel`, whose ``accuracy`` and ``loss`` come from its own metrics.

    Changes no weight; the result depends only on the model, the data and ``seed``.
    """
    metrics: dict[str, float] = {}
    labels: dict[str, str] = {}
    with seeded(seed, device):
        metrics.update(test_metrics(model, data, device))
        if isinstance(model, GenerativeModel) and is_samples > 0:
            metrics["nll_is"] = importance_nll(model, data, device, k=is_samples, limit=is_limit)
            n_is = min(is_limit, len(data.x_test))
            labels["nll_is"] = f"NLL, importance sampled k={is_samples}, {n_is} examples (nats)"
        if probe and isinstance(model, AutoencoderModel) and has_labels(data):
            train = encode_split(model, data, "train", device)
            test = encode_split(model, data, "test", device)
            metrics["probe_accuracy"] = linear_probe_accuracy(train, data.y_train, test, data.y_test, seed=seed)
            labels["probe_accuracy"] = f"linear probe accuracy, {model.latent_dim}-D latents"
            k = _pca_components(data, model.latent_dim)
            metrics["pca_probe_accuracy"] = pca_probe_accuracy(data, k, seed=seed)
            labels["pca_probe_accuracy"] = f"linear probe accuracy, PCA-{k} pixels (baseline)"
        if isinstance(model, ClassifierModel):
            if "loss" in metrics:
                labels["loss"] = "loss, -log p(true class) (nats)"
            metrics.update(parameter_counts(model))
    return ModelEvaluation(metrics, labels)
