"""Intrinsic Curiosity Module (Pathak et al. 2017, "Curiosity-driven Exploration by
Self-supervised Prediction"), as a wrapper that gives any agent a curiosity bonus.

The module learns three things from the agent's own transitions ``(s, a, s')``:

* a feature encoder ``phi``;
* an inverse model ``g`` predicting ``a`` from ``phi(s)`` and ``phi(s')``; its loss ``L_I``
  shapes ``phi`` to keep only what the agent can influence;
* a forward model ``f`` predicting ``phi(s')`` from ``phi(s)`` and ``a``; its loss is
  ``L_F = 1/2 ||f(phi(s), a) - phi(s')||^2``.

The module minimises ``(1 - beta) L_I + beta L_F`` (paper eq. 7), and the agent is paid the
intrinsic reward ``r_i = eta/2 ||f(phi(s), a) - phi(s')||^2`` (eq. 6), added to the
extrinsic reward with weight ``intrinsic_weight``. Transitions the forward model has learned
to predict stop paying, so the agent is pushed towards what it cannot predict yet.

The encoder is the paper's unless ``curiosity.encoder`` names another: ``mlp``, ``nature``,
``impala`` or a trained autoencoder run (:func:`toolkit.nn.encoders.make_encoder`), followed by
an MLP to ``feature_dim``. With ``curiosity.encoder_trainable=false`` that encoder is frozen
and only the MLP on top learns: random or pretrained features, as compared by Burda et al.
(2019, "Large-Scale Study of Curiosity-Driven Learning").

With ``frame_stack = k`` the forward model sees the encodings of the last ``k`` observations,
``f(phi(s_{t-k+1}), ..., phi(s_t), a_t)``: the multi-frame variant, for dynamics that one
observation does not pin down.

:class:`CuriousAgent` wraps any :class:`~toolkit.agent.Agent`: acting is unchanged, and each
update first relabels the batch's rewards with the bonus, then lets the wrapped agent learn.
"""

from __future__ import annotations

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.agent import Agent, Batch, Rollout
from toolkit.configs import CuriosityConfig
from toolkit.nn import ICMConvEncoder, mlp
from toolkit.nn.encoders import make_encoder


def _encoder(observation_space: gym.spaces.Box, config: CuriosityConfig, device: torch.device | str) -> nn.Module:
    """``phi``: observations -> ``feature_dim`` features.

    ``auto`` is the paper's: an MLP for vector observations, its convolutional net for images
    (C, H, W) or (H, W, C). Any other choice is that encoder, then the same MLP with ELU.
    """
    shape = observation_space.shape
    if config.encoder == "auto":
        if len(shape) == 1:
            return nn.Sequential(mlp(shape[0], [config.hidden_size], config.feature_dim, nn.ELU), nn.ELU())
        if len(shape) == 3:
            return ICMConvEncoder(shape, config.feature_dim)
        raise ValueError(f"curiosity supports vector or image observations, not shape {shape}")
    encoder = make_encoder(config.encoder, observation_space, device, config.encoder_trainable)
    head = mlp(encoder.out_dim, [config.hidden_size], config.feature_dim, nn.ELU)
    return nn.Sequential(encoder, head, nn.ELU())


class ICM(nn.Module):
    """The Intrinsic Curiosity Module: encoder, inverse model and forward model."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: CuriosityConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError(f"curiosity needs Box observations, not {observation_space}")
        self.config = config
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.action_dim = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box):
            self.action_dim = int(action_space.shape[0])
            # Inverse-model targets are actions rescaled to [-1, 1], so losses do not depend on units.
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ValueError(f"curiosity supports Discrete or Box actions, not {action_space}")
        h, d, k = config.hidden_size, config.feature_dim, config.frame_stack
        self.encoder = _encoder(observation_space, config, device)
        inverse_out = self.action_dim * (2 if config.inverse_loss == "gaussian" and not self.discrete else 1)
        self.inverse = mlp(2 * d, [h], inverse_out)
        self.forward_model = mlp(k * d + self.action_dim, [h], d)

    def _action_input(self, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return F.one_hot(actions.long().reshape(-1), self.action_dim).float()
        return 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the per-transition intrinsic reward ``[B, 1]`` (no gradient) and the losses."""
        cfg = self.config
        history = batch.obs_history if cfg.frame_stack > 1 else batch.obs.unsqueeze(1)
        if history is None:
            raise ValueError("frame_stack > 1 needs batches sampled with observation history")
        b, k = history.shape[:2]
        phi_history = self.encoder(history.reshape(b * k, *history.shape[2:])).reshape(b, k, -1)
        phi_s = phi_history[:, -1]
        phi_next = self.encoder(batch.next_obs)
        a = self._action_input(batch.actions)

        # Forward model: predict phi(s') from the recent encodings and the action. The target is
        # detached so the forward loss cannot shrink itself by collapsing the features; phi is
        # shaped by the inverse loss, as the paper intends.
        phi_pred = self.forward_model(torch.cat([phi_history.reshape(b, -1), a], dim=-1))
        forward_error = 0.5 * (phi_pred - phi_next.detach()).pow(2).sum(-1, keepdim=True)
        forward_loss = forward_error.mean()

        # Inverse model: recover the action from phi(s) and phi(s').
        inverse_out = self.inverse(torch.cat([phi_s, phi_next], dim=-1))
        if self.discrete:
            inverse_loss = F.cross_entropy(inverse_out, batch.actions.long().reshape(-1))
        elif cfg.inverse_loss == "gaussian":
            mean, log_std = inverse_out.chunk(2, dim=-1)
            log_std = log_std.clamp(-5.0, 2.0)
            nll = 0.5 * ((a - mean) / log_std.exp()).pow(2) + log_std
            inverse_loss = nll.sum(-1).mean()
        else:
            inverse_loss = F.mse_loss(inverse_out, a)

        loss = (1.0 - cfg.beta) * inverse_loss + cfg.beta * forward_loss
        intrinsic = cfg.eta * forward_error.detach()  # eta/2 ||.||^2, the 1/2 is in forward_error
        return intrinsic, {"loss": loss, "forward_loss": forward_loss.detach(), "inverse_loss": inverse_loss.detach()}


class CuriousAgent(Agent):
    """Any agent, paid a curiosity bonus: ``r = r_ext + intrinsic_weight * r_int``.

    Acting is the wrapped agent's; each update trains the ICM on the batch and hands the wrapped
    agent the same batch with relabelled rewards. Extrinsic and intrinsic rewards are reported
    separately (``extrinsic_reward``, ``intrinsic_reward``) so their scales can be compared.
    """

    def __init__(
        self,
        agent: Agent,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: CuriosityConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.agent = agent
        self.config = config
        self.icm = ICM(observation_space, action_space, config, device).to(device)
        self.history_length = max(agent.history_length, config.frame_stack)
        # The bonus is paid on each batch's first transition (``rewards``); later rewards of an
        # n-step window stay extrinsic, a bias that shrinks with gamma^i.
        self.n_step = agent.n_step
        # A frozen encoder's parameters stay out of the optimiser (and out of its state).
        self.optimizer = torch.optim.Adam([p for p in self.icm.parameters() if p.requires_grad], lr=config.lr)
        self.checkpointed = {"agent": agent, "icm": self.icm, "icm_optimizer": self.optimizer}

    def prunable_modules(self) -> dict[str, nn.Module]:
        """The wrapped agent's policy; the curiosity module never acts."""
        return self.agent.prunable_modules()

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The wrapped agent's action."""
        return self.agent.act(obs, deterministic)

    def update(self, batch: Batch | Rollout) -> dict[str, torch.Tensor]:
        """Train the ICM, then the wrapped agent on curiosity-relabelled rewards."""
        if isinstance(batch, Rollout):
            transitions, valid = rollout_transitions(batch, self.config.frame_stack)
        else:
            transitions, valid = batch, None
        intrinsic, losses = self.icm(transitions)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()

        if valid is None:
            relabelled = batch._replace(rewards=batch.rewards + self.config.intrinsic_weight * intrinsic)
        else:  # scatter the bonus back into the rollout's [T, N] layout; padding earns nothing
            bonus = torch.zeros_like(batch.rewards).reshape(-1)
            bonus[valid] = intrinsic.reshape(-1)
            relabelled = batch._replace(rewards=batch.rewards + self.config.intrinsic_weight * bonus.reshape(batch.rewards.shape))
        metrics = self.agent.update(relabelled)
        metrics.update(
            icm_loss=losses["loss"].detach(),
            icm_forward_loss=losses["forward_loss"],
            icm_inverse_loss=losses["inverse_loss"],
            extrinsic_reward=transitions.rewards.mean(),
            intrinsic_reward=intrinsic.mean(),
        )
        return metrics



def rollout_transitions(rollout: Rollout, history: int = 1) -> tuple[Batch, torch.Tensor]:
    """The real (unpadded) steps of a rollout as a flat :class:`Batch`, and their flat indices.

    With ``history > 1`` each step also gets the last ``history`` observations of its
    environment, stopping at an episode's first step (or the rollout's, the earliest known).
    """
    steps, envs = rollout.rewards.shape
    valid = rollout.mask.reshape(-1) > 0
    obs_history = None
    if history > 1:
        ended = (rollout.terminated + rollout.truncated) > 0
        start = torch.zeros(steps, envs, dtype=torch.long, device=rollout.rewards.device)
        for t in range(1, steps):  # first step of the episode each step belongs to
            start[t] = torch.where(ended[t - 1], torch.full_like(start[t], t), start[t - 1])
        t_index = torch.arange(steps, device=start.device).view(steps, 1, 1)
        back = torch.arange(history - 1, -1, -1, device=start.device).view(1, 1, history)
        rows = torch.maximum(t_index - back, start.unsqueeze(-1))  # [T, N, k]
        cols = torch.arange(envs, device=start.device).view(1, envs, 1).expand_as(rows)
        obs_history = rollout.obs[rows, cols].reshape(steps * envs, history, *rollout.obs.shape[2:])[valid]

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(steps * envs, *x.shape[2:])[valid]

    batch = Batch(
        obs=flat(rollout.obs),
        actions=flat(rollout.actions),
        rewards=flat(rollout.rewards).unsqueeze(-1),
        next_obs=flat(rollout.next_obs),
        dones=flat(rollout.terminated).unsqueeze(-1),
        obs_history=obs_history,
    )
    return batch, valid
