"""Distributions and densities that policies and latent-variable models share.

* :class:`TanhGaussian`: the squashed Gaussian of SAC's policy (Haarnoja et al. 2018, appendix C).
* :func:`gumbel_softmax`: relaxed one-hot samples (Jang et al. 2017; Maddison et al. 2017),
  and :func:`categorical_kl_uniform`, the KL term of a categorical VAE.
* :func:`gaussian_log_prob` and :func:`gaussian_kl_standard`: diagonal Gaussians, summed over
  the last dimension.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)
HALF_LOG_2PI = 0.5 * LOG_2PI
LOG_2 = math.log(2.0)


class TanhGaussian:
    """``a = scale * tanh(u) + bias`` with ``u ~ N(mean, exp(log_std))``, independent per dimension.

    The distribution of SAC's policy: the Gaussian's samples are squashed into the box
    ``[bias - scale, bias + scale]`` (an action space's bounds). Log-probabilities account for
    the change of variables, ``log pi(a) = log N(u) - sum_i log(scale_i (1 - tanh(u_i)^2))``
    (Haarnoja et al. 2018, appendix C, eq. 21), and are summed over the last dimension into
    ``[..., 1]``.

    Each of :meth:`rsample` and :meth:`sample` draws one ``randn_like(mean)``, nothing else, so
    the random stream, and a run that replays it, does not depend on which one is called.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        log_std: torch.Tensor,
        scale: torch.Tensor | float = 1.0,
        bias: torch.Tensor | float = 0.0,
    ) -> None:
        self.mean = mean
        self.log_std = log_std
        self.scale = torch.as_tensor(scale, dtype=mean.dtype, device=mean.device)
        self.bias = torch.as_tensor(bias, dtype=mean.dtype, device=mean.device)

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """The action ``scale * tanh(u) + bias`` of a pre-squash sample ``u``."""
        return torch.tanh(u) * self.scale + self.bias

    def _log_det(self, u: torch.Tensor) -> torch.Tensor:
        # log(scale * (1 - tanh(u)^2)) = 2 (log 2 - u - softplus(-2u)) + log scale: the same
        # quantity without forming 1 - tanh(u)^2, which rounds to 0 (log -inf) once |u| > ~9.
        return 2.0 * (LOG_2 - u - F.softplus(-2.0 * u)) + torch.log(self.scale)

    def rsample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and its log-probability ``[..., 1]``; gradients reach ``mean`` and ``log_std``."""
        noise = torch.randn_like(self.mean)
        u = self.mean + noise * self.log_std.exp()
        # log N(u; mean, std) from the noise directly: (u - mean) / std is ``noise``.
        log_prob = -0.5 * noise.pow(2) - self.log_std - HALF_LOG_2PI
        action = self.squash(u)
        return action, (log_prob - self._log_det(u)).sum(-1, keepdim=True)

    def sample(self) -> torch.Tensor:
        """The action of :meth:`rsample` without its log-probability (for acting): the same draw."""
        return self.squash(self.mean + torch.randn_like(self.mean) * self.log_std.exp())

    def mode(self) -> torch.Tensor:
        """The squashed mean, the deterministic action used for evaluation."""
        return self.squash(self.mean)

    def log_prob(self, action: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Log-probability ``[..., 1]`` of given actions (e.g. a dataset's), by inverting the squash.

        Actions on the box's edge have no finite ``u``; they are pulled ``eps`` inside it, so
        expect large but finite values there. Prefer :meth:`rsample`'s value for own samples.
        """
        y = ((action - self.bias) / self.scale).clamp(-1.0 + eps, 1.0 - eps)
        u = torch.atanh(y)
        z = (u - self.mean) * torch.exp(-self.log_std)
        log_prob = -0.5 * z.pow(2) - self.log_std - HALF_LOG_2PI
        return (log_prob - self._log_det(u)).sum(-1, keepdim=True)


def gumbel_softmax(logits: torch.Tensor, temperature: float | torch.Tensor, hard: bool = False) -> torch.Tensor:
    """Relaxed one-hot samples over the last dimension (Jang et al. 2017; Maddison et al. 2017).

    ``softmax((logits + g) / temperature)`` with ``g`` i.i.d. Gumbel(0, 1): as the temperature
    goes to 0 the samples become one-hot, distributed as ``Categorical(softmax(logits))`` (the
    Gumbel-max trick), and they stay differentiable in ``logits`` at every temperature.

    ``hard=True`` is the straight-through estimator: the forward value is exactly the one-hot
    of the soft sample's argmax, the backward pass the soft sample's gradient.
    """
    # Gumbel(0, 1) by inverting its CDF, -log(-log U). rand draws from [0, 1): clamping away
    # U = 0 keeps -log U finite; U < 1 keeps it positive.
    uniform = torch.rand_like(logits).clamp_(min=torch.finfo(logits.dtype).tiny)
    gumbel = -torch.log(-torch.log(uniform))
    soft = torch.softmax((logits + gumbel) / temperature, dim=-1)
    if not hard:
        return soft
    one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    # soft - soft.detach() is exactly zero, so the value is exactly one-hot, while its gradient
    # is the soft sample's. (one_hot - soft).detach() + soft would round 1 - s + s off 1.
    return one_hot + (soft - soft.detach())


def categorical_kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    """``KL(q || Uniform(K))`` for ``q = softmax(logits)`` over the last dimension, summed over
    the latent variables: ``[B, N, K]`` (or ``[B, K]``, or ``[B, ..., K]``) -> ``[B]``.

    ``KL = sum_k q_k log q_k + log K``, between 0 (q uniform) and ``log K`` (q one-hot) per variable.
    """
    log_q = torch.log_softmax(logits, dim=-1)
    per_variable = (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])
    return per_variable.reshape(logits.shape[0], -1).sum(-1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor | float) -> torch.Tensor:
    """``log N(x; mean, diag(exp(log_var)))`` summed over the last dimension: ``[..., D]`` -> ``[...]``."""
    log_var = torch.as_tensor(log_var, dtype=mean.dtype, device=mean.device)
    return -0.5 * (LOG_2PI + log_var + (x - mean).pow(2) * torch.exp(-log_var)).sum(-1)


def gaussian_kl_standard(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, diag(exp(log_var))) || N(0, I))`` summed over the last dimension: ``[..., D]`` -> ``[...]``.

    The closed form of a VAE's KL term (Kingma and Welling 2014, appendix B).
    """
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)
