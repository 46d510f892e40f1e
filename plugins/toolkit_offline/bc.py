"""Behaviour cloning (Pomerleau 1991; the baseline of every offline-RL paper, e.g. Fu et al. 2020).

BC ignores rewards and fits a deterministic policy to the dataset's state-action pairs by
regression:

    min_theta  E_{(s, a) ~ D} || tanh(f_theta(norm(s))) - unit(a) ||^2

with ``norm(s) = (s - mean_D) / std_D`` and ``unit(a)`` the action mapped into ``[-1, 1]``.
It copies the data's average behaviour, so it is as good as the data and no better; the
return-conditioned models are measured against it.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import nn

from toolkit.nn import mlp
from toolkit.offline import SequenceBatch
from toolkit_offline.common import OfflinePolicyAgent, masked_mean
from toolkit_offline.spec import BCConfig


class BehaviourCloning(OfflinePolicyAgent):
    """A tanh-squashed MLP policy regressed on the dataset's actions."""

    config: BCConfig
    context_length = 1  # a memoryless policy: windows of one step are single transitions

    def __init__(self, config: BCConfig, observation_space: gym.Space, action_space: gym.Space,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, observation_space, action_space, device)
        self.finish_setup(nn.Sequential(mlp(self.obs_dim, config.hidden_sizes, self.action_dim), nn.Tanh()))

    def update(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """One regression step on a batch of single transitions."""
        self.model.train()  # dropout on for this forward pass, also right after an evaluation
        predicted = self.model(self.normalizer.observations(batch.observations))
        loss = masked_mean((predicted - self.unit_targets(batch.actions)).pow(2), batch.mask)
        grad_norm = self.gradient_step(loss)
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The cloned action (BC's policy is deterministic either way)."""
        self.model.eval()
        return self.env_actions(self.model(self.normalizer.observations(obs)))


def make_bc(config: BCConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> BehaviourCloning:
    """Factory named by the ``bc`` entry point."""
    return BehaviourCloning(config, observation_space, action_space, device)
