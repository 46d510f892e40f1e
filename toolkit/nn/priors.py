"""Pluggable priors ``p(z)`` over the latents of a VAE.

A VAE chooses its prior with a string, ``--set prior=NAME:ARGS``: the name is looked up in
the ``toolkit.priors`` entry-point group and the comma-separated arguments go to the class's
:meth:`Prior.from_args`. Two priors ship with the toolkit:

* ``normal:M,S`` -- a fixed isotropic Gaussian ``N(M, S^2)`` per dimension (``S`` is a
  standard deviation, not a variance: ``normal:1,2`` is ``N(1, 4)``); bare ``normal`` is
  ``N(0, 1)``, the prior of Kingma & Welling (2014). Its KL term has a closed form.
* ``mixture:K`` -- a learned mixture of ``K`` diagonal Gaussians (bare ``mixture`` is
  ``K = 10``), trained with the rest of the VAE; a multimodal prior can match the aggregate
  posterior better than one Gaussian (cf. Tomczak & Welling 2018, whose VampPrior is a
  mixture of posteriors at learned pseudo-inputs). Its KL term is a Monte-Carlo estimate.

Adding a prior from another package
-----------------------------------
1. Subclass :class:`Prior`: implement ``sample``, ``log_prob`` and the classmethod
   ``from_args(args, latent_dim)``, which must raise ``ValueError`` with one sentence for
   malformed arguments (it is also called to validate configs, so keep it cheap). Override
   ``kl`` and set ``closed_form_kl = True`` only if you have an exact KL; otherwise the
   Monte-Carlo estimate of the base class is used. Set ``api_version = 1`` (the plugin API
   version, as every plugin declares). Register trainable parts as parameters and fixed
   ones as buffers: the VAE optimises the prior's parameters and checkpoints its state.
2. Name the class in your ``pyproject.toml``::

       [project.entry-points."toolkit.priors"]
       laplace = "my_package.priors:LaplacePrior"

3. ``pip install`` your package; ``--set prior=laplace:0,1`` now selects it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit import PLUGIN_API_VERSION
from toolkit.errors import ToolkitError, did_you_mean
from toolkit.nn.distributions import gaussian_log_prob


class Prior(nn.Module):
    """A distribution ``p(z)`` over ``D``-dimensional latents.

    * ``sample(n)`` -> ``[n, D]`` draws from ``p``;
    * ``log_prob(z)`` -> ``log p(z)`` summed over ``D``: ``[..., D]`` -> ``[...]``;
    * ``kl(mu, log_var, z)`` -> ``[B]``: ``KL(q(z|x) || p(z))`` for a diagonal Gaussian
      posterior ``q = N(mu, exp(log_var))`` (``mu``, ``log_var`` are ``[B, D]``). Exact where
      a closed form exists (then :attr:`closed_form_kl` is True and ``z`` is ignored), else the
      Monte-Carlo estimate ``log q(z) - log p(z)`` averaged over the posterior samples ``z``,
      shaped ``[S, B, D]`` (or ``[B, D]`` for one sample).
    """

    #: True when :meth:`kl` is exact and does not read ``z``, so one posterior sample suffices.
    closed_form_kl: bool = False
    #: The plugin API version the prior was written for; every registered prior must set it.
    api_version: int | None = None

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if latent_dim <= 0:
            raise ValueError(f"a prior needs latent_dim >= 1, got {latent_dim}")
        self.latent_dim = latent_dim

    @classmethod
    def from_args(cls, args: list[str], latent_dim: int) -> Prior:
        """Build the prior from the strings after ``NAME:`` (split at commas; ``[]`` for a bare
        name). Raise ``ValueError`` with one sentence when they are malformed."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_args")

    def sample(self, n: int) -> torch.Tensor:
        """``n`` latents ``[n, D]`` drawn from the prior."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` summed over the latent dimension: ``[..., D]`` -> ``[...]``."""
        raise NotImplementedError

    def kl(self, mu: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``KL(N(mu, exp(log_var)) || p)`` per example ``[B]`` (Monte Carlo unless overridden)."""
        return self.monte_carlo_kl(mu, log_var, z)

    def monte_carlo_kl(self, mu: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The unbiased estimate ``mean_s [log q(z_s|x) - log p(z_s)]`` with samples ``z_s ~ q``
        given as ``[S, B, D]`` or ``[B, D]``; returns ``[B]``."""
        gap = gaussian_log_prob(z, mu, log_var) - self.log_prob(z)
        return gap.reshape(-1, mu.shape[0]).mean(0)


def _floats(usage: str, args: list[str]) -> list[float]:
    """``args`` as finite floats, or a ValueError quoting ``usage``."""
    try:
        values = [float(a) for a in args]
    except ValueError:
        values = [math.nan]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{usage} needs finite numbers, not '{','.join(args)}'")
    return values


class NormalPrior(Prior):
    """The fixed Gaussian ``N(mean, std^2)`` on every latent dimension (``normal:M,S``).

    With the default ``N(0, 1)`` this is the prior of Kingma & Welling (2014), "Auto-Encoding
    Variational Bayes". Mean and std are buffers: saved with the model, never trained.
    """

    closed_form_kl = True
    api_version = PLUGIN_API_VERSION

    def __init__(self, latent_dim: int, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__(latent_dim)
        if not std > 0:
            raise ValueError(f"the normal prior's standard deviation must be positive, got {std}")
        self.register_buffer("mean", torch.full((latent_dim,), float(mean)))
        self.register_buffer("std", torch.full((latent_dim,), float(std)))

    @classmethod
    def from_args(cls, args: list[str], latent_dim: int) -> NormalPrior:
        """``[]`` -> ``N(0, 1)``; ``[M, S]`` -> ``N(M, S^2)``."""
        if not args:
            return cls(latent_dim)
        if len(args) != 2:
            raise ValueError(f"normal:M,S takes a mean and a standard deviation (e.g. normal:0,1), not '{','.join(args)}'")
        mean, std = _floats("normal:M,S", args)
        if std <= 0:
            raise ValueError(f"normal:M,S needs a positive standard deviation S, not {args[1]}")
        return cls(latent_dim, mean, std)

    def sample(self, n: int) -> torch.Tensor:
        return self.mean + self.std * torch.randn(n, self.latent_dim, device=self.mean.device)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(z, self.mean, 2.0 * torch.log(self.std))

    def kl(self, mu: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # Per dimension, KL(N(mu, sq^2) || N(m, s^2)) = log(s / sq) + (sq^2 + (mu - m)^2) / (2 s^2) - 1/2.
        var_p = self.std.pow(2)
        per_dim = torch.log(self.std) - 0.5 * log_var + (log_var.exp() + (mu - self.mean).pow(2)) / (2.0 * var_p) - 0.5
        return per_dim.sum(-1)


class MixturePrior(Prior):
    """A learned mixture of ``K`` diagonal Gaussians (``mixture:K``):
    ``p(z) = sum_k pi_k N(z; m_k, diag(exp(v_k)))``.

    Means start as standard-normal draws so that the components begin spread out (identical
    components would receive identical gradients and never separate); log-variances start at
    0 and mixture weights uniform. Everything is a parameter trained with the VAE. Its KL term
    has no closed form, so the VAE uses Monte-Carlo estimates (``kl_samples`` samples).
    """

    api_version = PLUGIN_API_VERSION

    def __init__(self, latent_dim: int, components: int = 10) -> None:
        super().__init__(latent_dim)
        if components < 1:
            raise ValueError(f"a mixture prior needs at least one component, got {components}")
        self.components = components
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.log_vars = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    @classmethod
    def from_args(cls, args: list[str], latent_dim: int) -> MixturePrior:
        """``[]`` -> 10 components; ``[K]`` -> ``K`` components."""
        if not args:
            return cls(latent_dim)
        if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
            raise ValueError(f"mixture:K takes a whole number of components K >= 1 (e.g. mixture:10), not '{','.join(args)}'")
        return cls(latent_dim, int(args[0]))

    def sample(self, n: int) -> torch.Tensor:
        k = torch.multinomial(torch.softmax(self.logits, -1), n, replacement=True)
        eps = torch.randn(n, self.latent_dim, device=self.means.device)
        return self.means[k] + torch.exp(0.5 * self.log_vars[k]) * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        # log sum_k pi_k N(z; m_k, v_k), evaluated for every component at once: [..., K].
        per_component = gaussian_log_prob(z.unsqueeze(-2), self.means, self.log_vars)
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + per_component, dim=-1)


def _split(spec: str) -> tuple[str, list[str]]:
    name, sep, rest = spec.strip().partition(":")
    args = [a.strip() for a in rest.split(",")] if sep else []
    return name.strip(), args


def _prior_class(name: str) -> type[Prior]:
    """The registered class called ``name``; ValueError (one sentence) if there is none."""
    import toolkit.registry as reg  # read the attribute at call time: tests swap the registry

    names = reg.registry.names(reg.PRIORS)
    if name not in names:
        installed = ", ".join(names) or "none"
        hint = did_you_mean(name, names)
        raise ValueError(f"unknown prior '{name}' (installed: {installed})" + (f".{hint}" if hint else ""))
    try:
        cls = reg.registry.prior(name)
    except ToolkitError as exc:
        raise ValueError(str(exc).rstrip(".")) from None
    if not (isinstance(cls, type) and issubclass(cls, Prior)):
        raise ValueError(f"the prior '{name}' names {cls!r}, which is not a toolkit.nn.priors.Prior subclass")
    return cls


def parse_prior(spec: str, latent_dim: int) -> Prior:
    """Build the prior that ``spec`` (``NAME`` or ``NAME:ARG,ARG``) names, for ``latent_dim``
    latents. Raises ValueError with one sentence for an unknown name or malformed arguments."""
    name, args = _split(spec)
    if not name:
        raise ValueError(f"prior '{spec}' is malformed; write NAME or NAME:ARGS, e.g. normal:0,1")
    cls = _prior_class(name)
    try:
        return cls.from_args(args, latent_dim)
    except ValueError as exc:
        raise ValueError(f"prior '{spec}' is malformed: {exc}") from None


def check_prior(spec: str) -> None:
    """Raise ValueError (one sentence) unless ``spec`` names an installed prior with valid
    arguments; for config validation. Builds the prior once on one latent dimension, without
    touching the global random stream (validation must not shift a seeded run)."""
    with torch.random.fork_rng(devices=[]):
        parse_prior(spec, latent_dim=1)


__all__ = ["MixturePrior", "NormalPrior", "Prior", "check_prior", "parse_prior"]
