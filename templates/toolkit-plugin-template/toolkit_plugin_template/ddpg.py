"""Deep Deterministic Policy Gradient (Lillicrap et al. 2016, "Continuous control with deep
reinforcement learning"), written as a toolkit agent plugin.

DDPG learns a deterministic policy ``mu(s)`` and its action-value ``Q(s, a)``:

* the critic regresses onto the one-step Bellman target computed with slowly moving target
  networks, ``y = r + gamma (1 - done) Q'(s', mu'(s'))``;
* the actor follows the deterministic policy gradient, i.e. it maximises ``Q(s, mu(s))``;
* the targets track the online networks by Polyak averaging, ``theta' <- (1 - tau) theta' + tau theta``;
* exploration adds Gaussian noise to the actor's action (TD3's simplification of the
  paper's Ornstein-Uhlenbeck noise).

What this module does *not* do is as much a part of the contract as what it does: it never
steps an environment, keeps a replay buffer, logs, seeds or reads the command line. The
toolkit's off-policy loop does all that and calls :meth:`DDPG.act` and :meth:`DDPG.update`.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from toolkit.agent import Agent, Batch
from toolkit.errors import ToolkitError
from toolkit_plugin_template.spec import DDPGConfig


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """A fully connected ReLU network ``in -> hidden... -> out``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """The deterministic policy ``mu(s) = scale * tanh(f(s)) + bias``, always inside the action bounds."""

    def __init__(self, obs_dim: int, action_space: gym.spaces.Box, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, int(np.prod(action_space.shape)))
        low = torch.as_tensor(action_space.low, dtype=torch.float32).flatten()
        high = torch.as_tensor(action_space.high, dtype=torch.float32).flatten()
        # Buffers move with .to(device) and are saved in state_dict, unlike plain attributes.
        self.register_buffer("scale", (high - low) / 2.0)
        self.register_buffer("bias", (high + low) / 2.0)
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.scale + self.bias


class Critic(nn.Module):
    """The action-value ``Q(s, a)``, one number per transition: shape ``[B, 1]``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1))


class DDPG(Agent):
    """DDPG for continuous (Box) action spaces with finite bounds and vector observations."""

    def __init__(
        self,
        config: DDPGConfig,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            # A user mistake (wrong env for this agent): one sentence, no traceback.
            raise ToolkitError(f"ddpg-template needs an action space with finite bounds, got {action_space}.")
        self.config = config
        obs_dim = int(np.prod(observation_space.shape))
        act_dim = int(np.prod(action_space.shape))
        self.action_shape = tuple(action_space.shape)
        hidden = tuple(config.hidden_sizes)

        self.actor = Actor(obs_dim, action_space, hidden).to(device)
        self.critic = Critic(obs_dim, act_dim, hidden).to(device)
        # Target networks start as copies and never receive gradients.
        self.target_actor = Actor(obs_dim, action_space, hidden).to(device)
        self.target_critic = Critic(obs_dim, act_dim, hidden).to(device)
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_actor.requires_grad_(False)
        self.target_critic.requires_grad_(False)

        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)

        # (target, online) parameter pairs for the Polyak update.
        self._polyak_pairs = list(
            zip([*self.target_actor.parameters(), *self.target_critic.parameters()],
                [*self.actor.parameters(), *self.critic.parameters()])
        )

        # Everything a checkpoint must hold to continue exactly: modules, optimisers, tensors.
        # The base class builds state_dict()/load_state_dict() from this mapping.
        self.checkpointed = {
            "actor": self.actor,
            "critic": self.critic,
            "target_actor": self.target_actor,
            "target_critic": self.target_critic,
            "actor_optimizer": self.actor_optimizer,
            "critic_optimizer": self.critic_optimizer,
        }

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """``mu(s)`` for a batch ``[B, *obs_shape]``; plus clipped Gaussian noise unless ``deterministic``.

        The noise comes from torch's global generator, which the framework seeds and
        checkpoints; a plugin never seeds anything itself.
        """
        action = self.actor(obs.flatten(1).float())
        if not deterministic and self.config.exploration_noise > 0:
            noise = torch.randn_like(action) * (self.config.exploration_noise * self.actor.scale)
            action = torch.maximum(torch.minimum(action + noise, self.actor.high), self.actor.low)
        return action.reshape(-1, *self.action_shape)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on the critic, one on the actor, then the target networks follow.

        Returns detached scalar tensors; nothing here reads a value back to the host (no
        ``.item()``), so the step never waits for the device.
        """
        cfg = self.config
        obs, next_obs = batch.obs.flatten(1).float(), batch.next_obs.flatten(1).float()
        actions = batch.actions.flatten(1)

        # Critic: minimise (Q(s, a) - y)^2 with y = r + gamma (1 - done) Q'(s', mu'(s')).
        # `dones` is 1 only for true terminations, so time-limit truncations still bootstrap.
        with torch.no_grad():
            next_q = self.target_critic(next_obs, self.target_actor(next_obs))
            target = batch.rewards + cfg.gamma * (1.0 - batch.dones) * next_q
        q = self.critic(obs, actions)
        critic_loss = (q - target).pow(2).mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        # Actor: ascend Q(s, mu(s)), the deterministic policy gradient. The backward pass also
        # leaves gradients on the critic; they are discarded by the critic's zero_grad above
        # on the next update, and only the actor's optimiser steps here.
        actor_loss = -self.critic(obs, self.actor(obs)).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        # Polyak averaging: theta' <- theta' + tau (theta - theta').
        with torch.no_grad():
            for target_param, param in self._polyak_pairs:
                target_param.lerp_(param, cfg.tau)

        return {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "q_mean": q.detach().mean(),
        }


def make_ddpg(
    config: DDPGConfig, observation_space: gym.Space, action_space: gym.Space, device: torch.device | str
) -> DDPG:
    """The factory named by the ``ddpg-template`` AgentSpec.

    The framework calls it as ``factory(config, observation_space, action_space, device)`` after
    checking the spaces against ``AgentSpec.action_spaces``/``observation_spaces``, seeding torch
    and validating the config.
    """
    return DDPG(config, observation_space, action_space, device)
