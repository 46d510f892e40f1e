"""What the vision models share: encoder and decoder networks, checks of the data against the
config, and per-example likelihoods and errors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model import DataSpec
from toolkit.nn.conv import ConvDecoder, ConvEncoder
from toolkit.nn.mlp import fast_adam_options, mlp
from toolkit_vision.spec import VisionConfig


def check_data(config: VisionConfig, spec: DataSpec) -> None:
    """Refuse a conv encoder on vector data, as one sentence naming the source."""
    if config.encoder == "conv" and not spec.is_image:
        source = spec.source or "the data"
        raise ToolkitError(
            f"encoder=conv needs images (C, H, W); {source} gives vectors of shape {tuple(spec.shape)}; use encoder=mlp."
        )


def make_encoder(config: VisionConfig, spec: DataSpec, out_dim: int) -> nn.Module:
    """Examples ``[B, *shape]`` -> ``[B, out_dim]``: a ConvEncoder, or an MLP on the flattened input."""
    if config.encoder == "conv":
        return ConvEncoder(tuple(spec.shape), out_dim)  # type: ignore[arg-type]
    return nn.Sequential(nn.Flatten(), mlp(math.prod(spec.shape), config.hidden_sizes, out_dim))


def make_decoder(config: VisionConfig, spec: DataSpec, in_dim: int) -> nn.Module:
    """Latents ``[B, in_dim]`` -> logits ``[B, *shape]`` (sigmoid gives values in [0, 1]);
    the mirror image of :func:`make_encoder`."""
    if config.encoder == "conv":
        return ConvDecoder(in_dim, tuple(spec.shape))  # type: ignore[arg-type]
    widths = tuple(reversed(config.hidden_sizes))
    return nn.Sequential(mlp(in_dim, widths, math.prod(spec.shape)), nn.Unflatten(1, tuple(spec.shape)))


def adam(modules: list[nn.Module], config: VisionConfig, device: str) -> torch.optim.Optimizer:
    """One Adam over every parameter of ``modules``."""
    params = [p for m in modules for p in m.parameters()]
    return torch.optim.Adam(params, lr=config.lr, **fast_adam_options(device))


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | logits)`` of independent Bernoullis per example ``[B]``, summed over values.

    Equal to minus the binary cross-entropy; on values strictly between 0 and 1 it is the
    usual (unnormalised) cross-entropy objective rather than a density.
    """
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def mean_squared_error(prediction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per input value, one number per example ``[B]``."""
    return (prediction - x).pow(2).flatten(1).mean(1)
