"""Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"), and
beta-VAE (Higgins et al. 2017, "beta-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework") as the same model with the KL term weighted by ``beta``.

The generative model is ``z ~ p(z)``, ``x ~ p(x|z)``, the likelihood a decoder network. An
encoder network gives an approximate posterior ``q(z|x) = N(mu(x), diag(exp(log_var(x))))``,
and both are trained by maximising the evidence lower bound

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  <=  log p(x).

* The expectation is estimated with one reparameterised sample ``z = mu + sigma * eps``,
  ``eps ~ N(0, I)``, so its gradient reaches the encoder (the reparameterisation trick).
* The KL term is exact when the prior has a closed form (``normal:M,S``), else a Monte-Carlo
  estimate over ``kl_samples`` posterior samples (e.g. for the learned ``mixture:K`` prior,
  whose parameters are trained with the rest). Priors are plugins: :mod:`toolkit.nn.priors`.
* ``likelihood=bernoulli`` scores values in [0, 1] by cross-entropy; ``gaussian`` is
  ``N(x; sigmoid(decoder(z)), sigma^2)`` with one learned ``sigma`` per input value, shared by
  all examples and floored at 0.01 (values that never vary, like the border of a digit, would
  otherwise drive ``sigma`` to 0 and the likelihood to infinity). Gaussian values are
  densities, so they are not comparable with Bernoulli ones.

Training minimises ``-(E_q[log p(x|z)] - beta * KL)``; ``beta = 1`` is the ELBO. Evaluation
always reports the ELBO itself (``beta = 1``) in nats per example, and
:meth:`VAE.importance_nll` the tighter importance-weighted bound of Burda et al. (2016).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.model import DataSpec, ExampleBatch, GenerativeModel
from toolkit.nn.distributions import gaussian_log_prob
from toolkit.nn.priors import parse_prior
from toolkit_vision.common import (
    adam,
    bernoulli_log_likelihood,
    check_data,
    make_decoder,
    make_encoder,
    mean_squared_error,
)
from toolkit_vision.spec import VAEConfig

#: Smallest standard deviation of the Gaussian likelihood (see the module docstring).
MIN_STD = 0.01
#: Decoded examples per chunk of :meth:`VAE.importance_nll`, times the input size: bounds memory.
IWAE_CHUNK_VALUES = 2**20


class PixelStd(nn.Module):
    """The Gaussian likelihood's learned standard deviation, one per input value."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.log_std = nn.Parameter(torch.zeros(shape))  # sigma = 1 at first

    def forward(self) -> torch.Tensor:
        """``log sigma`` ``[*shape]``, floored at ``log MIN_STD``."""
        return self.log_std.clamp(min=math.log(MIN_STD))


class VAE(GenerativeModel):
    """A Gaussian-latent VAE with a pluggable prior and a Bernoulli or Gaussian likelihood."""

    def __init__(self, config: VAEConfig, spec: DataSpec, device: str) -> None:
        super().__init__()
        self.config, self.spec, self.device = config, spec, device
        self.latent_dim = config.latent_dim
        # The encoder outputs the posterior's mean and log-variance side by side.
        self.encoder = make_encoder(config, spec, 2 * config.latent_dim).to(device)
        self.decoder = make_decoder(config, spec, config.latent_dim).to(device)
        self.prior = parse_prior(config.prior, config.latent_dim).to(device)
        modules: list[nn.Module] = [self.encoder, self.decoder, self.prior]
        self.pixel_std: PixelStd | None = None
        if config.likelihood == "gaussian":
            self.pixel_std = PixelStd(tuple(spec.shape)).to(device)
            modules.append(self.pixel_std)
        self.optimizer = adam(modules, config, device)
        self.checkpointed = {"encoder": self.encoder, "decoder": self.decoder, "prior": self.prior}
        if self.pixel_std is not None:
            self.checkpointed["pixel_std"] = self.pixel_std
        self.checkpointed["optimizer"] = self.optimizer

    # --- the model's pieces ------------------------------------------------------------------

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z|x)``: mean and log-variance, each ``[B, latent_dim]``."""
        mu, log_var = self.encoder(x).chunk(2, dim=-1)
        return mu, log_var

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``log p(x|z)`` per example ``[B]`` from the decoder's output ``out`` for ``z``."""
        if self.pixel_std is None:
            return bernoulli_log_likelihood(out, x)
        mean, log_std = torch.sigmoid(out).flatten(1), self.pixel_std().flatten()
        return gaussian_log_prob(x.flatten(1), mean, 2.0 * log_std)

    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``E_q[log p(x|z)]`` (one sample), ``KL(q || p)`` and the posterior mean, per example."""
        mu, log_var = self.posterior(x)
        samples = 1 if self.prior.closed_form_kl else self.config.kl_samples
        eps = torch.randn(samples, *mu.shape, device=mu.device)
        z = mu + torch.exp(0.5 * log_var) * eps  # reparameterised: [S, B, D]
        recon = self.log_likelihood(x, self.decoder(z[0]))
        kl = self.prior.kl(mu, log_var, z)
        return recon, kl, mu

    # --- training ----------------------------------------------------------------------------

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        recon, kl, _ = self.elbo_terms(batch.x)
        loss = -(recon - self.config.beta * kl).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "recon": recon.mean().detach(), "kl": kl.mean().detach()}

    # --- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        x = batch.x
        recon, kl, mu = self.elbo_terms(x)
        return {
            "elbo": recon - kl,
            "recon": recon,
            "kl": kl,
            "recon_error": mean_squared_error(self.decode(mu), x),
        }

    @torch.no_grad()
    def importance_nll(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``-log p(x)`` ``[B]`` estimated as ``-(logsumexp_i w_i - log k)`` with
        ``w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)``, ``z_i ~ q(z|x)`` (Burda et al. 2016).

        The ``k`` samples are drawn in chunks so that ``k = 1000`` fits in memory."""
        b = x.shape[0]
        mu, log_var = self.posterior(x)
        chunk = max(1, IWAE_CHUNK_VALUES // (b * math.prod(self.spec.shape)))
        log_w: list[torch.Tensor] = []
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            z = mu + torch.exp(0.5 * log_var) * torch.randn(c, *mu.shape, device=mu.device)  # [c, B, D]
            out = self.decoder(z.reshape(c * b, -1))
            x_rep = x.expand(c, *x.shape).reshape(c * b, *x.shape[1:])
            log_px = self.log_likelihood(x_rep, out).reshape(c, b)
            log_w.append(log_px + self.prior.log_prob(z) - gaussian_log_prob(z, mu, log_var))
        return -(torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k))

    # --- the autoencoder and generative interface ---------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]  # the posterior mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))  # the likelihood's mean

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.decode(self.prior.sample(n))


def make_vae(config: VAEConfig, data_spec: DataSpec, device: str) -> VAE:
    """The ``vae`` and ``beta-vae`` factory."""
    config.validate()
    check_data(config, data_spec)
    return VAE(config, data_spec, device)
