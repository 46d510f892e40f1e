"""Decision Transformer (Chen et al. 2021, "Decision Transformer: Reinforcement Learning via
Sequence Modeling").

A window of the last K steps becomes 3K tokens, ``(R_1, s_1, a_1, R_2, s_2, a_2, ...)``: each
input embedded linearly (``R_t`` scaled, ``s_t`` normalised), plus a learned timestep
embedding shared by the step's three tokens, then a layer norm. A causal transformer reads
them left to right, and the action ``a_t`` is predicted from the output at ``s_t``'s token,
which has seen ``R_1 .. R_t``, ``s_1 .. s_t`` and ``a_1 .. a_{t-1}`` but not ``a_t``:

    a_hat_t = tanh(W h(s_t)),   loss = || a_hat_t - a_t ||^2  over the real steps

At evaluation ``R_1`` is the target return, ``R_{t+1} = R_t - r_t``, and each step re-reads
the last K steps (the current action's token is a placeholder no output can see). The
paper's MuJoCo settings are the defaults: K = 20, width 128, 3 blocks, 1 head, dropout 0.1,
AdamW lr 1e-4 with weight decay 1e-4, gradient norm clipped to 0.25.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from toolkit.offline import SequenceBatch
from toolkit_offline.common import OfflinePolicyAgent, masked_mean
from toolkit_offline.sequence import ReturnCountdown, StepEmbeddings
from toolkit_offline.spec import DecisionTransformerConfig


class DecisionTransformerNetwork(nn.Module):
    """Token embeddings, a causal (GPT-style, pre-norm) transformer and a tanh action head."""

    def __init__(self, obs_dim: int, action_dim: int, config: DecisionTransformerConfig) -> None:
        super().__init__()
        width = config.embed_dim
        self.embed = StepEmbeddings(obs_dim, action_dim, width, config.max_timestep)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(config.dropout)
        block = nn.TransformerEncoderLayer(
            width, config.n_heads, dim_feedforward=4 * width, dropout=config.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(block, config.n_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, action_dim)

    def forward(
        self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, timesteps: torch.Tensor,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Inputs ``[B, T, ...]`` -> predicted actions in ``[-1, 1]``, ``[B, T, action_dim]``
        (``[B, 1, action_dim]``, the last step's, with ``last_only``)."""
        b, t = timesteps.shape
        r, s, a = self.embed(returns, states, actions, timesteps)
        tokens = torch.stack([r, s, a], dim=2).reshape(b, 3 * t, -1)  # R_1, s_1, a_1, R_2, ...
        causal = nn.Transformer.generate_square_subsequent_mask(3 * t, device=tokens.device, dtype=tokens.dtype)
        h = self.dropout(self.norm(tokens))
        *lower, top = self.transformer.layers
        for layer in lower:
            h = layer(h, src_mask=causal, is_causal=True)
        # Only the s_t tokens' outputs are read, so the top block computes nothing else: its
        # keys and values still come from every token, its queries, feed-forward and norms
        # only from s_t's (or the last one's). Same outputs, about a fifth fewer FLOPs.
        queries = torch.arange(3 * t - 2 if last_only else 1, 3 * t, 3, device=tokens.device)
        h_states = self.final_norm(top_block_at(top, h, causal, queries))
        return torch.tanh(self.head(h_states))


def top_block_at(layer: nn.TransformerEncoderLayer, x: torch.Tensor, causal: torch.Tensor,
                 queries: torch.Tensor) -> torch.Tensor:
    """A pre-norm encoder block's outputs at token positions ``queries`` only, ``[B, Q, width]``:
    what ``layer(x, src_mask=causal)`` gives at those positions, with the same parameters."""
    normed = layer.norm1(x)
    attended = layer.self_attn(normed[:, queries], normed, normed, attn_mask=causal[queries], need_weights=False)[0]
    h = x[:, queries] + layer.dropout1(attended)
    feed_forward = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h)))))
    return h + layer.dropout2(feed_forward)


class DecisionTransformer(OfflinePolicyAgent):
    """The Decision Transformer learner and its evaluation-time context of the last K steps."""

    config: DecisionTransformerConfig

    def __init__(self, config: DecisionTransformerConfig, observation_space: gym.Space, action_space: gym.Space,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, observation_space, action_space, device)
        self.context_length = config.context_length
        self.finish_setup(DecisionTransformerNetwork(self.obs_dim, self.action_dim, config))
        self.countdown = ReturnCountdown()
        # The episode so far, last K steps: (R_t, normalised s_t, a_t in [-1, 1], t) per step.
        self._context: deque[tuple[torch.Tensor, ...]] = deque(maxlen=config.context_length)
        self._timestep = 0

    # --- learning -----------------------------------------------------------------------------

    def update(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """One step of the action-prediction loss on windows of K steps."""
        self.model.train()  # dropout on for this forward pass, also right after an evaluation
        targets = self.unit_targets(batch.actions)
        predicted = self.model(
            self.normalizer.returns(batch.returns_to_go), self.normalizer.observations(batch.observations),
            targets, batch.timesteps,
        )
        loss = masked_mean((predicted - targets).pow(2), batch.mask)
        grad_norm = self.gradient_step(loss)
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}

    # --- acting -------------------------------------------------------------------------------

    def start_episode(self, episodes: int = 1) -> None:
        """Condition ``episodes`` new episodes (run side by side, one row each) on the target
        return; forget the last ones' context."""
        self.countdown.start(float(self.normalizer.target_return), episodes)
        self._context.clear()
        self._timestep = 0

    def record_reward(self, reward: float | np.ndarray) -> None:
        """The rewards the last actions earned, one per episode (or one for all)."""
        self.countdown.record(reward)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Predict ``a_t`` of every episode (row) from its last K steps (the policy is
        deterministic either way)."""
        batch = obs.shape[0]
        if self.countdown.episodes != batch:
            self.start_episode(batch)  # acting outside an evaluation episode: start one
        self.model.eval()
        returns = self.normalizer.returns(self.countdown.tensor(self.device))
        placeholder = torch.zeros(batch, self.action_dim, device=self.device)  # a_t: no output sees it
        timestep = torch.full((batch,), self._timestep, dtype=torch.int64, device=self.device)
        self._context.append((returns, self.normalizer.observations(obs), placeholder, timestep))
        r, s, a, t = (torch.stack(parts, dim=1) for parts in zip(*self._context))
        action = self.model(r, s, a, t, last_only=True)[:, -1]
        self._context[-1] = (returns, self._context[-1][1], action, timestep)
        self._timestep += 1
        return self.env_actions(action)


def make_decision_transformer(config: DecisionTransformerConfig, observation_space: gym.Space,
                              action_space: gym.Space, device: str) -> DecisionTransformer:
    """Factory named by the ``decision-transformer`` entry point."""
    return DecisionTransformer(config, observation_space, action_space, device)
