"""Pieces the two return-conditioned sequence models share.

Both read, at every step ``t`` of a window, the return-to-go ``R_t`` (what the episode should
still earn), the state ``s_t`` and an action, each embedded to a common width, and add a
learned embedding of the timestep ``t`` (Chen et al. 2021, section 3). Both are evaluated by
conditioning the first step on a target return and counting it down by the rewards received.
"""

from __future__ import annotations

import torch
from torch import nn


class StepEmbeddings(nn.Module):
    """Linear embeddings of ``R_t``, ``s_t`` and ``a``, and a table of timestep embeddings."""

    def __init__(self, obs_dim: int, action_dim: int, embed_dim: int, max_timestep: int) -> None:
        super().__init__()
        self.max_timestep = max_timestep
        self.returns = nn.Linear(1, embed_dim)
        self.states = nn.Linear(obs_dim, embed_dim)
        self.actions = nn.Linear(action_dim, embed_dim)
        self.timesteps = nn.Embedding(max_timestep, embed_dim)

    def forward(
        self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings of the three inputs, each ``[..., embed_dim]`` with the timestep added."""
        time = self.timesteps(timesteps.clamp(max=self.max_timestep - 1))
        return self.returns(returns) + time, self.states(states) + time, self.actions(actions) + time


class ReturnCountdown:
    """An evaluation episode's return-to-go: starts at the target, minus each reward received."""

    def __init__(self) -> None:
        self.remaining: float | None = None

    def start(self, target: float) -> None:
        self.remaining = target

    def record(self, reward: float) -> None:
        if self.remaining is not None:
            self.remaining -= reward
