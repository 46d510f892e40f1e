"""Model evaluation (toolkit.model_eval) and figures (toolkit.figures) on tiny models of our own.

The models here are deliberately minimal linear ones written against the contract in
toolkit.model, so these tests depend on no real model plugin and run in seconds on a CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from toolkit.data.images import ImageDataset, load_image_source
from toolkit.figures import image_grid, reconstruction_grid, write_model_figures
from toolkit.model import AutoencoderModel, ExampleBatch, GenerativeModel
from toolkit.model_eval import (
    ModelEvaluation,
    evaluate_model,
    flat_pixels,
    iterate_examples,
    linear_probe_accuracy,
    pca_probe_accuracy,
)

DEVICE = "cpu"


# --------------------------------------------------------------------------- tiny models


class LinearAE(AutoencoderModel):
    """Linear encoder, linear decoder with a sigmoid, trained on squared error."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.shape, self.latent_dim = shape, latent_dim
        d = math.prod(shape)
        self.enc, self.dec = nn.Linear(d, latent_dim), nn.Linear(latent_dim, d)
        self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=1e-2)
        self.checkpointed = {"enc": self.enc, "dec": self.dec, "opt": self.opt}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(z)).view(-1, *self.shape)

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        loss = ((self.reconstruct(batch.x) - batch.x) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        return {"recon_error": ((self.reconstruct(batch.x) - batch.x) ** 2).flatten(1).mean(1)}


class TinyVAE(GenerativeModel):
    """Gaussian encoder, Bernoulli-likelihood decoder, both linear."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.shape, self.latent_dim = shape, latent_dim
        d = math.prod(shape)
        self.enc, self.dec = nn.Linear(d, 2 * latent_dim), nn.Linear(latent_dim, d)
        self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=1e-2)
        self.checkpointed = {"enc": self.enc, "dec": self.dec, "opt": self.opt}

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.enc(x.flatten(1)).chunk(2, dim=-1)
        return mu, (0.5 * log_var.clamp(-8, 8)).exp()

    def _log_lik(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        logits = self.dec(z)
        target = x.flatten(1).expand(*logits.shape[:-1], -1)
        return -nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(z)).view(-1, *self.shape)

    def sample(self, n: int) -> torch.Tensor:
        return self.decode(torch.randn(n, self.latent_dim, device=self.dec.weight.device))

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, std = self._posterior(x)
        z = mu + std * torch.randn_like(mu)
        kl = 0.5 * (mu**2 + std**2 - 1 - 2 * std.log()).sum(-1)
        return self._log_lik(x, z), kl

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        recon, kl = self._terms(batch.x)
        loss = (kl - recon).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        recon, kl = self._terms(batch.x)
        err = ((self.reconstruct(batch.x) - batch.x) ** 2).flatten(1).mean(1)
        return {"elbo": recon - kl, "recon": recon, "kl": kl, "recon_error": err}

    def importance_nll(self, x: torch.Tensor, k: int) -> torch.Tensor:
        mu, std = self._posterior(x)
        q = torch.distributions.Normal(mu, std)
        z = q.sample((k,))  # [k, B, latent]
        prior = torch.distributions.Normal(0.0, 1.0)
        log_w = self._log_lik(x, z) + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
        return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def _train(model, data: ImageDataset, steps: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(data.to_float(data.x_train))
    for _ in range(steps):
        model.update(ExampleBatch(x[rng.integers(0, len(x), 128)]))
    return model


def _signals(n: int = 600, d: int = 40, seed: int = 0) -> ImageDataset:
    """Vector data: noisy sines whose frequency (1, 2 or 3 periods) is the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 1, d)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    x = 0.5 + 0.4 * np.sin(2 * np.pi * (y[:, None] + 1) * t + phase) + 0.03 * rng.standard_normal((n, d))
    x = np.clip(x, 0, 1).astype(np.float32)
    cut = int(0.8 * n)
    return ImageDataset(x[:cut], x[cut:], y[:cut].astype(np.int64), y[cut:].astype(np.int64), "sines")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is faster than two fighting over busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_image_source("digits")


@pytest.fixture(scope="module")
def vae2(digits):
    torch.manual_seed(0)
    return _train(TinyVAE(digits.shape, 2), digits)


@pytest.fixture(scope="module")
def ae16(digits):
    torch.manual_seed(0)
    return _train(LinearAE(digits.shape, 16), digits)


def _weights(model) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.clone() for m in ("enc", "dec") for k, v in model.checkpointed[m].state_dict().items()}


# --------------------------------------------------------------------------- evaluation


def test_iterate_examples_batches_and_limit(digits):
    batches = list(iterate_examples(digits, "test", DEVICE, batch_size=100, limit=250))
    assert [len(b.x) for b in batches] == [100, 100, 50]
    assert batches[0].x.dtype == torch.float32 and batches[0].y.dtype == torch.int64
    assert batches[0].x.shape[1:] == (1, 8, 8) and 0.0 <= float(batches[0].x.min()) <= float(batches[0].x.max()) <= 1.0


def test_pixel_probe_beats_chance_and_pca64_matches_it(digits):
    raw = linear_probe_accuracy(flat_pixels(digits, "train"), digits.y_train, flat_pixels(digits, "test"), digits.y_test)
    assert raw > 0.9  # chance is 0.1
    # 64 components of 64 pixels is a rotation of the same information.
    assert abs(pca_probe_accuracy(digits, 64) - raw) < 0.03
    assert pca_probe_accuracy(digits, 2) < raw - 0.2  # and 2 components lose most of it


def test_evaluate_model_generative_keys_and_determinism(vae2, digits):
    result = evaluate_model(vae2, digits, DEVICE, is_samples=50, is_limit=100)
    assert list(result.metrics) == ["elbo", "recon", "kl", "recon_error", "nll_is", "probe_accuracy", "pca_probe_accuracy"]
    assert all(np.isfinite(v) for v in result.metrics.values())
    m = result.metrics
    assert m["recon"] - m["kl"] == pytest.approx(m["elbo"], rel=1e-5)
    # The importance-sampled bound is tighter than the ELBO (on a subset, with slack).
    assert m["nll_is"] < -m["elbo"] + 1.0
    assert 0.3 < m["probe_accuracy"] <= 1.0 and m["pca_probe_accuracy"] > 0.3
    rows = dict(result.rows())
    assert rows["ELBO (nats)"] == f"{m['elbo']:.2f}"
    assert "NLL, importance sampled k=50, 100 examples (nats)" in rows
    assert "linear probe accuracy, PCA-2 pixels (baseline)" in rows
    assert result.to_dict()["metrics"] == m
    # Same seed, same numbers (the ELBO and the NLL are sampled); another seed differs.
    assert evaluate_model(vae2, digits, DEVICE, is_samples=50, is_limit=100).metrics == m
    assert evaluate_model(vae2, digits, DEVICE, is_samples=50, is_limit=100, seed=1, probe=False).metrics["elbo"] != m["elbo"]


def test_evaluate_model_autoencoder_and_unlabelled(ae16, digits):
    result = evaluate_model(ae16, digits, DEVICE)
    assert list(result.metrics) == ["recon_error", "probe_accuracy", "pca_probe_accuracy"]
    assert result.metrics["recon_error"] < 0.05
    assert result.metrics["probe_accuracy"] > 0.8
    assert dict(result.rows())["linear probe accuracy, PCA-16 pixels (baseline)"]
    unlabelled = ImageDataset(digits.x_train, digits.x_test, None, None, "digits, no labels")
    assert list(evaluate_model(ae16, unlabelled, DEVICE).metrics) == ["recon_error"]
    assert list(evaluate_model(ae16, digits, DEVICE, probe=False).metrics) == ["recon_error"]
    assert isinstance(result, ModelEvaluation)


def test_evaluation_and_figures_change_no_weight_mode_or_rng(vae2, digits, tmp_path):
    before = _weights(vae2)
    vae2.dec.eval()  # a module the model keeps in eval mode must stay so
    rng_before = torch.get_rng_state()
    evaluate_model(vae2, digits, DEVICE, is_samples=10, is_limit=50)
    write_model_figures(vae2, digits, tmp_path, DEVICE)
    assert all(torch.equal(before[k], v) for k, v in _weights(vae2).items())
    assert vae2.enc.training and not vae2.dec.training
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training run's stream is untouched
    vae2.train_mode(True)


# --------------------------------------------------------------------------- figures


def test_image_grid_shapes():
    grid = image_grid(np.random.default_rng(0).random((10, 1, 8, 8)), nrow=4)
    assert grid.shape == (3 * 9 + 1, 4 * 9 + 1, 3) and grid.dtype == np.uint8
    assert (grid[0] == 255).all() and (grid[:, 9] == 255).all()  # 1-pixel gaps
    colour = image_grid(torch.zeros(6, 3, 5, 7), nrow=6)
    assert colour.shape == (5 + 2, 6 * 8 + 1, 3) and colour[1:6, 1:8].max() == 0


def test_reconstruction_grid_images_and_vectors(ae16, digits):
    x = torch.as_tensor(digits.to_float(digits.x_test[:20]))
    assert reconstruction_grid(ae16, x).shape == (4 * 9 + 1, 16 * 9 + 1, 3)
    sines = _signals(100)
    model = LinearAE(sines.shape, 3)
    out = reconstruction_grid(model, torch.as_tensor(sines.x_test[:8]))
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


class _FakeWriter:
    def __init__(self) -> None:
        self.images: dict[str, tuple[int, ...]] = {}

    def add_image(self, tag, image, step, dataformats="CHW"):
        assert dataformats == "HWC" and image.dtype == np.uint8
        self.images[tag] = image.shape


def _check_pngs(paths, names):
    from matplotlib.image import imread

    assert sorted(p.name for p in paths) == sorted(f"{n}.png" for n in names)
    for p in paths:
        img = imread(p)
        assert img.ndim == 3 and img.std() > 0.02, p  # something drawn, not a blank page


def test_figures_2d_generative(vae2, digits, tmp_path):
    writer = _FakeWriter()
    paths = write_model_figures(vae2, digits, tmp_path / "figs", DEVICE, tb_writer=writer, step=7)
    names = ["reconstructions", "samples", "traversals", "latent_scatter", "manifold"]
    _check_pngs(paths, names)
    assert sorted(writer.images) == sorted(f"figures/{n}" for n in names)


def test_figures_16d_autoencoder(ae16, digits, tmp_path):
    _check_pngs(write_model_figures(ae16, digits, tmp_path, DEVICE), ["reconstructions", "traversals"])


def test_figures_vector_data(tmp_path):
    sines = _signals()
    torch.manual_seed(0)
    model = _train(TinyVAE(sines.shape, 2), sines, steps=200)
    names = ["reconstructions", "samples", "traversals", "latent_scatter", "manifold"]
    _check_pngs(write_model_figures(model, sines, tmp_path, DEVICE), names)
