"""Fully connected building blocks: :func:`mlp`, :class:`EnsembleMLP`, and Adam's fastest options."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# Activations whose in-place form autograd supports (their backward reads the output only).
_IN_PLACE_SAFE = (nn.ReLU, nn.ELU, nn.LeakyReLU)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A fully connected network ``in -> hidden... -> out`` with ``activation`` between layers."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        # Each activation follows a Linear layer, whose backward does not need its output, so
        # the activation may overwrite it instead of allocating a new tensor.
        layers += [nn.Linear(last, width), activation(inplace=True) if activation in _IN_PLACE_SAFE else activation()]
        last = width
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


class EnsembleMLP(nn.Module):
    """``n`` independent MLPs evaluated in one batched pass.

    Weights are stacked as ``[n, in, out]`` so that, e.g., SAC's twin critics cost one matrix
    multiply per layer instead of two passes. Each member is initialised as ``nn.Linear``
    would be, so an ensemble of one behaves like :func:`mlp`.
    """

    def __init__(self, n: int, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        sizes = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
        self.n = n

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """``x`` is ``[B, in]`` (shared by all members) or ``[n, B, in]``; returns ``[n, B, out]``.

        ``detach_params`` evaluates the ensemble without letting gradients reach its weights
        (an actor's loss must move the actor only), without toggling ``requires_grad``.
        """
        layers = list(zip(self.weights, self.biases))
        if detach_params:
            layers = [(w.detach(), b.detach()) for w, b in layers]
        if x.dim() == 2:
            x = x.expand(self.n, *x.shape)  # a view: every member reads the same rows
        *hidden, (w_out, b_out) = layers
        for w, b in hidden:
            # In place: baddbmm's backward does not need its output, so ReLU may overwrite it.
            x = torch.baddbmm(b, x, w).relu_()
        if w_out.shape[-1] == 1:
            # A one-unit output (a critic's value) as multiply-and-sum: on CPU a batched matrix
            # multiply with a single output column, and its backward, run several times slower.
            return (x * w_out.transpose(1, 2)).sum(-1, keepdim=True) + b_out
        return torch.baddbmm(b_out, x, w_out)


def fast_adam_options(device: torch.device | str) -> dict[str, bool]:
    """Keyword arguments for ``torch.optim.Adam``: the fused kernel where this torch has it for
    the device (CPU and CUDA since torch 2.4; one kernel call per step), else the multi-tensor one.
    On CUDA the optimiser is also ``capturable``: its step counts and learning rates stay on the
    device, so a step never waits on the host and can be captured in a CUDA graph (``--compile``)."""
    kind = torch.device(device).type
    if kind in {"cuda", "cpu"} and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4):
        return {"fused": True, "capturable": True} if kind == "cuda" else {"fused": True}
    return {"foreach": True}
