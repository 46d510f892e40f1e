"""Specs and configs of the offline learners (torch-free: ``toolkit list`` imports this)."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.config import option
from toolkit.configs import OfflineConfig
from toolkit.registry import AgentSpec


@dataclass(frozen=True)
class BCConfig(OfflineConfig):
    """Behaviour cloning: an MLP regressing the dataset's actions from normalised states."""

    batch_size: int = option(256, "Transitions per gradient step.")
    lr: float = option(3e-4, "AdamW learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    warmup_steps: int = option(0, "Gradient steps of linear learning-rate warm-up from 0.")
    max_grad_norm: float | None = option(None, "Clip the gradient's global norm to this value; none disables clipping.")
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden layer widths of the policy MLP.")

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        super().validate()
        if not self.hidden_sizes or any(w <= 0 for w in self.hidden_sizes):
            raise ValueError("hidden_sizes must hold at least one positive width")


@dataclass(frozen=True)
class SequenceModelConfig(OfflineConfig):
    """What the two return-conditioned sequence models share."""

    context_length: int = option(20, "Steps of (return-to-go, state, action) the model sees (K).")
    embed_dim: int = option(128, "Width every input is embedded to.")
    dropout: float = option(0.1, "Dropout on embeddings and inside the backbone.")
    max_timestep: int = option(1_000, "Size of the timestep embedding table; later steps share its last entry.")

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        super().validate()
        if self.context_length < 1 or self.embed_dim < 1 or self.max_timestep < 1:
            raise ValueError("context_length, embed_dim and max_timestep must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class DecisionLSTMConfig(SequenceModelConfig):
    """Decision-LSTM: the return-conditioned sequence model with a recurrent backbone."""

    context_length: int = option(30, "Steps of (return-to-go, state, previous action) per training window (K).")
    lr: float = option(1e-3, "AdamW learning rate.")
    lstm_layers: int = option(2, "Stacked LSTM layers.")
    huber_delta: float = option(1.0, "Huber loss threshold on the (normalised) action error.")

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        super().validate()
        if self.lstm_layers < 1:
            raise ValueError(f"lstm_layers must be >= 1, got {self.lstm_layers}")
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be positive, got {self.huber_delta}")


@dataclass(frozen=True)
class DecisionTransformerConfig(SequenceModelConfig):
    """Decision Transformer (Chen et al. 2021); defaults are the paper's MuJoCo settings
    except the warm-up, shortened for short CPU budgets (paper: 10^4 of 10^5 steps)."""

    n_layers: int = option(3, "Transformer blocks.")
    n_heads: int = option(1, "Attention heads per block (embed_dim must divide by it).")

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        super().validate()
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError("n_layers and n_heads must be positive")
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
