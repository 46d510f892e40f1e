"""Every registered model keeps the model contract (:mod:`toolkit.model`).

Parametrised over the ``toolkit.models`` entry points, so a new model (first-party or not)
is checked as soon as it is installed: shapes of encode/decode/reconstruct/sample, finite
metrics from one update, ``[B]`` tensors from evaluate, an exact state-dict round trip and
determinism under ``torch.manual_seed``. Inputs are random 1x8x8 images (the shape of the
``digits`` source), so nothing here depends on a dataset.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from typing import Any

import pytest
import torch

from toolkit.errors import ToolkitError
from toolkit.model import AutoencoderModel, ClassifierModel, DataSpec, ExampleBatch, GenerativeModel, Model
from toolkit.registry import MODELS, ModelSpec, registry

DIGITS = DataSpec(shape=(1, 8, 8), num_classes=10, source="digits")
VECTORS = DataSpec(shape=(40,), num_classes=10, source="mnist1d")
BATCH = 16


#: Small networks: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread_module")


def _cases() -> list[Any]:
    cases = []
    for spec in sorted(registry.models(), key=lambda s: s.name):
        encoders = [None]
        if "encoder" in {f.name for f in dataclasses.fields(spec.config)}:
            encoders.append("conv")
        for encoder in encoders:
            label = spec.name if encoder is None else f"{spec.name}-{encoder}"
            cases.append(pytest.param(spec, encoder, id=label))
    return cases


CASES = _cases()


def build(spec: ModelSpec, encoder: str | None, seed: int = 0, data: DataSpec = DIGITS) -> Model:
    torch.manual_seed(seed)
    config = spec.config() if encoder is None else spec.config(encoder=encoder)
    return spec.build(config, data, "cpu")


def batch(seed: int = 1) -> ExampleBatch:
    g = torch.Generator().manual_seed(seed)
    return ExampleBatch(torch.rand(BATCH, *DIGITS.shape, generator=g), torch.randint(10, (BATCH,), generator=g))


def flat_tensors(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor (and number) in a nested state dict, by path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, dict):
        for key, value in state.items():
            out.update(flat_tensors(value, f"{prefix}{key}."))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            out.update(flat_tensors(value, f"{prefix}{i}."))
    elif isinstance(state, torch.Tensor):
        out[prefix] = state.detach().clone()
    elif isinstance(state, (int, float, bool)):
        out[prefix] = torch.tensor(state)
    return out


def assert_same_state(a: Model, b: Model) -> None:
    sa, sb = flat_tensors(a.state_dict()), flat_tensors(b.state_dict())
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def outputs(model: Model, data: ExampleBatch, seed: int = 5) -> dict[str, torch.Tensor]:
    """Everything the model computes for ``data`` under a fixed seed."""
    torch.manual_seed(seed)
    out = {f"eval.{k}": v for k, v in model.evaluate(data).items()}
    if isinstance(model, AutoencoderModel):
        out["encode"] = model.encode(data.x)
        out["reconstruct"] = model.reconstruct(data.x)
    if isinstance(model, GenerativeModel):
        out["sample"] = model.sample(4)
        out["nll"] = model.importance_nll(data.x, 3)
    return out


def test_every_first_party_model_is_registered() -> None:
    names = {spec.name for spec in registry.models()}
    assert {"ae", "dae", "mae", "vae", "beta-vae", "categorical-vae", "vgg11", "cnn", "mlp"} <= names


@pytest.mark.parametrize("name", sorted({e.name for e in registry.entries(MODELS)}))
def test_factory_imports(name: str) -> None:
    """Every registered model (broken ones included: ``CASES`` holds only those that load)
    loads, matches its entry-point name and api_version, and its factory imports."""
    for entry in (e for e in registry.entries(MODELS) if e.name == name):
        assert entry.check() is None, f"{name} ({entry.distribution}): {entry.reason}"


def test_model_spec_modules_import_no_torch() -> None:
    """``toolkit list`` imports every spec module: they must stay light."""
    modules = sorted({e.value.partition(":")[0] for e in registry.entries(MODELS)})
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize(("spec", "encoder"), CASES)
def test_model_keeps_the_contract(spec: ModelSpec, encoder: str | None) -> None:
    assert spec.api_version == 1
    assert spec.config().batch_size > 0
    model = build(spec, encoder)
    assert isinstance(model, Model)
    if spec.kind == "generative":
        assert isinstance(model, GenerativeModel)
    if spec.kind in ("autoencoder", "generative"):
        assert isinstance(model, AutoencoderModel)
    data = batch()

    if isinstance(model, AutoencoderModel):
        z = model.encode(data.x)
        assert z.shape == (BATCH, model.latent_dim)
        x_hat = model.decode(z)
        assert x_hat.shape == data.x.shape and 0.0 <= x_hat.min() and x_hat.max() <= 1.0
        assert model.reconstruct(data.x).shape == data.x.shape
    if isinstance(model, GenerativeModel):
        samples = model.sample(5)
        assert samples.shape == (5, *DIGITS.shape) and 0.0 <= samples.min() and samples.max() <= 1.0
        nll = model.importance_nll(data.x, 7)
        assert nll.shape == (BATCH,) and torch.isfinite(nll).all()

    # One update: scalar, finite metrics.
    metrics = model.update(data)
    assert metrics, "update returns at least one metric"
    for name, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, name
        assert torch.isfinite(value), name

    # Evaluate: [B] tensors, and no weight moves.
    before = flat_tensors(model.state_dict())
    for name, value in model.evaluate(data).items():
        assert value.shape == (BATCH,), name
        assert torch.isfinite(value).all(), name
    after = flat_tensors(model.state_dict())
    assert all(torch.equal(before[k], after[k]) for k in before)
    if isinstance(model, AutoencoderModel):
        assert "recon_error" in model.evaluate(data)


@pytest.mark.parametrize(("spec", "encoder"), CASES)
def test_state_dict_round_trip_continues_exactly(spec: ModelSpec, encoder: str | None) -> None:
    a = build(spec, encoder, seed=0)
    for i in range(3):
        a.update(batch(seed=10 + i))
    b = build(spec, encoder, seed=99)  # different weights until loaded
    # Through bytes, as a checkpoint file goes: weights_only proves the state is plain tensors
    # and Python values, and nothing stays shared with ``a`` (an optimiser's state_dict holds
    # its live moment tensors, which load_state_dict would otherwise adopt as they are).
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert_same_state(a, b)
    data = batch()
    out_a, out_b = outputs(a, data), outputs(b, data)
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key
    # The optimiser's moments and any schedule came along: the next update matches too.
    torch.manual_seed(3)
    metrics_a = a.update(batch(seed=20))
    torch.manual_seed(3)
    metrics_b = b.update(batch(seed=20))
    for key in metrics_a:
        assert torch.equal(metrics_a[key], metrics_b[key]), key
    assert_same_state(a, b)


@pytest.mark.parametrize(("spec", "encoder"), CASES)
def test_same_seed_same_model_and_first_update(spec: ModelSpec, encoder: str | None) -> None:
    runs = []
    for _ in range(2):
        model = build(spec, encoder, seed=7)
        metrics = model.update(batch())
        runs.append((model, metrics))
    (a, ma), (b, mb) = runs
    assert ma.keys() == mb.keys()
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key
    assert_same_state(a, b)


@pytest.mark.parametrize(("spec", "encoder"), [c for c in CASES if c.values[1] == "conv"])
def test_conv_encoder_on_vectors_is_one_clear_sentence(spec: ModelSpec, encoder: str) -> None:
    with pytest.raises(ToolkitError, match=r"encoder=conv needs images \(C, H, W\); mnist1d gives vectors of shape \(40,\); use encoder=mlp"):
        build(spec, encoder, data=VECTORS)


@pytest.mark.parametrize(("spec", "encoder"), [c for c in CASES if c.values[1] is None])
def test_mlp_variant_trains_on_vectors(spec: ModelSpec, encoder: None) -> None:
    try:
        model = build(spec, encoder, data=VECTORS)
    except ToolkitError as error:
        # Convolutional classifiers (vgg11, cnn) refuse vectors by design, in one sentence.
        assert spec.kind == "classifier" and "needs images" in str(error), error
        pytest.skip(str(error))
    labels = torch.randint(10, (BATCH,)) if isinstance(model, ClassifierModel) else None
    metrics = model.update(ExampleBatch(torch.rand(BATCH, 40), labels))
    assert all(torch.isfinite(v) for v in metrics.values())
    if isinstance(model, AutoencoderModel):
        assert model.reconstruct(torch.rand(3, 40)).shape == (3, 40)
