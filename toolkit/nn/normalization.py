"""Running statistics that standardise inputs (observations, rewards) by everything seen so far."""

from __future__ import annotations

import torch
from torch import nn


class RunningNormalizer(nn.Module):
    """Standardises observations with their running mean and variance over everything seen.

    The statistics are buffers, so they travel with the module's state dict (checkpoints). They
    change only through :meth:`update`, never while acting, so evaluating a policy leaves them alone.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(eps))
        self.clip, self.eps = clip, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, x: torch.Tensor, weight: torch.Tensor) -> None:
        """Merge a weighted batch ``x [..., *shape]`` (weights ``[...]``: 0 for padding) into the
        statistics, by Chan et al.'s parallel variance formula; no host synchronisation."""
        w = weight.reshape(*weight.shape, *[1] * (x.dim() - weight.dim()))
        n = weight.sum()
        dims = tuple(range(weight.dim()))
        batch_mean = (w * x).sum(dims) / n.clamp(min=1.0)
        batch_var = (w * (x - batch_mean).pow(2)).sum(dims) / n.clamp(min=1.0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total) / total)
        self.count.copy_(total)
