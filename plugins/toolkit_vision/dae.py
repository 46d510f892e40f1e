"""Denoising autoencoder (Vincent, Larochelle, Bengio & Manzagol 2008, "Extracting and
Composing Robust Features with Denoising Autoencoders").

1. Corrupt each input: ``x_tilde ~ q(x_tilde | x)``. The paper's *masking noise* sets a
   random fraction of the input values to 0; *additive Gaussian noise* is the other common
   choice (clipped here to [0, 1], so a corrupted example is still a valid input).
2. Encode the corrupted input and decode: ``x_hat = g(f(x_tilde))``.
3. Score the reconstruction against the *clean* input: ``L = CE(x, x_hat)``.

Since the clean input is not in ``x_tilde``, the identity map no longer minimises the loss:
the code must capture the structure of the data that lets it fill in what the noise removed.
At test time the encoder sees inputs as given, uncorrupted.
"""

from __future__ import annotations

import torch

from toolkit.model import DataSpec, ExampleBatch
from toolkit_vision.ae import Autoencoder
from toolkit_vision.common import check_data, mean_squared_error
from toolkit_vision.spec import DAEConfig


class DenoisingAutoencoder(Autoencoder):
    """An :class:`~toolkit_vision.ae.Autoencoder` trained to undo ``noise`` on its inputs."""

    config: DAEConfig

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """A freshly corrupted copy of ``x`` (step 1)."""
        level = self.config.noise_level
        if self.config.noise == "masking":
            return x * (torch.rand_like(x) >= level)
        return (x + level * torch.randn_like(x)).clamp_(0.0, 1.0)

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        # Steps 2 and 3 (the autoencoder's update): reconstruct the clean batch from its corrupted copy.
        return self.corrupt(x)

    @torch.no_grad()
    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        metrics = super().evaluate(batch)  # loss and recon_error on clean inputs
        x = batch.x
        metrics["denoise_error"] = mean_squared_error(self.reconstruct(self.corrupt(x)), x)
        return metrics


def make_dae(config: DAEConfig, data_spec: DataSpec, device: str) -> DenoisingAutoencoder:
    """The ``dae`` factory."""
    config.validate()
    check_data(config, data_spec)
    return DenoisingAutoencoder(config, data_spec, device)
