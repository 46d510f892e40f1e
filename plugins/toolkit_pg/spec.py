"""Entry-point targets of the policy-gradient plugins.

This module is imported by ``toolkit list``: it must stay light (config dataclasses and
specs only, no torch); the algorithms in :mod:`toolkit_pg.reinforce`, :mod:`toolkit_pg.a2c`
and :mod:`toolkit_pg.ppo` are imported when an agent is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from toolkit.config import nested, option
from toolkit.configs import CuriosityConfig, OnPolicyConfig, check_encoder, encoder_option, encoder_trainable_option
from toolkit.registry import AgentSpec


@dataclass(frozen=True)
class PolicyGradientConfig(OnPolicyConfig):
    """Settings every policy-gradient agent shares: networks, optimiser, discount, loss weights."""

    lr: float = option(3e-4, "Learning rate of the optimiser.", gt=0)
    lr_schedule: Literal["constant", "linear"] = option(
        "constant", "Keep lr constant, or decay it linearly to 0 over lr_decay_steps env steps."
    )
    lr_decay_steps: int = option(
        1_000_000, "Env steps over which a linear lr_schedule reaches 0 (each update counts num_envs * rollout_steps).", ge=1
    )
    gamma: float = option(0.99, "Discount factor.", gt=0, le=1)
    hidden_sizes: tuple[int, ...] = option((64, 64), "Hidden layer widths of the policy and value networks.", ge=1, nonempty=True)
    activation: Literal["tanh", "relu"] = option("tanh", "Activation between hidden layers.")
    shared_network: bool = option(False, "One torso with a policy head and a value head, instead of two networks.")
    ent_coef: float = option(0.0, "Weight of the entropy bonus in the loss.", ge=0)
    vf_coef: float = option(0.5, "Weight of the value (baseline) loss in the loss.", ge=0)
    max_grad_norm: float | None = option(0.5, "Clip the gradient's global norm to this (None: no clipping).", gt=0)
    normalize_advantage: bool = option(False, "Standardise advantages (zero mean, unit std) before the policy loss.")
    normalize_obs: bool = option(False, "Standardise observations with running statistics (kept in checkpoints).")
    init_log_std: float = option(0.0, "Box actions: initial log standard deviation of the Gaussian policy.")
    encoder: str = encoder_option("One encoder shared by the policy and value networks.")
    encoder_trainable: bool = encoder_trainable_option()

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        super().validate()
        check_encoder(self.encoder)


@dataclass(frozen=True)
class ReinforceConfig(PolicyGradientConfig):
    """REINFORCE with a learned baseline: one gradient step per batch of whole episodes."""

    num_envs: int = option(8, "Environments stepped side by side; each rollout holds their whole episodes.", ge=1)
    rollout_steps: int = option(
        1, "Steps per environment before the rollout may end, each env then finishing its episode (1: one episode each).", ge=1
    )
    complete_episodes: bool = option(True, "Whole-episode returns: extend each rollout until every episode has ended.")
    lr: float = option(1e-3, "Adam learning rate of policy and baseline.", gt=0)
    ent_coef: float = option(0.01, "Weight of the entropy bonus in the loss.", ge=0)
    vf_coef: float = option(0.5, "Weight of the baseline's squared error in the loss.", ge=0)
    normalize_advantage: bool = option(True, "Standardise G_t - b(s_t) within the batch (reduces the gradient's variance).")


@dataclass(frozen=True)
class A2CConfig(PolicyGradientConfig):
    """Advantage actor-critic (synchronous A3C); defaults follow stable-baselines3's A2C."""

    num_envs: int = option(8, "Environments stepped side by side (the synchronous workers).", ge=1)
    rollout_steps: int = option(5, "Steps per environment between updates (the n of n-step returns).", ge=1)
    lr: float = option(7e-4, "Learning rate (stable-baselines3: 7e-4).", gt=0)
    advantage: Literal["n-step", "gae"] = option(
        "n-step", "Advantage estimate: n-step returns minus V(s), or GAE(lambda) with gae_lambda."
    )
    gae_lambda: float = option(0.95, "lambda of GAE when advantage=gae.", ge=0, le=1)
    optimizer: Literal["rmsprop", "adam"] = option("rmsprop", "Optimiser (the A3C paper and stable-baselines3 use RMSprop).")


@dataclass(frozen=True)
class PPOConfig(PolicyGradientConfig):
    """Proximal Policy Optimisation with the clipped surrogate; defaults follow the paper and stable-baselines3."""

    num_envs: int = option(8, "Environments stepped side by side.", ge=1)
    rollout_steps: int = option(256, "Steps per environment in each rollout (num_envs * rollout_steps per update).", ge=1)
    minibatch_size: int = option(64, "Transitions per gradient step; must divide num_envs * rollout_steps.", ge=1)
    epochs: int = option(10, "Passes over each rollout.", ge=1)
    gae_lambda: float = option(0.95, "lambda of the GAE(lambda) advantage estimate.", ge=0, le=1)
    clip_range: float = option(0.2, "epsilon of the clipped surrogate: ratios are clipped to [1-eps, 1+eps].", gt=0)
    clip_range_vf: float | None = option(
        None, "Clip the value prediction's change from its rollout value to this (None: no value clipping).", gt=0
    )
    normalize_advantage: bool = option(True, "Standardise advantages within each minibatch.")

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        super().validate()
        rollout = self.num_envs * self.rollout_steps
        if not self.complete_episodes and rollout % self.minibatch_size:
            raise ValueError(minibatch_advice(self.num_envs, self.rollout_steps, self.minibatch_size))


def minibatch_advice(num_envs: int, rollout_steps: int, minibatch_size: int) -> str:
    """One sentence: why the rollout does not split into minibatches, and what would."""
    rollout = num_envs * rollout_steps
    divisors = [d for d in range(1, rollout) if rollout % d == 0]
    nearest = sorted(sorted(divisors, key=lambda d: abs(d - minibatch_size))[:4])
    sizes = ", ".join(f"{d} ({rollout // d} minibatches)" for d in nearest)
    step = minibatch_size // math.gcd(minibatch_size, num_envs)  # rollout_steps must be a multiple of this
    return (
        f"a rollout of num_envs * rollout_steps = {num_envs} * {rollout_steps} = {rollout} transitions does not "
        f"split into minibatches of minibatch_size={minibatch_size}; use a minibatch_size that divides {rollout}, "
        f"such as {sizes}, or make rollout_steps a multiple of {step} (the next one is {-(-rollout_steps // step) * step})."
    )


@dataclass(frozen=True)
class PPOICMConfig(PPOConfig):
    """PPO with an Intrinsic Curiosity Module paying an exploration bonus."""

    curiosity: CuriosityConfig = nested(CuriosityConfig, "Intrinsic Curiosity Module settings.")

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        super().validate()
        self.curiosity.validate()


REINFORCE = AgentSpec(
    name="reinforce",
    config=ReinforceConfig,
    factory="toolkit_pg.reinforce:make_reinforce",
    kind="on-policy",
    action_spaces=("discrete", "box"),
    observation_spaces=("box", "image"),
    description="REINFORCE (Williams 1992) with a learned baseline and an entropy bonus, on whole episodes.",
    default_steps=500_000,
    api_version=1,
)

A2C = AgentSpec(
    name="a2c",
    config=A2CConfig,
    factory="toolkit_pg.a2c:make_a2c",
    kind="on-policy",
    action_spaces=("discrete", "box"),
    observation_spaces=("box", "image"),
    description="Advantage actor-critic (Mnih et al. 2016, synchronous): n-step or GAE advantages, entropy bonus.",
    default_steps=1_000_000,
    api_version=1,
)

PPO = AgentSpec(
    name="ppo",
    config=PPOConfig,
    factory="toolkit_pg.ppo:make_ppo",
    kind="on-policy",
    action_spaces=("discrete", "box"),
    observation_spaces=("box", "image"),
    description="Proximal Policy Optimisation (Schulman et al. 2017): clipped surrogate, GAE, minibatch epochs.",
    default_steps=1_000_000,
    api_version=1,
)

PPO_ICM = AgentSpec(
    name="ppo-icm",
    config=PPOICMConfig,
    factory="toolkit_pg.ppo:make_ppo_icm",
    kind="on-policy",
    action_spaces=("discrete", "box"),
    observation_spaces=("box", "image"),
    description="PPO with the Intrinsic Curiosity Module (Pathak et al. 2017) as an exploration bonus.",
    default_steps=1_000_000,
    api_version=1,
)
