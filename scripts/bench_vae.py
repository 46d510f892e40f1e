"""Benchmark: the toolkit's VAEs on mnist-5k, side by side with reference VAEs, in one run.

What is trained
---------------
Every row trains on ``mnist-5k`` (5,000 28x28 MNIST digits; the seed splits them 4,000 train
/ 1,000 test) for the same number of gradient steps (``--steps``) with the same batch size
(``--batch-size``, 128), Adam learning rate (``--lr``, 1e-3) and Bernoulli likelihood:

* the grid, trained through ``toolkit.training.start_training`` exactly as ``toolkit train``
  does: ``vae`` (``encoder=mlp``, hidden 512-256), ``vae`` (``encoder=conv``) and ``beta-vae``
  (beta 4, mlp), each at ``latent_dim`` 2 and 16 under the priors ``normal:0,1`` and
  ``normal:1,2`` (N(1, 2^2));
* the matched rows: our ``vae`` at the reference's architecture (``hidden_sizes=400``:
  784-400-z MLP encoder, z-400-784 decoder, ReLU) with the N(0, 1) prior, at both latent
  sizes;
* the references, at the same latent sizes and the N(0, 1) prior, the only prior they have:
  - ``ref-pytorch``: the classic PyTorch-examples VAE (784-400-z, ReLU, sigmoid Bernoulli
    decoder, BCE summed over pixels and over the batch, plain ``torch.optim.Adam``), written
    here from its description. Its loss is summed over the batch where ours is averaged;
    Adam is invariant to that scale (up to its epsilon), so the learning rate is the same.
  - ``ref-pythae``: the ``pythae`` library's ``VAE`` (its ``forward`` and loss: BCE on
    sigmoid outputs summed over pixels, KL, mean over the batch) with a 784-400-z encoder
    and decoder built on pythae's ``BaseEncoder`` / ``BaseDecoder``, since pythae's default
    MLP is 784-512-z. pythae 0.1.2 installs beside torch 2.13 with
    ``pip install --no-deps pythae`` and needs nothing else for its models: its declared
    dependencies are either present already or (``tqdm``, and the ``dataclasses`` 0.6
    backport of Python 3.6's standard module, useless on 3.11) used only by its trainers,
    which this benchmark does not use. Without pythae the row is skipped with the import
    error, and ``ref-pytorch`` remains the reference.

Both references are trained by the same plain loop: a minibatch, the reference's own loss,
``zero_grad``, ``backward``, Adam ``step``. They draw minibatches with the toolkit's
``MinibatchSampler`` seeded like our run, so with the same seed they see the very same
minibatches from the same split, on the same device, and their weights are initialised
after ``torch.manual_seed(seed)`` as ours are. (The two references create the same layers in
the same order, so they start from the same weights and differ only in implementation; their
metrics agree to a fraction of a nat.)

What is measured
----------------
* Training throughput: examples per second of the gradient-step phase only (sampling a
  minibatch and one update), timed apart from evaluation, over 20 windows of ``steps / 20``
  steps. Ours is what the toolkit's loop logs in ``metrics.jsonl`` (steps/s per window of
  ``log_every`` steps; the run evaluates only after its last step and saves its checkpoint
  outside the timed windows); a reference's loop times the same windows. Both sides run in
  this one process with ``torch.set_num_threads(--threads)``, 1 by default. The matched row
  and the references of one latent size train in lockstep: window 1 of each in turn, then
  window 2 in the opposite order, and so on. Ours is advanced by ``start_training`` for the
  first window and ``resume_training`` for each next one (exact: weights, optimiser,
  sampler and random streams come back from the checkpoint, so it trains exactly as one
  unbroken run; its timing includes the first step after each reload); a reference keeps
  its own random stream. Another process stealing the CPU for a while then slows adjacent
  windows of both sides alike: the speed target compares the median, over windows, of ours
  / the reference's in the same window. The table gives each row's median window; the CSV
  also the whole-phase mean and every window. The other rows train alone, in one go.
* Held-out metrics, all from ``toolkit.model_eval.evaluate_model`` with evaluation seed 0:
  test ELBO, its reconstruction term E_q[log p(x|z)] and KL(q(z|x) || p(z)) (nats per
  example, one posterior sample, all 1,000 test examples), the importance-sampled NLL
  (IWAE estimator, Burda et al. 2016: ``--is-samples`` samples on the first
  ``--is-examples`` test examples), the linear-probe accuracy of the latent means and the
  same probe on as many principal components of the pixels. Our runs go through
  ``evaluate_model_run``; a reference is wrapped in :class:`EvaluatedReference`, a
  ``GenerativeModel`` whose per-example ELBO (Bernoulli log-likelihood of the decoder's
  logits summed over pixels, closed-form Gaussian KL) and IWAE estimate are written to
  match the vae plugin's, drawing the same random numbers in the same order. The run checks
  that claim: the weights of our matched run are copied into the PyTorch-examples module
  and evaluated both ways; the printed differences should be float rounding.

Targets (printed with PASS/FAIL for each reference and latent size): our matched ``vae``'s
test ELBO is at most 1 nat below the reference's, and its training throughput is at least
the reference's. A beta-VAE's ELBO is lower by design (it trains on beta * KL).

Writes under ``--out`` (default ``runs/bench-vae``): ``runs/<row>-s<seed>/`` (our run
directories; a reference's weights and evaluation), ``results.csv`` (one line per row and
seed) and ``results.md`` (the table and the targets). The 2-D latent scatter and the decoded
2-D manifold of the conv VAE (latent 2, N(0, 1), seed 0) are copied into ``docs/figures/``
for the README.

    python scripts/bench_vae.py                                   # everything, ~20 min on 2 cores
    python scripts/bench_vae.py --steps 300 --is-samples 20 --rows 'vae-mlp400/*' 'ref-*'
    python scripts/bench_vae.py --seeds 3 --rows 'vae-conv/*'
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import platform
import re
import shutil
import statistics
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.data.images import ImageDataset, load_image_source
from toolkit.loops.model import MinibatchSampler
from toolkit.model import ExampleBatch, GenerativeModel
from toolkit.model_eval import evaluate_model
from toolkit.runs import read_metrics
from toolkit.session import open_trained_run
from toolkit.training import evaluate_model_run, resume_training, start_training

DATASET = "mnist-5k"
REPO = Path(__file__).resolve().parents[1]
LATENT_DIMS = (2, 16)
PRIORS = ("normal:0,1", "normal:1,2")
REFERENCE_PRIOR = "normal:0,1"
#: Hidden width of the references (the PyTorch-examples VAE's 784-400-20 layout).
REFERENCE_HIDDEN = 400
#: Timing windows per run: throughput is measured over ``steps // WINDOWS`` steps at a time.
WINDOWS = 20
#: The row whose figures go into the README, and the figures taken from it.
README_ROW = "vae-conv/z2/normal:0,1"
README_FIGURES = {"latent_scatter.png": "vae-conv-z2-latent-scatter.png", "manifold.png": "vae-conv-z2-manifold.png"}
#: Target: our ELBO may be at most this many nats below the reference's.
ELBO_TOLERANCE = 1.0
#: Decoded values per chunk of importance samples; bounds memory, and equals the vae plugin's
#: chunk so that both estimators draw their noise in chunks of the same shape.
IS_CHUNK_VALUES = 2**20
LOG_2PI = math.log(2.0 * math.pi)

Source = Literal["toolkit", "pytorch-examples", "pythae"]


# --------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Row:
    """One line of the table: a model, an architecture, a latent size and a prior."""

    name: str
    source: Source
    architecture: str
    latent_dim: int
    prior: str
    #: The toolkit model and its ``--set`` items (toolkit rows only).
    model: str = ""
    settings: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The row's name as a directory name."""
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-")


def toolkit_row(family: str, model: str, architecture: str, latent: int, prior: str, *settings: str) -> Row:
    return Row(f"{family}/z{latent}/{prior}", "toolkit", architecture, latent, prior, model,
               (*settings, f"latent_dim={latent}", f"prior={prior}", "likelihood=bernoulli"))


def matched_row(latent: int) -> Row:
    return toolkit_row("vae-mlp400", "vae", f"mlp {REFERENCE_HIDDEN}", latent, REFERENCE_PRIOR,
                       "encoder=mlp", f"hidden_sizes={REFERENCE_HIDDEN}")


def reference_row(source: Source, latent: int) -> Row:
    short = "pytorch" if source == "pytorch-examples" else source
    return Row(f"ref-{short}/z{latent}/{REFERENCE_PRIOR}", source, f"mlp {REFERENCE_HIDDEN}", latent, REFERENCE_PRIOR)


def all_rows() -> list[Row]:
    """Every row in the order they run: the matched comparison first (at each latent size
    our row and the references train in lockstep, see :func:`run_group`), then the grid."""
    rows: list[Row] = []
    for latent in LATENT_DIMS:
        rows += [reference_row("pytorch-examples", latent), matched_row(latent), reference_row("pythae", latent)]
    for latent in LATENT_DIMS:
        for prior in PRIORS:
            rows.append(toolkit_row("vae-mlp", "vae", "mlp 512-256", latent, prior, "encoder=mlp"))
            rows.append(toolkit_row("vae-conv", "vae", "conv", latent, prior, "encoder=conv"))
            rows.append(toolkit_row("beta-vae", "beta-vae", "mlp 512-256, beta 4", latent, prior, "encoder=mlp"))
    return rows


def select_rows(rows: list[Row], patterns: list[str] | None) -> list[Row]:
    """The rows whose name matches one of the shell patterns (every row without patterns)."""
    if not patterns:
        return rows
    chosen = [r for r in rows if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    if not chosen:
        names = "\n  ".join(r.name for r in rows)
        raise SystemExit(f"--rows {' '.join(patterns)} matches no row; the rows are:\n  {names}")
    return chosen


# --------------------------------------------------------------------------- references


class PyTorchExamplesVAE(nn.Module):
    """The classic PyTorch-examples VAE: 784-400-z encoder with two heads (mean and log-variance),
    z-400-784 decoder, ReLU, sigmoid Bernoulli means, loss BCE + KL summed over the batch."""

    def __init__(self, latent_dim: int, hidden: int = REFERENCE_HIDDEN, pixels: int = 784) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.fc1 = nn.Linear(pixels, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, pixels)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each ``[B, z]``."""
        h = F.relu(self.fc1(x.flatten(1)))
        return self.fc21(h), self.fc22(h)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits ``[B, 784]`` of p(x|z)."""
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return torch.sigmoid(self.logits(z)), mu, log_var

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The example's objective: BCE of the sigmoid means plus the closed-form KL, summed."""
        recon_x, mu, log_var = self(x)
        bce = F.binary_cross_entropy(recon_x, x.flatten(1), reduction="sum")
        kld = -0.5 * torch.sum(1.0 + log_var - mu.pow(2) - log_var.exp())
        return bce + kld


def pythae_available() -> str | None:
    """None when pythae's VAE imports, else why not (one line)."""
    try:
        from pythae.models import VAE, VAEConfig  # noqa: F401
        from pythae.models.nn import BaseDecoder, BaseEncoder  # noqa: F401
    except Exception as exc:  # any failure to import means: no pythae row
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


class PythaeVAE(nn.Module):
    """pythae's ``VAE`` (its forward pass and loss) with a 784-400-z encoder and decoder."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...], hidden: int = REFERENCE_HIDDEN) -> None:
        super().__init__()
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder

        pixels = math.prod(shape)

        class Encoder(BaseEncoder):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
                self.mean = nn.Linear(hidden, latent_dim)
                self.log_var = nn.Linear(hidden, latent_dim)

            def forward(self, x: torch.Tensor) -> Any:
                h = self.hidden(x)
                return ModelOutput(embedding=self.mean(h), log_covariance=self.log_var(h))

        class Decoder(BaseDecoder):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, pixels))

            def forward(self, z: torch.Tensor) -> Any:
                return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).reshape(-1, *shape))

        config = VAEConfig(input_dim=tuple(shape), latent_dim=latent_dim, reconstruction_loss="bce")
        self.latent_dim = latent_dim
        self.vae = VAE(config, encoder=Encoder(), decoder=Decoder())

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.vae.encoder(x)
        return out.embedding, out.log_covariance

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decoder.net(z)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """pythae's own training loss: ``VAE.forward`` on a ``{"data": x}`` batch."""
        return self.vae({"data": x}).loss


def build_reference(source: Source, latent_dim: int, shape: tuple[int, ...]) -> nn.Module:
    if source == "pytorch-examples":
        return PyTorchExamplesVAE(latent_dim, pixels=math.prod(shape))
    if source == "pythae":
        return PythaeVAE(latent_dim, shape)
    raise ValueError(f"not a reference: {source}")


def _bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x|z)`` per example ``[B]``, summed over pixels (minus the cross-entropy)."""
    return -F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)


def _gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``log N(z; mu, diag(exp(log_var)))`` summed over the last dimension."""
    return -0.5 * (LOG_2PI + log_var + (z - mu).pow(2) * torch.exp(-log_var)).sum(-1)


class EvaluatedReference(GenerativeModel):
    """A reference VAE (``posterior`` and ``logits`` methods, N(0, 1) prior) seen through the
    toolkit's model contract, so that ``evaluate_model`` measures it exactly as it measures
    ours. It is trained by :func:`train_reference`, not by :meth:`update`."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net, self.shape = net, tuple(shape)
        self.latent_dim = int(net.latent_dim)
        self.checkpointed = {"net": net}

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError("a reference trains in its own loop (train_reference)")

    @torch.no_grad()
    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        x = batch.x
        mu, log_var = self.net.posterior(x)
        z = mu + torch.exp(0.5 * log_var) * torch.randn(1, *mu.shape, device=mu.device)  # one sample
        recon = _bernoulli_log_likelihood(self.net.logits(z[0]), x)
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)  # KL(N(mu, var) || N(0, I))
        mean = torch.sigmoid(self.net.logits(mu))
        return {"elbo": recon - kl, "recon": recon, "kl": kl,
                "recon_error": (mean - x.flatten(1)).pow(2).mean(1)}

    @torch.no_grad()
    def importance_nll(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``-(logsumexp_i w_i - log k)``, ``w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)``."""
        b = x.shape[0]
        mu, log_var = self.net.posterior(x)
        chunk = max(1, IS_CHUNK_VALUES // (b * math.prod(self.shape)))
        log_w: list[torch.Tensor] = []
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            z = mu + torch.exp(0.5 * log_var) * torch.randn(c, *mu.shape, device=mu.device)  # [c, B, z]
            x_rep = x.expand(c, *x.shape).reshape(c * b, *x.shape[1:])
            log_px = _bernoulli_log_likelihood(self.net.logits(z.reshape(c * b, -1)), x_rep).reshape(c, b)
            zeros = torch.zeros_like(z)
            log_w.append(log_px + _gaussian_log_prob(z, zeros, zeros) - _gaussian_log_prob(z, mu, log_var))
        return -(torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.posterior(x)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net.logits(z)).reshape(-1, *self.shape)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.decode(torch.randn(n, self.latent_dim, device=next(self.net.parameters()).device))


# --------------------------------------------------------------------------- training


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ToolkitTrainee:
    """One of our rows, trained by the toolkit's own loop: ``start_training`` for the first
    stretch of steps, ``resume_training`` (exact: weights, optimiser, sampler and random
    streams come back from the checkpoint) for each later one. Its timing is what the loop
    logs: steps/s since the previous log line, gradient steps alone (the run has no periodic
    evaluation and saves its checkpoint after the timed steps), added up per window.
    ``start_training`` logs at least 20 times per call, so a run advanced a window at a time
    logs 20 times per window (a log line costs about 0.4 ms here: under 1% of a window)."""

    def __init__(self, row: Row, seed: int, args: argparse.Namespace, run_dir: Path) -> None:
        self.row, self.seed, self.args, self.run_dir = row, seed, args, run_dir
        self.step = 0
        #: ``(steps, seconds)`` of every timed window so far.
        self.windows: list[tuple[int, float]] = []

    def advance(self, target: int) -> None:
        """Train up to ``target`` steps."""
        args, window = self.args, self.args.steps // WINDOWS
        if self.step == 0:
            settings = [*self.row.settings, f"batch_size={args.batch_size}", f"lr={args.lr}"]
            start_training(self.row.model, None, steps=target, seed=self.seed, device=args.device,
                           set_items=settings, run_dir=self.run_dir, progress=False, dataset=DATASET,
                           eval_every=args.steps, checkpoint_every=0, log_every=window)
        else:
            resume_training(self.run_dir, steps=target, progress=False)
        steps, seconds = 0, 0.0
        for record in read_metrics(self.run_dir, "train"):
            if int(record["step"]) <= self.step:
                continue  # logged by an earlier call
            n = int(record["step"]) - self.step
            steps, seconds, self.step = steps + n, seconds + n / float(record["steps_per_second"]), self.step + n
            if self.step % window == 0:
                self.windows.append((steps, seconds))
                steps, seconds = 0, 0.0
        if self.step != target:
            raise RuntimeError(f"{self.run_dir} logged training up to step {self.step}, not {target}")

    def evaluate(self, figures: bool) -> dict[str, float]:
        report, _, _ = evaluate_model_run(self.run_dir, is_samples=self.args.is_samples,
                                          is_limit=self.args.is_examples, figures=figures, seed=0)
        return report.metrics


class ReferenceTrainee:
    """A reference VAE and its plain loop: minibatch, the reference's own loss, ``zero_grad``,
    ``backward``, Adam ``step``. Built after ``torch.manual_seed(seed)`` and fed by a
    ``MinibatchSampler`` seeded like our run's (the same minibatches); it keeps a random
    stream of its own, so training beside another model draws what it would alone."""

    def __init__(self, row: Row, seed: int, args: argparse.Namespace, run_dir: Path, data: ImageDataset) -> None:
        self.row, self.args, self.run_dir, self.data = row, args, run_dir, data
        self.device = torch.device(args.device)
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(seed)
            self.net = build_reference(row.source, row.latent_dim, data.shape).to(self.device)
            self.rng = self._rng_state()
        self.sampler = MinibatchSampler(data, self.device, seed=seed)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr)
        self.step = 0
        self.windows: list[tuple[int, float]] = []

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _rng_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def advance(self, target: int) -> None:
        """Train up to ``target`` steps, timed in windows of ``steps / WINDOWS``."""
        window = self.args.steps // WINDOWS
        self.net.train()
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.set_rng_state(self.rng[0])
            if self.rng[1] is not None:
                torch.cuda.set_rng_state(self.rng[1], self.device)
            start = time.perf_counter()
            while self.step < target:
                loss = self.net.loss(self.sampler.sample(self.args.batch_size).x)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.step += 1
                if self.step % window == 0:
                    _sync(self.device)
                    now = time.perf_counter()
                    self.windows.append((window, now - start))
                    start = now
            self.rng = self._rng_state()
        final = float(loss.detach())
        if not math.isfinite(final):
            raise RuntimeError(f"the training loss is {final} at step {self.step}")

    def evaluate(self, figures: bool) -> dict[str, float]:
        """The metrics, and the weights and evaluation saved in the row's folder (no figures)."""
        report = evaluate_model(EvaluatedReference(self.net, self.data.shape), self.data, self.device,
                                is_samples=self.args.is_samples, is_limit=self.args.is_examples, seed=0)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), self.run_dir / "weights.pt")
        (self.run_dir / "eval.json").write_text(json.dumps(
            {"step": self.step, "is_samples": self.args.is_samples, **report.to_dict()}, indent=2))
        return report.metrics


Trainee = ToolkitTrainee | ReferenceTrainee


# --------------------------------------------------------------------------- one group of rows


@dataclass
class Result:
    """One row trained with one seed and evaluated."""

    row: str
    source: str
    architecture: str
    latent_dim: int
    prior: str
    seed: int
    steps: int
    elbo: float
    recon: float
    kl: float
    nll_is: float
    probe_accuracy: float
    pca_probe_accuracy: float
    #: Median over the timing windows, and over the whole gradient phase (examples/s).
    train_examples_per_s: float
    train_examples_per_s_mean: float
    train_seconds: float
    eval_seconds: float
    run_dir: str
    #: Examples/s of each timing window, in order.
    window_examples_per_s: list[float]


def run_group(rows: list[Row], seed: int, args: argparse.Namespace, out: Path, figure_rows: set[str],
              failures: list[str]) -> list[Result]:
    """Train ``rows`` with ``seed``, several in lockstep: window by window, in turn, in the
    opposite order every other window; then evaluate each. A row that fails is reported in
    ``failures`` and dropped; the others go on."""
    data = load_image_source(DATASET, seed=seed)  # what our runs load for this seed
    trainees: list[Trainee] = []

    def failed(row: Row, exc: Exception) -> None:
        failures.append(f"{row.name} seed {seed}: {type(exc).__name__}: {exc}")
        print(f"FAILED {row.name} seed {seed}:\n{traceback.format_exc()}", flush=True)

    for row in rows:
        run_dir = out / "runs" / f"{row.slug}-s{seed}"
        if run_dir.exists():  # a rerun into the same --out starts the row afresh
            shutil.rmtree(run_dir)
        try:
            trainees.append(ToolkitTrainee(row, seed, args, run_dir) if row.source == "toolkit"
                            else ReferenceTrainee(row, seed, args, run_dir, data))
        except Exception as exc:  # a reference that cannot even be built
            failed(row, exc)
    # One row alone is timed over the same windows, without pauses between them.
    stretches = [args.steps] if len(trainees) == 1 else [(w + 1) * (args.steps // WINDOWS) for w in range(WINDOWS)]
    for w, target in enumerate(stretches):
        for trainee in list(trainees if w % 2 == 0 else trainees[::-1]):
            try:
                trainee.advance(target)
            except Exception as exc:
                failed(trainee.row, exc)
                trainees.remove(trainee)
    results = []
    for trainee in trainees:
        started = time.perf_counter()
        try:
            m = trainee.evaluate(figures=trainee.row.name in figure_rows)
        except Exception as exc:
            failed(trainee.row, exc)
            continue
        rates = [steps * args.batch_size / seconds for steps, seconds in trainee.windows]
        seconds = sum(s for _, s in trainee.windows)
        steps = sum(n for n, _ in trainee.windows)
        row = trainee.row
        results.append(Result(
            row.name, row.source, row.architecture, row.latent_dim, row.prior, seed, steps,
            m["elbo"], m["recon"], m["kl"], m.get("nll_is", math.nan), m.get("probe_accuracy", math.nan),
            m.get("pca_probe_accuracy", math.nan), statistics.median(rates), steps * args.batch_size / seconds,
            seconds, time.perf_counter() - started, str(trainee.run_dir), rates,
        ))
    return results


def groups(rows: list[Row]) -> list[list[Row]]:
    """The matched rows and references of each latent size as one group (trained in lockstep),
    every other row alone, in the order of ``rows``."""
    out: list[list[Row]] = []
    matched: dict[int, list[Row]] = {}
    for row in rows:
        if row.source != "toolkit" or row.name == matched_row(row.latent_dim).name:
            if row.latent_dim not in matched:
                matched[row.latent_dim] = []
                out.append(matched[row.latent_dim])
            matched[row.latent_dim].append(row)
        else:
            out.append([row])
    return out


def check_reference_evaluator(run_dir: Path, ours: Result, args: argparse.Namespace) -> str:
    """Copy our matched run's weights into the PyTorch-examples module and evaluate it with
    :class:`EvaluatedReference`; the metrics should equal our evaluation's."""
    session, _ = open_trained_run(run_dir)
    model = session.learner
    try:
        enc = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)]
        dec = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    except AttributeError as exc:
        return f"skipped (the vae plugin's layout changed: {exc})"
    z = ours.latent_dim
    if len(enc) != 2 or len(dec) != 2 or enc[1].out_features != 2 * z:
        return "skipped (our vae is not a 784-400-z MLP with one mean/log-variance head)"
    ref = PyTorchExamplesVAE(z, hidden=enc[0].out_features, pixels=enc[0].in_features)
    with torch.no_grad():
        for target, weight, bias in ((ref.fc1, enc[0].weight, enc[0].bias),
                                     (ref.fc21, enc[1].weight[:z], enc[1].bias[:z]),
                                     (ref.fc22, enc[1].weight[z:], enc[1].bias[z:]),
                                     (ref.fc3, dec[0].weight, dec[0].bias),
                                     (ref.fc4, dec[1].weight, dec[1].bias)):
            target.weight.copy_(weight)
            target.bias.copy_(bias)
    ref = ref.to(session.device)
    report = evaluate_model(EvaluatedReference(ref, session.data.shape), session.data, session.device,
                            is_samples=args.is_samples, is_limit=args.is_examples, probe=False, seed=0)
    ours_values = {"elbo": ours.elbo, "recon": ours.recon, "kl": ours.kl, "nll_is": ours.nll_is}
    diffs = {k: abs(report.metrics[k] - v) for k, v in ours_values.items()}
    verdict = "match" if max(diffs.values()) < 1e-2 else "DIFFER"
    return f"{verdict}: |difference| " + ", ".join(f"{k} {d:.2e}" for k, d in diffs.items()) + " nats"


# --------------------------------------------------------------------------- the report


def _cell(values: list[float], fmt: str) -> str:
    """Mean, and ± the standard deviation over seeds when there are several."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "—"
    mean = statistics.mean(finite)
    if len(finite) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(statistics.stdev(finite), fmt)}"


def _prior_label(row: Row) -> str:
    label = {"normal:0,1": "N(0,1)", "normal:1,2": "N(1,2²)"}.get(row.prior, row.prior)
    return f"{label} (its only prior)" if row.source != "toolkit" else label


def group(results: list[Result], rows: list[Row]) -> Iterator[tuple[Row, list[Result]]]:
    for row in rows:
        mine = [r for r in results if r.row == row.name]
        if mine:
            yield row, mine


def markdown_table(results: list[Result], rows: list[Row], args: argparse.Namespace) -> str:
    head = ["row", "source", "architecture", "z", "prior", "test ELBO", "recon E[log p(x|z)]", "KL",
            f"IS-NLL k={args.is_samples}", "probe acc (latents)", "probe acc (PCA-z)", "train ex/s", "train s",
            "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row, rs in group(results, rows):
        cells = [f"`{row.name}`", row.source, row.architecture, str(row.latent_dim), _prior_label(row),
                 _cell([r.elbo for r in rs], ".2f"), _cell([r.recon for r in rs], ".2f"), _cell([r.kl for r in rs], ".2f"),
                 _cell([r.nll_is for r in rs], ".2f"), _cell([r.probe_accuracy for r in rs], ".3f"),
                 _cell([r.pca_probe_accuracy for r in rs], ".3f"), _cell([r.train_examples_per_s for r in rs], ".0f"),
                 _cell([r.train_seconds for r in rs], ".1f"), _cell([r.eval_seconds for r in rs], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(results: list[Result]) -> list[str]:
    """PASS/FAIL of both targets for every reference and latent size that ran. The ELBO
    difference is of the means over seeds; the throughput ratio is the median, over every
    seed's timing windows, of ours / the reference's in the same window (trained in turn)."""
    lines: list[str] = []
    for latent in LATENT_DIMS:
        for source in ("pytorch-examples", "pythae"):
            by_seed = {r.seed: r for r in results if r.row == matched_row(latent).name}
            pairs = [(by_seed[r.seed], r) for r in results
                     if r.row == reference_row(source, latent).name and r.seed in by_seed]  # type: ignore[arg-type]
            if not pairs:
                continue
            e_ours = statistics.mean(o.elbo for o, _ in pairs)
            e_ref = statistics.mean(r.elbo for _, r in pairs)
            ratios = [a / b for o, r in pairs for a, b in zip(o.window_examples_per_s, r.window_examples_per_s)]
            v_ours = statistics.median(v for o, _ in pairs for v in o.window_examples_per_s)
            v_ref = statistics.median(v for _, r in pairs for v in r.window_examples_per_s)
            diff, ratio = e_ours - e_ref, statistics.median(ratios)
            lines.append(f"{'PASS' if diff >= -ELBO_TOLERANCE else 'FAIL'}  ELBO  z={latent:<2d} vs {source}: "
                         f"ours {e_ours:.2f}, reference {e_ref:.2f} nats; ours - reference {diff:+.2f} nats "
                         f"(target >= -{ELBO_TOLERANCE:g})")
            lines.append(f"{'PASS' if ratio >= 1.0 else 'FAIL'}  speed z={latent:<2d} vs {source}: "
                         f"ours {v_ours:.0f} ex/s, reference {v_ref:.0f} ex/s; ours / reference {ratio:.2f} "
                         f"(median of {len(ratios)} paired windows, target >= 1)")
    return lines


def write_csv(path: Path, results: list[Result]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        for r in results:
            writer.writerow({**asdict(r), "window_examples_per_s": " ".join(f"{v:.0f}" for v in r.window_examples_per_s)})


def copy_readme_figures(results: list[Result], dest: Path) -> list[Path]:
    """The README's figures, from the figures folder of the README row's first seed."""
    source_run = next((Path(r.run_dir) for r in results if r.row == README_ROW), None)
    if source_run is None:
        return []
    folders = sorted((source_run / "figures").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    if not folders:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, target in README_FIGURES.items():
        if (folders[-1] / name).is_file():
            shutil.copyfile(folders[-1] / name, dest / target)
            copied.append(dest / target)
    return copied


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200, help="gradient steps of every row (default sized "
                        "so that the whole grid, one seed, takes about 20 minutes on 2 busy CPU cores)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per row (each seed also re-splits the data)")
    parser.add_argument("--is-samples", type=int, default=100, help="importance samples k of the IS-NLL")
    parser.add_argument("--is-examples", type=int, default=500, help="test examples the IS-NLL is averaged over")
    parser.add_argument("--batch-size", type=int, default=128, help="minibatch of every row")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, the same for both sides")
    parser.add_argument("--rows", nargs="+", metavar="PATTERN", help="shell patterns of the row names to run, "
                        "e.g. --rows 'vae-mlp400/*' 'ref-*' (default: every row; --list shows them)")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-vae"), help="run dirs, results.csv, results.md")
    parser.add_argument("--all-figures", action="store_true", help="figures for every toolkit run, not only the "
                        f"README's ({README_ROW})")
    parser.add_argument("--readme-figures", default=str(REPO / "docs" / "figures"),
                        help="where the README's figures are copied ('' to skip)")
    args = parser.parse_args()
    if args.steps <= 0 or args.seeds <= 0 or args.is_samples <= 0 or args.is_examples <= 0 or args.threads <= 0:
        parser.error("--steps, --seeds, --is-samples, --is-examples and --threads must be positive")
    if args.steps % WINDOWS:
        parser.error(f"--steps must be a multiple of {WINDOWS}: throughput is timed over {WINDOWS} equal windows")
    return args


def main() -> None:
    args = parse_args()
    rows = select_rows(all_rows(), args.rows)
    if args.list:
        print("\n".join(f"{r.name:28s} {r.source:17s} {r.architecture}" for r in rows))
        return
    torch.set_num_threads(args.threads)
    pythae_problem = pythae_available()
    if pythae_problem is not None:
        print(f"pythae unavailable, its rows are skipped: {pythae_problem}")
        rows = [r for r in rows if r.source != "pythae"]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    versions = f"torch {torch.__version__}, python {platform.python_version()}"
    if pythae_problem is None:
        import importlib.metadata

        versions += f", pythae {importlib.metadata.version('pythae')}"
    protocol = (f"{DATASET}, {args.steps} steps x batch {args.batch_size}, Adam lr {args.lr:g}, Bernoulli likelihood, "
                f"{args.seeds} seed(s), IS-NLL k={args.is_samples} on {args.is_examples} test examples, "
                f"{args.threads} torch thread(s) on {args.device} for every row; {versions}")
    print(protocol, flush=True)

    started = time.perf_counter()
    results: list[Result] = []
    failures: list[str] = []
    evaluator_check = "not run (needs the vae-mlp400 rows)"
    for seed in range(args.seeds):
        figure_rows = {r.name for r in rows} if args.all_figures else ({README_ROW} if seed == 0 else set())
        for group_rows in groups(rows):
            for result in run_group(group_rows, seed, args, out, figure_rows, failures):
                results.append(result)
                print(f"[{time.perf_counter() - started:6.0f} s] {result.row:26s} s{seed}  ELBO {result.elbo:8.2f}  "
                      f"IS-NLL {result.nll_is:7.2f}  probe {result.probe_accuracy:.3f}  "
                      f"{result.train_examples_per_s:6.0f} ex/s  (train {result.train_seconds:5.1f} s, "
                      f"eval {result.eval_seconds:4.1f} s)", flush=True)
                if result.row == matched_row(result.latent_dim).name and evaluator_check.startswith("not run"):
                    try:
                        evaluator_check = check_reference_evaluator(Path(result.run_dir), result, args)
                    except Exception as exc:
                        evaluator_check = f"failed ({type(exc).__name__}: {exc})"
                    print(f"reference evaluator on our {result.row} weights: {evaluator_check}", flush=True)
    wall = time.perf_counter() - started
    if not results:
        raise SystemExit("no row finished:\n" + "\n".join(failures))

    table = markdown_table(results, rows, args)
    targets = target_lines(results)
    figures = copy_readme_figures(results, Path(args.readme_figures)) if args.readme_figures else []
    notes = [
        "The references have only the N(0,1) prior; the N(1,2²) rows have no reference counterpart.",
        "`vae-mlp400` is our `vae` at the references' architecture (784-400-z); it is what the targets compare.",
        "ELBO, recon and KL: nats per test example (1,000 examples, one posterior sample); beta-vae is "
        "evaluated at beta 1.",
        "train ex/s: median over 20 windows of the gradient-step phase (evaluation excluded); "
        "results.csv also has the whole-phase mean.",
        f"Reference evaluator check (our matched weights evaluated both ways): {evaluator_check}.",
    ]
    if pythae_problem is not None:
        notes.append(f"pythae rows skipped: {pythae_problem}")
    notes += [f"Row failed: {f}" for f in failures]
    write_csv(out / "results.csv", results)
    md = [f"# VAE benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "", protocol, "", table, "",
          *[f"- {n}" for n in notes], "", "Targets:", "", "```", *targets, "```", "",
          f"Wall time: {wall:.0f} s."]
    (out / "results.md").write_text("\n".join(md) + "\n")

    print("\n" + protocol + "\n")
    print(table + "\n")
    print("\n".join(notes) + "\n")
    print("\n".join(targets) if targets else "targets: not measured (the vae-mlp400 and ref-* rows did not all run)")
    for path in figures:
        print(f"README figure: {path}")
    print(f"results: {out / 'results.md'}, {out / 'results.csv'}")
    print(f"wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
