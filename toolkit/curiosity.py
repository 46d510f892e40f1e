"""Curiosity for any agent: an intrinsic reward for what the agent cannot predict yet.

Two modules pay the bonus, chosen with ``curiosity.kind``:

* ``icm``, the Intrinsic Curiosity Module (Pathak et al. 2017, "Curiosity-driven Exploration
  by Self-supervised Prediction"): :class:`ICM` below;
* ``rnd``, Random Network Distillation (Burda et al. 2019, "Exploration by Random Network
  Distillation"): :class:`RND`: a predictor learns to match a fixed, randomly initialised
  network on the observations seen; its error is high on states unlike those seen before.

The ICM learns three things from the agent's own transitions ``(s, a, s')``:

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

What makes the bonus work across envs (Burda et al. 2018, "Large-Scale Study of
Curiosity-Driven Learning", sec. 2.2; the RND paper does the same): vector observations are
standardised by their running mean and std before the module sees them, and the raw bonus
is divided by a running standard deviation of the *discounted intrinsic return*
(:class:`IntrinsicRewardScale`), so it keeps a scale the agent can act on even when the
module's prediction error is tiny in absolute terms (an ICM on low-dimensional states
reaches errors of ~1e-3 within a few thousand steps). See ``docs/curiosity.md``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.agent import Agent, Batch, Rollout
from toolkit.configs import CuriosityConfig
from toolkit.nn import ICMConvEncoder, fast_adam_options, mlp
from toolkit.nn.encoders import make_encoder
from toolkit.nn.normalization import RunningNormalizer

#: RND clips standardised observations to this range (Burda et al. 2019, sec. 2.4).
OBS_CLIP = 5.0


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
        if self.discrete:  # one-hot by scatter: F.one_hot reads the actions' range back to the host
            index = actions.long().reshape(-1, 1)
            return torch.zeros(len(index), self.action_dim, device=actions.device).scatter_(1, index, 1.0)
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


class RND(nn.Module):
    """Random Network Distillation: the error of a trained predictor against a fixed random
    network, on the next observation (Burda et al. 2019).

    The target is never trained, so on states like those seen often the predictor matches it
    and the bonus falls; on new states it does not. The predictor has one more layer than the
    target, as in the paper, so it can fit the target where it has data.
    """

    def __init__(self, observation_space: gym.Space, config: CuriosityConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError(f"curiosity needs Box observations, not {observation_space}")
        d, h = config.feature_dim, config.hidden_size
        self.target = _encoder(observation_space, config, device)
        for param in self.target.parameters():
            param.requires_grad_(False)
        self.predictor = nn.Sequential(_encoder(observation_space, config, device), mlp(d, [h], d, nn.ELU))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The per-transition intrinsic reward ``[B, 1]`` (no gradient) and the predictor's loss."""
        with torch.no_grad():
            target = self.target(batch.next_obs)
        error = (self.predictor(batch.next_obs) - target).pow(2).mean(-1, keepdim=True)
        loss = error.mean()
        return error.detach(), {"loss": loss}


class IntrinsicRewardScale(nn.Module):
    """The running standard deviation of the discounted intrinsic return, which the bonus is
    divided by (Burda et al. 2018, sec. 2.2).

    On-policy rollouts come in time order, so the return is filtered exactly as the paper
    does, ``R_t = gamma * R_{t-1} + r_t`` per environment (reset at episode ends when
    ``episodic``), and its running variance is kept. Replay batches are samples without time
    order; there the running variance ``s^2`` of the rewards themselves gives the spread of a
    discounted sum of independent rewards, ``s^2 / (1 - gamma^2)``, an approximation that
    ignores how rewards of neighbouring steps correlate. All statistics are buffers: they are
    part of the checkpoint, so a resumed run pays the same bonus.
    """

    def __init__(self, gamma: float, episodic: bool) -> None:
        super().__init__()
        self.gamma, self.episodic = gamma, episodic
        self.rewards = RunningNormalizer(())
        self.returns = RunningNormalizer(())
        for stats in (self.rewards, self.returns):
            # No prior spread: a raw bonus of 1e-4 must not be measured against a variance of 1.
            stats.var.zero_()
        self.register_buffer("running_return", torch.zeros(0))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        # The filter holds one return per environment: take the saved shape before loading.
        key = prefix + "running_return"
        if key in state_dict:
            self.running_return = torch.zeros_like(state_dict[key], device=self.running_return.device)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]

    @torch.no_grad()
    def update_batch(self, rewards: torch.Tensor) -> None:
        """Merge the intrinsic rewards of a replay batch ``[B, 1]``."""
        self.rewards.update(rewards.reshape(-1), torch.ones(rewards.numel(), device=rewards.device))

    @torch.no_grad()
    def update_rollout(self, rewards: torch.Tensor, ends: torch.Tensor, mask: torch.Tensor) -> None:
        """Filter a rollout's intrinsic rewards ``[T, N]`` into discounted returns and merge
        them (``ends``: the step ended its episode; ``mask``: 0 for padding steps)."""
        steps, envs = rewards.shape
        if self.running_return.shape != (envs,):
            self.running_return = torch.zeros(envs, device=rewards.device)
        returns = torch.empty_like(rewards)
        running = self.running_return
        for t in range(steps):
            running = torch.where(mask[t] > 0, self.gamma * running + rewards[t], running)
            returns[t] = running
            if self.episodic:
                running = running * (1.0 - ends[t])
        self.running_return = running
        self.returns.update(returns, mask)
        self.rewards.update(rewards, mask)

    def std(self) -> torch.Tensor:
        """The spread to divide by (a 0-dim tensor on the device; never read back)."""
        # Chosen on the device (no host read): the filtered returns once rollouts have been seen.
        from_returns = torch.sqrt(self.returns.var)
        from_rewards = torch.sqrt(self.rewards.var / (1.0 - self.gamma**2))
        # A floor only against dividing by zero: the raw bonus may be tiny, and that is the point.
        return torch.where(self.returns.count >= 1.0, from_returns, from_rewards).clamp(min=1e-8)


class StateCoverage(nn.Module):
    """A visitation histogram over a few bounded observation dimensions, and its entropy:
    how much of the state space the agent's experience covers (low-dimensional envs only)."""

    def __init__(self, observation_space: gym.Space, dims: tuple[int, ...], bins: int) -> None:
        super().__init__()
        shape = getattr(observation_space, "shape", ())
        dims = tuple(d for d in dims if len(shape) == 1 and d < shape[0])
        low = np.asarray(getattr(observation_space, "low", np.zeros(0)), dtype=np.float64).reshape(-1)
        high = np.asarray(getattr(observation_space, "high", np.zeros(0)), dtype=np.float64).reshape(-1)
        finite = [d for d in dims if np.isfinite(low[d]) and np.isfinite(high[d])]
        #: The histogram's dimensions; empty when the observations have none that qualify.
        self.dims = tuple(finite)
        self.bins = bins
        self.register_buffer("low", torch.as_tensor(low[list(self.dims)], dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high[list(self.dims)], dtype=torch.float32))
        self.register_buffer("counts", torch.zeros(bins ** len(self.dims) if self.dims else 0))

    @property
    def enabled(self) -> bool:
        return bool(self.dims)

    @torch.no_grad()
    def update(self, obs: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Count ``obs [B, D]`` and return ``coverage_entropy`` (nats) and
        ``coverage_fraction`` (share of cells visited)."""
        x = obs.float()[:, list(self.dims)]
        cell = ((x - self.low) / (self.high - self.low) * self.bins).long().clamp(0, self.bins - 1)
        index = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for i in range(len(self.dims)):
            index = index * self.bins + cell[:, i]
        w = torch.ones(len(x), device=x.device) if weight is None else weight.float()
        self.counts.index_add_(0, index, w)
        p = self.counts / self.counts.sum().clamp(min=1.0)
        entropy = -(p * torch.log(p.clamp(min=1e-12))).sum()
        return {"coverage_entropy": entropy, "coverage_fraction": (self.counts > 0).float().mean()}


class CuriousAgent(Agent):
    """Any agent, paid a curiosity bonus:
    ``r = extrinsic_weight * r_ext + intrinsic_weight * r_int / std(R_int)``.

    Acting is the wrapped agent's; each update trains the curiosity module (ICM or RND) on the
    batch and hands the wrapped agent the same batch with relabelled rewards. It reports the
    raw extrinsic and intrinsic rewards, the bonus actually paid and its ratio to the
    extrinsic reward, and, for low-dimensional observations, the state coverage.
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
        if config.kind == "rnd":
            self.module: nn.Module = RND(observation_space, config, device).to(device)
        else:
            self.module = ICM(observation_space, action_space, config, device).to(device)
        self.history_length = max(agent.history_length, config.frame_stack)
        # The bonus is paid on each batch's first transition (``rewards``); later rewards of an
        # n-step window stay extrinsic, a bias that shrinks with gamma^i.
        self.n_step = agent.n_step
        # A frozen encoder's (and RND's target's) parameters stay out of the optimiser.
        self.optimizer = torch.optim.Adam([p for p in self.module.parameters() if p.requires_grad], lr=config.lr,
                                          **fast_adam_options(device))
        shape = tuple(getattr(observation_space, "shape", ()))
        vector = len(shape) == 1 and getattr(observation_space, "dtype", None) != np.uint8
        self.obs_normalizer = RunningNormalizer(shape, clip=OBS_CLIP).to(device) if config.normalize_obs and vector else None
        self.scale = IntrinsicRewardScale(config.return_gamma, config.episodic).to(device)
        self.coverage = StateCoverage(observation_space, tuple(config.coverage_dims), config.coverage_bins).to(device)
        # The ICM keeps its checkpoint keys of earlier versions; RND has its own.
        self.checkpointed = {"agent": agent, config.kind: self.module, f"{config.kind}_optimizer": self.optimizer,
                             "intrinsic_scale": self.scale, "coverage": self.coverage}
        if self.obs_normalizer is not None:
            self.checkpointed["obs_normalizer"] = self.obs_normalizer
        self.policy_keys = ("agent",)  # acting is the wrapped agent's; the curiosity module never acts

    @property
    def icm(self) -> nn.Module:
        """The curiosity module (named for the ICM, the first and default kind)."""
        return self.module

    def prunable_modules(self) -> dict[str, nn.Module]:
        """The wrapped agent's policy; the curiosity module never acts."""
        return self.agent.prunable_modules()

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The wrapped agent's action."""
        return self.agent.act(obs, deterministic)

    def record_acting(self, steps: int) -> None:
        """The wrapped agent's acting counters advance."""
        self.agent.record_acting(steps)

    def _normalized(self, batch: Batch, weight: torch.Tensor | None) -> Batch:
        """The batch's observations standardised by running statistics (updated first)."""
        norm = self.obs_normalizer
        if norm is None:
            return batch
        w = torch.ones(len(batch.next_obs), device=batch.next_obs.device) if weight is None else weight
        norm.update(batch.next_obs, w)
        history = None if batch.obs_history is None else norm(batch.obs_history)
        return batch._replace(obs=norm(batch.obs), next_obs=norm(batch.next_obs), obs_history=history)

    def update(self, batch: Batch | Rollout) -> dict[str, torch.Tensor]:
        """Train the curiosity module, then the wrapped agent on relabelled rewards."""
        cfg = self.config
        if isinstance(batch, Rollout):
            transitions, valid = rollout_transitions(batch, cfg.frame_stack)
        else:
            transitions, valid = batch, None
        intrinsic, losses = self.module(self._normalized(transitions, None))
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()

        if valid is None:
            raw = intrinsic
            if cfg.normalize_intrinsic:
                self.scale.update_batch(raw)
        else:  # a rollout: the bonus in its [T, N] layout; padding earns nothing
            flat = torch.zeros_like(batch.rewards).reshape(-1)
            flat[valid] = intrinsic.reshape(-1)
            raw = flat.reshape(batch.rewards.shape)
            if cfg.normalize_intrinsic:
                ends = ((batch.terminated + batch.truncated) > 0).float()
                self.scale.update_rollout(raw, ends, batch.mask)
        bonus = raw / self.scale.std() if cfg.normalize_intrinsic else raw
        relabelled = batch._replace(rewards=cfg.extrinsic_weight * batch.rewards + cfg.intrinsic_weight * bonus)
        if not cfg.episodic:  # pure curiosity without episodes (validated): ends are not terminal
            ends_field = "dones" if valid is None else "terminated"
            relabelled = relabelled._replace(**{ends_field: torch.zeros_like(getattr(batch, ends_field))})
        if valid is not None:
            bonus = bonus.reshape(-1)[valid]
        coverage = self.coverage.update(transitions.next_obs) if self.coverage.enabled else {}
        metrics = self.agent.update(relabelled)
        paid = cfg.intrinsic_weight * bonus
        extrinsic = transitions.rewards
        prefix = cfg.kind
        metrics.update({f"{prefix}_{name}": value.detach() for name, value in losses.items()})
        metrics.update(
            extrinsic_reward=extrinsic.mean(),
            intrinsic_reward=intrinsic.mean(),
            intrinsic_bonus=paid.mean(),
            # How loud the bonus is next to the env's own reward, per step and in absolute terms.
            intrinsic_ratio=paid.abs().mean() / (cfg.extrinsic_weight * extrinsic).abs().mean().clamp(min=1e-8),
            **coverage,
        )
        return metrics

    def load_state_dict(self, state: dict) -> None:
        """Restore; a checkpoint of an earlier version without the normalisers keeps fresh ones."""
        for key in ("intrinsic_scale", "coverage", "obs_normalizer"):
            if key in self.checkpointed and key not in state:
                state = {**state, key: self.checkpointed[key].state_dict()}
        super().load_state_dict(state)


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
