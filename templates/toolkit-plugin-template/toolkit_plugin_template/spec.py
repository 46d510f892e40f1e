"""Entry-point target of the template plugin: the config dataclass and the AgentSpec.

``toolkit list`` imports this module to show the plugin, so it must stay light: no torch, no
gymnasium, nothing slow. The algorithm lives in :mod:`toolkit_plugin_template.ddpg` and is
named below by a ``"module:function"`` string, so it is imported only when an agent is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.config import option
from toolkit.configs import OffPolicyConfig
from toolkit.registry import AgentSpec


@dataclass(frozen=True)
class DDPGConfig(OffPolicyConfig):
    """DDPG settings (Lillicrap et al. 2016), with the simplifications TD3's authors used for
    their DDPG baseline: equal learning rates, Gaussian exploration noise, no batch norm.

    Inherits the replay settings every off-policy agent shares (``buffer_size``, ``batch_size``,
    ``learning_starts``, ``train_every``, ``updates_per_step``); the framework's loop reads those.
    """

    actor_lr: float = option(1e-3, "Adam learning rate of the actor.")
    critic_lr: float = option(1e-3, "Adam learning rate of the critic.")
    gamma: float = option(0.99, "Discount factor.")
    tau: float = option(0.005, "Polyak averaging rate of the target networks.")
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden layer widths of actor and critic.")
    exploration_noise: float = option(
        0.1, "Std of the Gaussian noise added to actions while training, as a fraction of the action half-range."
    )

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work (the CLI reports it as one sentence)."""
        super().validate()
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {self.tau}")
        if self.actor_lr <= 0 or self.critic_lr <= 0:
            raise ValueError("actor_lr and critic_lr must be positive")
        if self.exploration_noise < 0:
            raise ValueError(f"exploration_noise must be >= 0, got {self.exploration_noise}")
        if not self.hidden_sizes or any(width <= 0 for width in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")


DDPG_TEMPLATE = AgentSpec(
    name="ddpg-template",  # must equal the entry-point name in pyproject.toml
    config=DDPGConfig,
    factory="toolkit_plugin_template.ddpg:make_ddpg",
    kind="off-policy",
    action_spaces=("box",),
    observation_spaces=("box",),
    description="Template plugin: DDPG (Lillicrap et al. 2016), deterministic tanh actor, one critic, Gaussian exploration.",
    default_steps=50_000,
    # The plugin API version this code was written for. Write the number, not
    # toolkit.PLUGIN_API_VERSION: the point is to record what *you* targeted.
    api_version=1,
)
