"""Decision-LSTM: return-conditioned behaviour modelling with a recurrent backbone.

The Decision Transformer (Chen et al. 2021) casts offline RL as sequence modelling: given the
return still to be earned ``R_t = sum_{k >= t} r_k``, the state ``s_t`` and the history before
them, predict the action the data took. High-return and low-return behaviour in the data is
then told apart by ``R_t``, and conditioning on a high target at evaluation asks for the
former. The decision-LSTM keeps that recipe and swaps the transformer for an LSTM (as in the
recurrent baselines of Siebenborn et al. 2022, "How crucial is Transformer in Decision
Transformer?"):

    x_t    = LayerNorm( E_R(R_t / scale) + E_s(norm(s_t)) + E_a(a_{t-1}) + E_time(t) )
    h_t    = LSTM_2(x_t, h_{t-1})                    (two stacked layers)
    a_hat  = tanh(W h_t)                              (actions in [-1, 1], mapped to the box)
    loss   = Huber(a_hat_t, a_t)  over the real steps of windows of K = 30 steps

One token per step carries the previous action, so the LSTM takes one step per env step. At
evaluation ``R_0`` is the target return, ``R_{t+1} = R_t - r_t``, and the hidden state is
carried along the whole episode instead of re-reading a window, which makes acting O(1) per
step. Training windows start anywhere in an episode from a zero state (and a zero previous
action), so the model learns to act from a cold start as well as from a long history.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.offline import SequenceBatch
from toolkit_offline.common import OfflinePolicyAgent, masked_mean
from toolkit_offline.sequence import ReturnCountdown, StepEmbeddings
from toolkit_offline.spec import DecisionLSTMConfig


class DecisionLSTMNetwork(nn.Module):
    """Embeddings, a stacked LSTM and a tanh action head."""

    def __init__(self, obs_dim: int, action_dim: int, config: DecisionLSTMConfig) -> None:
        super().__init__()
        self.embed = StepEmbeddings(obs_dim, action_dim, config.embed_dim, config.max_timestep)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.embed_dim, config.embed_dim, num_layers=config.lstm_layers, batch_first=True,
            dropout=config.dropout if config.lstm_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.embed_dim, action_dim)

    def forward(
        self,
        returns: torch.Tensor,
        states: torch.Tensor,
        previous_actions: torch.Tensor,
        timesteps: torch.Tensor,
        hidden: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Inputs ``[B, T, ...]`` -> actions in ``[-1, 1]`` ``[B, T, action_dim]`` and the new state."""
        r, s, a = self.embed(returns, states, previous_actions, timesteps)
        x = self.dropout(self.norm(r + s + a))
        out, hidden = self.lstm(x, hidden)
        return torch.tanh(self.head(out)), hidden


class DecisionLSTM(OfflinePolicyAgent):
    """The decision-LSTM learner: windows of K steps in training, a carried state in episodes."""

    config: DecisionLSTMConfig

    def __init__(self, config: DecisionLSTMConfig, observation_space: gym.Space, action_space: gym.Space,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, observation_space, action_space, device)
        self.context_length = config.context_length
        self.finish_setup(DecisionLSTMNetwork(self.obs_dim, self.action_dim, config))
        self.countdown = ReturnCountdown()
        self._hidden: tuple[torch.Tensor, torch.Tensor] | None = None
        self._previous_action: torch.Tensor | None = None
        self._timestep = 0

    # --- learning -----------------------------------------------------------------------------

    def update(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """One Huber-regression step on windows of K steps, each from a zero state."""
        self.model.train()  # dropout on for this forward pass, also right after an evaluation
        targets = self.unit_targets(batch.actions)  # [B, K, action_dim] in [-1, 1]
        # a_{t-1}: the data's previous action inside the window, zero at its first step.
        previous = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)
        predicted, _ = self.model(
            self.normalizer.returns(batch.returns_to_go), self.normalizer.observations(batch.observations),
            previous, batch.timesteps,
        )
        loss = masked_mean(F.huber_loss(predicted, targets, delta=self.config.huber_delta, reduction="none"), batch.mask)
        grad_norm = self.gradient_step(loss)
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}

    # --- acting -------------------------------------------------------------------------------

    def start_episode(self, episodes: int = 1) -> None:
        """Condition ``episodes`` new episodes (run side by side, one row each) on the target
        return; clear the LSTM's state."""
        self.countdown.start(float(self.normalizer.target_return), episodes)
        self._hidden, self._previous_action, self._timestep = None, None, 0

    def record_reward(self, reward: float | np.ndarray) -> None:
        """The rewards the last actions earned, one per episode (or one for all)."""
        self.countdown.record(reward)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """One LSTM step of every episode (row) from its carried state (the policy is
        deterministic either way)."""
        batch = obs.shape[0]
        if self.countdown.episodes != batch:
            self.start_episode(batch)  # acting outside an evaluation episode: start one
        self.model.eval()
        if self._previous_action is None:
            self._previous_action = torch.zeros(batch, 1, self.action_dim, device=self.device)
        returns = self.countdown.tensor(self.device).unsqueeze(1)
        timesteps = torch.full((batch, 1), self._timestep, dtype=torch.int64, device=self.device)
        predicted, self._hidden = self.model(
            self.normalizer.returns(returns), self.normalizer.observations(obs).unsqueeze(1),
            self._previous_action, timesteps, self._hidden,
        )
        self._previous_action = predicted
        self._timestep += 1
        return self.env_actions(predicted[:, 0])


def make_decision_lstm(config: DecisionLSTMConfig, observation_space: gym.Space, action_space: gym.Space,
                       device: str) -> DecisionLSTM:
    """Factory named by the ``decision-lstm`` entry point."""
    return DecisionLSTM(config, observation_space, action_space, device)
