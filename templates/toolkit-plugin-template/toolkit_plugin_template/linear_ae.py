"""A linear autoencoder, written as a toolkit model plugin.

The model is ``z = W_e x + b_e`` (``latent_dim`` numbers) and ``x_hat = W_d z + b_d``, trained
by minimising the mean squared reconstruction error. With linear maps and squared error the
optimum spans the same subspace as the top ``latent_dim`` principal components of the data
(Baldi & Hornik 1989), so this is PCA learned by gradient descent: small, fast, and a fair
baseline for any nonlinear autoencoder.

What this module does *not* do is as much a part of the contract as what it does: it never
reads the dataset, samples minibatches, logs, seeds or checkpoints to disk. The toolkit's
model loop does all that and calls :meth:`LinearAutoencoder.update`; ``toolkit eval`` calls
:meth:`~LinearAutoencoder.evaluate`, :meth:`~LinearAutoencoder.encode` and
:meth:`~LinearAutoencoder.decode` for its table and figures.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model import AutoencoderModel, DataSpec, ExampleBatch
from toolkit_plugin_template.spec import LinearAEConfig


class LinearAutoencoder(AutoencoderModel):
    """A linear encoder and a linear decoder on flattened examples of any shape."""

    def __init__(self, config: LinearAEConfig, spec: DataSpec, device: torch.device | str) -> None:
        super().__init__()
        self.config, self.shape = config, tuple(spec.shape)
        self.latent_dim = config.latent_dim  # AutoencoderModel: the size of what encode returns
        size = math.prod(self.shape)
        self.encoder = nn.Linear(size, config.latent_dim).to(device)
        self.decoder = nn.Linear(config.latent_dim, size).to(device)
        self.optimizer = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=config.lr)
        # Everything a checkpoint must hold to continue exactly: modules and the optimiser.
        # The base class builds state_dict()/load_state_dict() and train_mode() from this mapping.
        self.checkpointed = {"encoder": self.encoder, "decoder": self.decoder, "optimizer": self.optimizer}

    def _reconstruct_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``W_d (W_e x + b_e) + b_d`` as flat rows ``[B, D]``, not clipped."""
        return self.decoder(self.encoder(x.flatten(1)))

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        """One Adam step on the mean squared error.

        Returns a detached 0-dimensional tensor; nothing here reads a value back to the host
        (no ``.item()``), so the step never waits for the device.
        """
        x = batch.x.flatten(1)
        loss = (self._reconstruct_linear(x) - x).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        """Per-example ``[B]`` metrics; the framework averages them over the test split.

        ``unclipped_mse`` is the training objective (the linear reconstruction as it is);
        ``recon_error`` is the conventional metric every autoencoder reports: the mean squared
        error per input value of the reconstruction in ``[0, 1]`` that ``decode`` returns.
        """
        x = batch.x.flatten(1)
        return {
            "unclipped_mse": (self._reconstruct_linear(x) - x).pow(2).mean(1),
            "recon_error": (self.reconstruct(batch.x).flatten(1) - x).pow(2).mean(1),
        }

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, latent_dim]`` for examples ``[B, *shape]`` in ``[0, 1]``."""
        return self.encoder(x.flatten(1))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Examples ``[B, *shape]``, clipped to ``[0, 1]`` as the contract asks (a linear map
        can leave the range)."""
        return self.decoder(z).clamp(0.0, 1.0).reshape(-1, *self.shape)


def make_linear_ae(config: LinearAEConfig, data_spec: DataSpec, device: torch.device | str) -> LinearAutoencoder:
    """The factory named by the ``template-linear-ae`` ModelSpec.

    The framework calls it as ``factory(config, data_spec, device)`` after validating the
    config, loading the data and seeding torch. A setting that cannot work with this data is
    a user mistake: one sentence, no traceback.
    """
    size = math.prod(data_spec.shape)
    if config.latent_dim > size:
        source = data_spec.source or "the data"
        raise ToolkitError(
            f"latent_dim={config.latent_dim} exceeds the {size} values of each example of {source}; "
            f"use latent_dim <= {size}."
        )
    return LinearAutoencoder(config, data_spec, device)
