"""Entry-point targets of the SAC plugins.

This module is imported by ``toolkit list``: it must stay light (config dataclasses and
specs only); the algorithm in :mod:`toolkit_sac.sac` is imported when an agent is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from toolkit.configs import CuriosityConfig, OffPolicyConfig, check_encoder, encoder_option, encoder_trainable_option
from toolkit.config import nested, option
from toolkit.registry import AgentSpec


@dataclass(frozen=True)
class SACConfig(OffPolicyConfig):
    """Soft Actor-Critic settings; defaults follow Haarnoja et al. (2018) for MuJoCo."""

    lr: float = option(3e-4, "Adam learning rate of actor, critics and temperature (paper: 3e-4).", gt=0)
    critic_lr: float | None = option(None, "Critic learning rate, if it should differ from lr.", gt=0)
    gamma: float = option(0.99, "Discount factor.", gt=0, le=1)
    tau: float = option(0.005, "Polyak averaging rate of the target critics.", gt=0, le=1)
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden layer widths of actor and critics.", ge=1, nonempty=True)
    autotune_alpha: bool = option(True, "Tune the entropy temperature alpha to reach target_entropy.")
    alpha: float = option(1.0, "Initial (or, without autotuning, fixed) entropy temperature.", gt=0)
    target_entropy: float | None = option(None, "Entropy target; None means -dim(action space).")
    encoder: str = encoder_option("Shared by actor and critics, trained by the critic loss (DrQ).")
    encoder_trainable: bool = encoder_trainable_option()
    augment: Literal["none", "shift"] = option(
        "shift", "Image observations: DrQ's random shift of up to 4 pixels on obs and next_obs in each update, or none; vectors are never augmented."
    )

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        super().validate()
        check_encoder(self.encoder)


@dataclass(frozen=True)
class SACICMConfig(SACConfig):
    """SAC with an Intrinsic Curiosity Module paying an exploration bonus."""

    curiosity: CuriosityConfig = nested(CuriosityConfig, "Intrinsic Curiosity Module settings.")

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        super().validate()
        self.curiosity.validate()


SAC = AgentSpec(
    name="sac",
    config=SACConfig,
    factory="toolkit_sac.sac:make_sac",
    kind="off-policy",
    action_spaces=("box",),
    observation_spaces=("box", "image"),
    description="Soft Actor-Critic (Haarnoja et al. 2018): twin critics, tanh-Gaussian policy, auto-tuned entropy.",
    api_version=1,
)

SAC_ICM = AgentSpec(
    name="sac-icm",
    config=SACICMConfig,
    factory="toolkit_sac.sac:make_sac_icm",
    kind="off-policy",
    action_spaces=("box",),
    observation_spaces=("box", "image"),
    description="SAC with the Intrinsic Curiosity Module (Pathak et al. 2017) as an exploration bonus.",
    api_version=1,
)
