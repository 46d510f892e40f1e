"""The template model's own checks against the model contract (toolkit.model): shapes of
encode/decode, tensor metrics from update, per-example metrics from evaluate that move no
weight, and a checkpoint round trip that continues exactly."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from toolkit.config import apply_overrides, validate
from toolkit.errors import ToolkitError
from toolkit.model import AutoencoderModel, DataSpec, ExampleBatch, Model
from toolkit_plugin_template.spec import LINEAR_AE_TEMPLATE, LinearAEConfig

IMAGES = DataSpec(shape=(1, 8, 8), num_classes=10, source="digits")  # the `digits` source's shape
VECTORS = DataSpec(shape=(40,), num_classes=10, source="mnist1d")
BATCH = 16


def small_model(seed: int = 0, data: DataSpec = IMAGES) -> Model:
    torch.manual_seed(seed)  # the framework seeds before it calls the factory
    config = apply_overrides(LinearAEConfig(), {"latent_dim": "4"})
    validate(config)
    return LINEAR_AE_TEMPLATE.build(config, data, "cpu")


def batch(seed: int = 1, data: DataSpec = IMAGES) -> ExampleBatch:
    g = torch.Generator().manual_seed(seed)
    return ExampleBatch(torch.rand(BATCH, *data.shape, generator=g), torch.randint(10, (BATCH,), generator=g))


def state_tensors(model: Model) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state dict, by path (the optimiser's included)."""
    out: dict[str, torch.Tensor] = {}

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{prefix}{i}.")
        elif isinstance(value, torch.Tensor):
            out[prefix] = value.detach().clone()

    walk(model.state_dict(), "")
    return out


def test_spec_is_complete() -> None:
    spec = LINEAR_AE_TEMPLATE
    assert spec.name == "template-linear-ae" and spec.kind == "autoencoder" and spec.description
    assert spec.api_version == 1
    assert spec.config().batch_size > 0  # the model loop samples minibatches of this size


def test_spec_module_imports_no_torch() -> None:
    """`toolkit list` imports the spec module: it must stay light."""
    code = "import sys, toolkit_plugin_template.spec; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("data", [IMAGES, VECTORS], ids=["images", "vectors"])
def test_encode_decode_shapes(data: DataSpec) -> None:
    model = small_model(data=data)
    assert isinstance(model, AutoencoderModel)
    x = batch(data=data).x
    z = model.encode(x)
    assert z.shape == (BATCH, model.latent_dim)
    x_hat = model.decode(z)
    assert x_hat.shape == x.shape and 0.0 <= x_hat.min() and x_hat.max() <= 1.0
    assert model.reconstruct(x).shape == x.shape


def test_update_returns_scalar_tensor_metrics_and_learns() -> None:
    model = small_model()
    data = batch()
    first = model.update(data)
    assert set(first) == {"loss"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and torch.isfinite(v) for v in first.values())
    for _ in range(50):
        last = model.update(data)
    assert last["loss"] < first["loss"]


def test_evaluate_gives_per_example_metrics_and_moves_no_weight() -> None:
    model = small_model()
    model.update(batch())
    before = state_tensors(model)
    metrics = model.evaluate(batch(seed=2))
    assert "recon_error" in metrics  # every autoencoder reports it
    for name, value in metrics.items():
        assert value.shape == (BATCH,), name
        assert torch.isfinite(value).all(), name
    after = state_tensors(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_round_trip_continues_exactly() -> None:
    model = small_model(seed=0)
    for i in range(3):
        model.update(batch(seed=10 + i))
    buffer = io.BytesIO()  # through bytes, as a checkpoint file goes
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = small_model(seed=1)  # different weights until loaded
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = batch().x
    assert torch.equal(model.encode(x), other.encode(x))
    # The optimiser's moments came along: the next update matches too.
    assert torch.equal(model.update(batch(seed=20))["loss"], other.update(batch(seed=20))["loss"])
    a, b = state_tensors(model), state_tensors(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_settings_that_cannot_work_are_one_sentence() -> None:
    with pytest.raises(ValueError, match="latent_dim"):
        LinearAEConfig(latent_dim=0).validate()
    with pytest.raises(ToolkitError, match=r"latent_dim=100 exceeds the 64 values of each example of digits"):
        LINEAR_AE_TEMPLATE.build(LinearAEConfig(latent_dim=100), IMAGES, "cpu")
