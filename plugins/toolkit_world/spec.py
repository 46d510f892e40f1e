"""Config and spec of the ``world-model`` model (torch-free: ``toolkit list`` imports this).

The model itself is in :mod:`toolkit_world.model`, imported only when a model is built; the
loop that trains it is :class:`toolkit.loops.world_model.WorldModelLoop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from toolkit.config import check_fields, option
from toolkit.registry import ModelSpec


@dataclass(frozen=True)
class WorldModelConfig:
    """V (a VAE of frames) then M (an MDN-RNN over V's latents and the actions), trained in two phases."""

    # --- V: the vision model ------------------------------------------------------------------
    vae_run: str = option(
        "", "A trained `vae` or `beta-vae` run directory whose VAE becomes V, frozen: phase 1 is skipped and the "
        "V settings below (latent_dim, encoder, hidden_sizes, likelihood, vae_*) are taken from that run."
    )
    latent_dim: int = option(32, "Size of V's latent z (paper: 32).", ge=1)
    encoder: Literal["auto", "conv", "mlp"] = option(
        "auto", "V's encoder/decoder family: 'conv' for images and 'mlp' for vectors ('auto'), or force one."
    )
    hidden_sizes: tuple[int, ...] = option((512, 256), "Hidden widths of V's MLP encoder (encoder=mlp only).", ge=1, nonempty=True)
    likelihood: Literal["bernoulli", "gaussian"] = option(
        "bernoulli", "V's p(x|z): 'bernoulli' cross-entropy, or 'gaussian' with a learned per-pixel std."
    )
    kl_tolerance: float = option(
        0.5, "Free bits of V, as the paper: its KL term counts only above kl_tolerance * latent_dim nats per frame, "
        "so V can use that much information for free instead of collapsing onto the mean frame (0: the plain ELBO).", ge=0
    )
    vae_steps: int = option(2_000, "Phase 1: gradient steps on V before M trains; they count in --steps.", ge=0)
    vae_batch_size: int = option(64, "Frames per gradient step of V.", ge=1)
    vae_lr: float = option(1e-3, "Adam learning rate of V.", gt=0)
    # --- M: the memory model ------------------------------------------------------------------
    hidden: int = option(256, "LSTM hidden units of the MDN-RNN (paper: 256 for CarRacing); h is part of the dream's observation.", ge=1)
    mixtures: int = option(5, "Gaussians in the mixture over each latent dimension of z_{t+1} (paper: 5).", ge=1)
    seq_len: int = option(32, "Steps in each training window of M (windows stay inside one episode).", ge=1)
    batch_size: int = option(32, "Windows per gradient step of M.", ge=1)
    lr: float = option(1e-3, "Adam learning rate of M.", gt=0)
    z_source: Literal["sample", "mean"] = option(
        "sample", "The z that M learns from: a fresh sample of V's posterior per window (the paper's), or its mean."
    )
    reward_weight: float = option(1.0, "Weight of the reward head's squared error in M's loss.", ge=0)
    termination_weight: float = option(1.0, "Weight of the termination head's cross-entropy in M's loss.", ge=0)
    grad_clip: float = option(1.0, "Largest global norm of M's gradient (0: no clipping).", ge=0)


    def validate(self) -> None:
        """Raise ValueError for settings that cannot work: no rules tie fields together here,
        so this only checks the bounds declared on each field."""
        check_fields(self)


WORLD_MODEL = ModelSpec(
    name="world-model",
    config=WorldModelConfig,
    factory="toolkit_world.model:make_world_model",
    kind="world-model",
    description="World model (Ha & Schmidhuber 2018): a VAE of frames and an MDN-RNN of latent dynamics, "
    "reward and termination; dream in it with --env toolkit/Dream-v0.",
    default_steps=10_000,
    api_version=1,
)
