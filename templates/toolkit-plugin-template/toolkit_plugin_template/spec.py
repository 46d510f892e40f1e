"""Entry-point targets of the template plugin: config dataclasses, the AgentSpec and the ModelSpec.

``toolkit list`` imports this module to show the plugins, so it must stay light: no torch, no
gymnasium, nothing slow. The agent lives in :mod:`toolkit_plugin_template.ddpg` and the model
in :mod:`toolkit_plugin_template.linear_ae`; each is named below by a ``"module:function"``
string, so it is imported only when an agent or a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.config import check_fields, option
from toolkit.configs import OffPolicyConfig
from toolkit.registry import AgentSpec, ModelSpec


@dataclass(frozen=True)
class DDPGConfig(OffPolicyConfig):
    """DDPG settings (Lillicrap et al. 2016), with the simplifications TD3's authors used for
    their DDPG baseline: equal learning rates, Gaussian exploration noise, no batch norm.

    Inherits the replay settings every off-policy agent shares (``buffer_size``, ``batch_size``,
    ``learning_starts``, ``train_every``, ``updates_per_step``); the framework's loop reads those.
    """

    actor_lr: float = option(1e-3, "Adam learning rate of the actor.", gt=0)
    critic_lr: float = option(1e-3, "Adam learning rate of the critic.", gt=0)
    gamma: float = option(0.99, "Discount factor.", gt=0, le=1)
    tau: float = option(0.005, "Polyak averaging rate of the target networks.", gt=0, le=1)
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden layer widths of actor and critic.", ge=1, nonempty=True)
    exploration_noise: float = option(
        0.1, "Std of the Gaussian noise added to actions while training, as a fraction of the action half-range.", ge=0
    )

    def validate(self) -> None:
        """Raise ValueError (the CLI reports it as one sentence) for settings that cannot work
        together. Ranges of single fields are not checked here: they are declared on the fields
        (``gt=0``, ``le=1``, ``ge=1, nonempty=True``) and the framework checks them for every value,
        from defaults, YAML files, ``--set`` and resumed runs alike."""
        super().validate()  # the off-policy rules, e.g. buffer_size must hold a batch of batch_size


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


@dataclass(frozen=True)
class LinearAEConfig:
    """Linear autoencoder settings. ``batch_size`` is required of every model config: the
    framework's model loop samples minibatches of that size."""

    latent_dim: int = option(16, "Size of the latent code (at most the number of values in one example).", ge=1)
    lr: float = option(1e-2, "Adam learning rate.", gt=0)
    batch_size: int = option(128, "Examples per gradient step.", ge=1)

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work. A config with no base class starts
        with ``check_fields(self)``, so the bounds hold for code that builds the model directly."""
        check_fields(self)


LINEAR_AE_TEMPLATE = ModelSpec(
    name="template-linear-ae",  # must equal the entry-point name in pyproject.toml
    config=LinearAEConfig,
    factory="toolkit_plugin_template.linear_ae:make_linear_ae",
    # The kind picks the training loop and tells users what the model is; what `toolkit eval`
    # shows (linear probes, reconstruction and traversal figures) follows from the class the
    # model derives from, toolkit.model.AutoencoderModel.
    kind="autoencoder",
    description="Template plugin: a linear autoencoder trained on squared error (PCA by gradient descent).",
    default_steps=2_000,
    api_version=1,
)
