"""Specs and configs of the offline learners (torch-free: ``toolkit list`` imports this)."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.config import option
from toolkit.configs import OfflineConfig
from toolkit.registry import AgentSpec


@dataclass(frozen=True)
class BCConfig(OfflineConfig):
    """Behaviour cloning: an MLP regressing the dataset's actions from normalised states."""

    batch_size: int = option(256, "Transitions per gradient step.", ge=1)
    lr: float = option(3e-4, "AdamW learning rate.", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0)
    warmup_steps: int = option(0, "Gradient steps of linear learning-rate warm-up from 0.", ge=0)
    max_grad_norm: float | None = option(None, "Clip the gradient's global norm to this value; none disables clipping.", gt=0)
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden layer widths of the policy MLP.", ge=1, nonempty=True)


@dataclass(frozen=True)
class SequenceModelConfig(OfflineConfig):
    """What the two return-conditioned sequence models share."""

    context_length: int = option(20, "Steps of (return-to-go, state, action) the model sees (K).", ge=1)
    embed_dim: int = option(128, "Width every input is embedded to.", ge=1)
    dropout: float = option(0.1, "Dropout on embeddings and inside the backbone.", ge=0, lt=1)
    max_timestep: int = option(1_000, "Size of the timestep embedding table; later steps share its last entry.", ge=1)


@dataclass(frozen=True)
class DecisionLSTMConfig(SequenceModelConfig):
    """Decision-LSTM: the return-conditioned sequence model with a recurrent backbone."""

    context_length: int = option(30, "Steps of (return-to-go, state, previous action) per training window (K).", ge=1)
    lr: float = option(1e-3, "AdamW learning rate.", gt=0)
    lstm_layers: int = option(2, "Stacked LSTM layers.", ge=1)
    huber_delta: float = option(1.0, "Huber loss threshold on the (normalised) action error.", gt=0)


@dataclass(frozen=True)
class DecisionTransformerConfig(SequenceModelConfig):
    """Decision Transformer (Chen et al. 2021); defaults are the paper's MuJoCo settings
    except the warm-up, shortened for short CPU budgets (paper: 10^4 of 10^5 steps)."""

    n_layers: int = option(3, "Transformer blocks.", ge=1)
    n_heads: int = option(1, "Attention heads per block (embed_dim must divide by it).", ge=1)

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        super().validate()
        if self.embed_dim % self.n_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be a multiple of n_heads ({self.n_heads})")


BC = AgentSpec(
    name="bc",
    config=BCConfig,
    factory="toolkit_offline.bc:make_bc",
    kind="offline",
    action_spaces=("box",),
    description="Behaviour cloning: regress the dataset's actions on its states (the offline baseline).",
    default_steps=50_000,
    api_version=1,
)

DECISION_LSTM = AgentSpec(
    name="decision-lstm",
    config=DecisionLSTMConfig,
    factory="toolkit_offline.decision_lstm:make_decision_lstm",
    kind="offline",
    action_spaces=("box",),
    description="Return-conditioned sequence model with a 2-layer LSTM backbone, hidden state carried along episodes.",
    default_steps=50_000,
    api_version=1,
)

DECISION_TRANSFORMER = AgentSpec(
    name="decision-transformer",
    config=DecisionTransformerConfig,
    factory="toolkit_offline.decision_transformer:make_decision_transformer",
    kind="offline",
    action_spaces=("box",),
    description="Decision Transformer (Chen et al. 2021): a causal transformer over (return-to-go, state, action).",
    default_steps=50_000,
    api_version=1,
)
