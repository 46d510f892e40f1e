"""Autoencoder: ``x -> z = f(x) -> x_hat = g(z)``, trained to reconstruct its input.

The latent code ``z`` has ``latent_dim`` numbers, fewer than the input, so the network must
find a compressed description of the data (an undercomplete autoencoder; with linear ``f``
and ``g`` and squared error it would recover the PCA subspace, Baldi & Hornik 1989).

Loss: inputs are in ``[0, 1]``, so the decoder outputs logits and the reconstruction is
scored by binary cross-entropy summed over input values (the negative log-likelihood of
independent Bernoullis) and averaged over the batch. Cross-entropy gives stronger gradients
than squared error on near-black and near-white pixels; ``recon_error`` still reports the
mean squared error of ``sigmoid(logits)`` for comparison with every other model.
"""

from __future__ import annotations

import torch

from toolkit.model import AutoencoderModel, DataSpec, ExampleBatch
from toolkit_vision.common import (
    adam,
    bernoulli_log_likelihood,
    check_data,
    make_decoder,
    make_encoder,
    mean_squared_error,
)
from toolkit_vision.spec import AEConfig


class Autoencoder(AutoencoderModel):
    """A deterministic autoencoder with an MLP or convolutional encoder/decoder."""

    def __init__(self, config: AEConfig, spec: DataSpec, device: str) -> None:
        super().__init__()
        self.config, self.spec, self.device = config, spec, device
        self.latent_dim = config.latent_dim
        self.encoder = make_encoder(config, spec, config.latent_dim).to(device)
        self.decoder = make_decoder(config, spec, config.latent_dim).to(device)
        self.optimizer = adam([self.encoder, self.decoder], config, device)
        self.checkpointed = {"encoder": self.encoder, "decoder": self.decoder, "optimizer": self.optimizer}

    def loss(self, x_in: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of reconstructing ``target`` from ``x_in``, per example ``[B]``."""
        logits = self.decoder(self.encoder(x_in))
        return -bernoulli_log_likelihood(logits, target)

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees while training: the clean batch (the DAE corrupts it)."""
        return x

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        loss = self.loss(self.training_input(batch.x), batch.x).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        x = batch.x
        logits = self.decoder(self.encoder(x))
        return {
            "loss": -bernoulli_log_likelihood(logits, x),
            "recon_error": mean_squared_error(torch.sigmoid(logits), x),
        }

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))


def make_ae(config: AEConfig, data_spec: DataSpec, device: str) -> Autoencoder:
    """The ``ae`` factory."""
    config.validate()
    check_data(config, data_spec)
    return Autoencoder(config, data_spec, device)
