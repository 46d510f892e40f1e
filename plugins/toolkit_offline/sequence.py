"""Pieces the two return-conditioned sequence models share.

Both read, at every step ``t`` of a window, the return-to-go ``R_t`` (what the episode should
still earn), the state ``s_t`` and an action, each embedded to a common width, and add a
learned embedding of the timestep ``t`` (Chen et al. 2021, section 3). Both are evaluated by
conditioning the first step on a target return and counting it down by the rewards received.
"""

from __future__ import annotations

import numpy as np
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
    """Evaluation episodes' returns-to-go, one per episode run side by side: each starts at
    the target and loses every reward its episode receives (kept in float64, as the rewards)."""

    def __init__(self) -> None:
        self.remaining: np.ndarray | None = None

    @property
    def episodes(self) -> int:
        """How many episodes are counted down (0 before the first :meth:`start`)."""
        return 0 if self.remaining is None else len(self.remaining)

    def start(self, target: float, episodes: int = 1) -> None:
        self.remaining = np.full(episodes, target, dtype=np.float64)

    def record(self, rewards: float | np.ndarray) -> None:
        """Subtract one reward per episode (a single number counts for all of them)."""
        if self.remaining is not None:
            self.remaining -= np.asarray(rewards, dtype=np.float64)

    def tensor(self, device: torch.device) -> torch.Tensor:
        """The returns-to-go as a float32 ``[episodes]`` tensor."""
        return torch.as_tensor(self.remaining, dtype=torch.float32, device=device)
