"""Masked autoencoder (He, Chen, Xie, Li, Dollar & Girshick 2022, "Masked Autoencoders Are
Scalable Vision Learners"), scaled down to small images and MLPs.

1. Cut each image into non-overlapping ``patch_size x patch_size`` patches (a vector into
   contiguous chunks of ``patch_size`` values).
2. Hide a random ``mask_ratio`` of the patches, a fresh choice per example and step.
3. Encode what is visible. The paper's ViT encoder drops masked patches altogether and the
   decoder inserts a shared, learned *mask token* in their place. An MLP or CNN needs a fixed
   input layout, so here the mask token (a learned patch of values) replaces each hidden
   patch before the whole image is encoded; the encoder learns to treat it as "missing".
4. Decode a full image and score it **on the masked patches only**: predicting visible
   pixels is trivial, so only the hidden ones carry a learning signal. The paper uses squared
   error; pixels here are in [0, 1] and the score is binary cross-entropy as in every other
   model of this package, while :meth:`evaluate` reports the squared error
   (``masked_patch_error``).

For linear probes :meth:`encode` sees the whole image, nothing masked, as the paper's
encoder does after pre-training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model import AutoencoderModel, DataSpec, ExampleBatch
from toolkit_vision.common import adam, check_data, make_decoder, make_encoder, mean_squared_error
from toolkit_vision.spec import MAEConfig


class Patches:
    """Cuts examples into patches ``[B, n, patch_dim]`` and back (step 1)."""

    def __init__(self, shape: tuple[int, ...], patch_size: int) -> None:
        self.shape, self.p = shape, patch_size
        if len(shape) == 3:
            c, h, w = shape
            self.grid = (h // patch_size, w // patch_size)
            self.count, self.dim = self.grid[0] * self.grid[1], c * patch_size * patch_size
        else:
            self.grid = (math.prod(shape) // patch_size,)
            self.count, self.dim = self.grid[0], patch_size

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, *shape]`` -> ``[B, n, patch_dim]``."""
        b, p = x.shape[0], self.p
        if len(self.shape) == 3:
            gh, gw = self.grid
            x = x.reshape(b, self.shape[0], gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, self.count, self.dim)

    def join(self, patches: torch.Tensor) -> torch.Tensor:
        """``[B, n, patch_dim]`` -> ``[B, *shape]``."""
        b, p = patches.shape[0], self.p
        if len(self.shape) == 3:
            (gh, gw), c = self.grid, self.shape[0]
            patches = patches.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(b, *self.shape)


class MaskToken(nn.Module):
    """The learned stand-in for a hidden patch (step 3)."""

    def __init__(self, patch_dim: int) -> None:
        super().__init__()
        # Starting at 0 is "zero the hidden patches"; training moves it wherever helps.
        self.token = nn.Parameter(torch.zeros(patch_dim))

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``patches`` ``[B, n, d]`` with every patch where ``mask`` ``[B, n]`` is True replaced."""
        return torch.where(mask.unsqueeze(-1), self.token, patches)


class MaskedAutoencoder(AutoencoderModel):
    """An autoencoder trained to fill in randomly masked patches of its input."""

    def __init__(self, config: MAEConfig, spec: DataSpec, device: str) -> None:
        super().__init__()
        self.config, self.spec, self.device = config, spec, device
        self.latent_dim = config.latent_dim
        self.patches = Patches(tuple(spec.shape), config.patch_size)
        # A fixed number of hidden patches per example, at least one and never all of them.
        self.num_masked = min(self.patches.count - 1, max(1, round(config.mask_ratio * self.patches.count)))
        self.mask_token = MaskToken(self.patches.dim).to(device)
        self.encoder = make_encoder(config, spec, config.latent_dim).to(device)
        self.decoder = make_decoder(config, spec, config.latent_dim).to(device)
        self.optimizer = adam([self.mask_token, self.encoder, self.decoder], config, device)
        self.checkpointed = {
            "mask_token": self.mask_token,
            "encoder": self.encoder,
            "decoder": self.decoder,
            "optimizer": self.optimizer,
        }

    def random_mask(self, batch_size: int) -> torch.Tensor:
        """``[B, n]`` booleans, True for hidden patches: ``num_masked`` per row, uniformly at random (step 2)."""
        order = torch.rand(batch_size, self.patches.count, device=self.device).argsort(dim=1)
        mask = torch.zeros(batch_size, self.patches.count, dtype=torch.bool, device=self.device)
        return mask.scatter_(1, order[:, : self.num_masked], True)

    def _logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        visible = self.patches.join(self.mask_token(self.patches.split(x), mask))  # step 3
        return self.decoder(self.encoder(visible))

    def _on_masked(self, per_value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum of ``per_value`` ``[B, *shape]`` over the hidden patches' values, per example ``[B]``."""
        return (self.patches.split(per_value).sum(-1) * mask).sum(1)

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        x = batch.x
        mask = self.random_mask(x.shape[0])
        logits = self._logits(x, mask)
        # Step 4: cross-entropy on the hidden patches only.
        loss = self._on_masked(F.binary_cross_entropy_with_logits(logits, x, reduction="none"), mask).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def predict_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The model's full image ``[B, *shape]`` in [0, 1] when it sees ``x`` with the patches
        where ``mask`` ``[B, n]`` is True hidden."""
        return torch.sigmoid(self._logits(x, mask))

    def masked_patch_error(self, prediction: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error of ``prediction`` against ``x`` over the hidden patches' values, per
        example ``[B]``. Any prediction works, e.g. the training set's mean image as a baseline."""
        per_value = (prediction.expand_as(x) - x).pow(2)
        return self._on_masked(per_value, mask) / (mask.sum(1) * self.patches.dim)

    @torch.no_grad()
    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        x = batch.x
        mask = self.random_mask(x.shape[0])
        logits = self._logits(x, mask)
        return {
            "loss": self._on_masked(F.binary_cross_entropy_with_logits(logits, x, reduction="none"), mask),
            "masked_patch_error": self.masked_patch_error(torch.sigmoid(logits), x, mask),
            "recon_error": mean_squared_error(self.reconstruct(x), x),
        }

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # the whole input, nothing masked

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))


def make_mae(config: MAEConfig, data_spec: DataSpec, device: str) -> MaskedAutoencoder:
    """The ``mae`` factory: checks that the patches tile the input."""
    config.validate()
    check_data(config, data_spec)
    shape, p = tuple(data_spec.shape), config.patch_size
    source = data_spec.source or "the data"
    if len(shape) == 3 and (shape[1] % p or shape[2] % p):
        divisors = [d for d in range(1, min(shape[1:]) + 1) if shape[1] % d == 0 and shape[2] % d == 0]
        raise ToolkitError(
            f"patch_size={p} must divide the image height and width, but {source} gives images of shape {shape}; "
            f"use one of {', '.join(map(str, divisors))}."
        )
    if len(shape) != 3 and math.prod(shape) % p:
        n = math.prod(shape)
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ToolkitError(
            f"patch_size={p} must divide the vector length, but {source} gives vectors of shape {shape}; "
            f"use one of {', '.join(map(str, divisors))}."
        )
    if Patches(shape, p).count < 2:
        raise ToolkitError(
            f"patch_size={p} leaves a single patch on {source} (shape {shape}), so nothing can be masked; use a smaller one."
        )
    return MaskedAutoencoder(config, data_spec, device)
