"""Config dataclasses that several plugins share.

Import-light on purpose (no torch): plugin spec modules import these, and ``toolkit list``
imports the spec modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from toolkit.config import check_fields, option
from toolkit.errors import did_you_mean

#: Encoders every agent can read observations through (besides a trained autoencoder run's
#: directory); :func:`toolkit.nn.encoders.make_encoder` builds them.
ENCODER_NAMES = ("auto", "mlp", "nature", "impala")


def encoder_option(note: str = "") -> Any:
    """The ``encoder`` field of an agent's config, default ``auto``; ``note`` ends its help."""
    return option(
        "auto",
        "Observation encoder: auto (mlp for vectors, nature for images), mlp (flattened, pixels scaled "
        "to [0, 1]), nature (Nature-DQN CNN), impala (IMPALA CNN), or a trained ae/vae run directory "
        "(its encoder applied to each stacked frame)." + (f" {note}" if note else ""),
    )


def encoder_trainable_option() -> Any:
    """The ``encoder_trainable`` field that goes with :func:`encoder_option`."""
    return option(
        True, "Train the encoder with the agent; false freezes it (a pretrained run's weights, or random features)."
    )


def check_encoder(choice: str, key: str = "encoder") -> None:
    """Raise ValueError (one sentence) unless ``choice`` names an encoder or an existing run directory."""
    if choice in ENCODER_NAMES:
        return
    path = Path(choice).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():  # toolkit.runs.CONFIG_FILE, without importing it here
        return
    what = "a directory without a run's config.yaml" if path.is_dir() else "neither a known encoder nor a directory"
    raise ValueError(
        f"{key} must be one of {', '.join(ENCODER_NAMES)} or a trained ae/vae run directory; "
        f"'{choice}' is {what}.{did_you_mean(choice, ENCODER_NAMES)}"
    )


@dataclass(frozen=True)
class OffPolicyConfig:
    """Settings every off-policy agent shares; the framework's loop reads them."""

    num_envs: int = option(
        1, "Environments stepped side by side; each loop step acts in all of them with one forward pass and "
        "stores their transitions with one replay write. train_every and updates_per_step still count env steps.", ge=1
    )
    buffer_size: int = option(1_000_000, "Replay buffer capacity in transitions.", ge=1)
    batch_size: int = option(256, "Transitions per gradient step.", ge=1)
    learning_starts: int = option(5_000, "Env steps of uniformly random actions before learning begins.", ge=0)
    train_every: int = option(1, "Env steps between rounds of gradient steps.", ge=1)
    updates_per_step: int = option(1, "Gradient steps per round (the update-to-data ratio).", ge=1)

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        check_fields(self)
        if self.buffer_size < self.batch_size:
            raise ValueError(
                f"buffer_size={self.buffer_size} cannot hold a batch of {self.batch_size}; "
                f"make buffer_size at least batch_size"
            )


@dataclass(frozen=True)
class OnPolicyConfig:
    """Settings every on-policy agent shares; the framework's loop reads them."""

    num_envs: int = option(8, "Environments stepped side by side (a vectorised batch).", ge=1)
    rollout_steps: int = option(128, "Steps per environment in each rollout handed to the agent.", ge=1)
    complete_episodes: bool = option(
        False, "Extend each rollout until every environment's episode has ended (whole-episode returns)."
    )

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        check_fields(self)


@dataclass(frozen=True)
class CuriosityConfig:
    """Settings of the curiosity module (ICM or RND) and of how its bonus is paid."""

    kind: Literal["icm", "rnd"] = option(
        "icm", "Curiosity module: icm (Pathak et al. 2017: forward-model error in a learned feature space) or rnd "
        "(Burda et al. 2019: error of predicting a fixed random network's output)."
    )
    feature_dim: int = option(64, "Width of the feature space (ICM's phi(s); RND's target output).", ge=1)
    hidden_size: int = option(256, "Hidden width of the encoder, forward and inverse models (RND: of both networks).", ge=1)
    beta: float = option(0.2, "ICM: weight of the forward loss against the inverse loss (paper: 0.2).", ge=0, le=1)
    eta: float = option(1.0, "ICM: scale of the raw intrinsic reward eta/2 * ||phi_hat(s') - phi(s')||^2.", ge=0)
    intrinsic_weight: float = option(
        1.0, "Weight of the (normalised) intrinsic reward in the reward the agent learns from.", ge=0
    )
    extrinsic_weight: float = option(1.0, "Weight of the env's own reward; 0 is pure curiosity (Burda et al. 2018).", ge=0)
    normalize_intrinsic: bool = option(
        True, "Divide the intrinsic reward by a running standard deviation of the discounted intrinsic return "
        "(Burda et al. 2018), so its scale no longer depends on the module, the env or training time."
    )
    normalize_obs: bool = option(
        True, "Standardise vector observations with their running mean and std (clipped to +-5) before the "
        "curiosity module sees them, as RND does; image observations are left to the encoder."
    )
    return_gamma: float = option(0.99, "Discount of the intrinsic return whose spread normalises the bonus.", ge=0, lt=1)
    episodic: bool = option(
        True, "Intrinsic returns end with the episode. false (non-episodic, Burda et al. 2018) only with "
        "extrinsic_weight=0: episode ends are then not terminal for the agent."
    )
    lr: float = option(1e-3, "Adam learning rate of the curiosity module.", gt=0)
    frame_stack: int = option(1, "ICM: observations the forward model sees (k > 1: multi-frame ICM).", ge=1)
    inverse_loss: Literal["mse", "gaussian"] = option(
        "mse", "ICM, continuous actions: inverse model trained by MSE or by a Gaussian log-likelihood."
    )
    encoder: str = option(
        "auto",
        "How the module reads observations: auto (the paper's: an MLP for vectors, its 4-layer CNN for "
        "images), or mlp, nature, impala or a trained ae/vae run directory, followed by an MLP to feature_dim.",
    )
    encoder_trainable: bool = option(
        True, "Train the curiosity encoder (an explicit choice); false freezes it, as random or pretrained features."
    )
    coverage_dims: tuple[int, ...] = option(
        (0, 1), "Observation dimensions of the state-coverage histogram (vector observations with finite bounds).", ge=0
    )
    coverage_bins: int = option(20, "Bins per dimension of the state-coverage histogram.", ge=2)

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        check_fields(self)
        check_encoder(self.encoder, "curiosity.encoder")
        if self.kind == "rnd" and self.frame_stack > 1:
            raise ValueError("curiosity.frame_stack feeds the ICM's forward model; RND predicts from one observation")
        if not self.episodic and self.extrinsic_weight > 0:
            raise ValueError(
                "curiosity.episodic=false makes episode ends non-terminal, which is wrong for the env's own reward; "
                "use it with curiosity.extrinsic_weight=0 (pure curiosity)"
            )


@dataclass(frozen=True)
class OfflineConfig:
    """Settings every offline agent shares; the framework's loop and normaliser read them."""

    batch_size: int = option(64, "Windows (sequences of context_length steps) per gradient step.", ge=1)
    lr: float = option(1e-4, "AdamW learning rate.", gt=0)
    weight_decay: float = option(1e-4, "AdamW weight decay.", ge=0)
    warmup_steps: int = option(1_000, "Gradient steps of linear learning-rate warm-up from 0.", ge=0)
    max_grad_norm: float | None = option(0.25, "Clip the gradient's global norm to this value; none disables clipping.", gt=0)
    target_return: float | None = option(
        None, "Return an evaluation episode is conditioned on (return-conditioned models); none: the dataset's best."
    )
    return_scale: float | None = option(
        None, "Returns-to-go are divided by this; none: the largest absolute episode return in the dataset.", gt=0
    )

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        check_fields(self)
