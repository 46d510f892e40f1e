"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications").

SAC maximises return plus policy entropy, ``sum_t E[r_t + alpha * H(pi(.|s_t))]``, with

* twin soft Q-functions ``Q_1, Q_2`` and Polyak-averaged targets; the smaller target value
  is used in the Bellman backup to curb overestimation;
* a tanh-squashed Gaussian policy trained through the reparameterisation trick;
* a temperature ``alpha`` tuned so that the policy's entropy stays near a target (``-dim A``).

Observations reach actor and critics through one encoder (``encoder=...``,
:func:`toolkit.nn.encoders.make_encoder`): the identity for vectors, so SAC on vectors is
exactly the algorithm above. On pixels SAC follows DrQ (Kostrikov et al. 2020, "Image
Augmentation Is All You Need: Regularizing Deep Reinforcement Learning from Pixels"):

* one encoder is shared by actor and critics and trained by the critic loss only; the actor
  reads its features detached (section 3 and their SAC-AE predecessor, Yarats et al. 2019);
* the target critics read a target copy of the encoder, Polyak-averaged with them;
* each update shifts ``obs`` and ``next_obs`` by random ``[-4, 4]`` pixels (``augment=shift``,
  :func:`toolkit.nn.encoders.random_shift`), one augmentation of each per update (DrQ with
  ``K = M = 1``, as DrQ-v2 uses it).

Speed notes (``docs/speed.md``): the twin critics are one stacked ensemble; the critic, actor
and temperature losses share one backward pass and one optimiser step (they touch disjoint
parameters, and the actor reads the critics through detached weights), and nothing is read
back to the host inside :meth:`SAC.update` (``tests/test_sync_free.py`` counts such reads).
The update is pure tensor code, so ``--compile`` can wrap it in ``torch.compile`` or capture
it in a CUDA graph.
"""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import torch
from torch import nn

from toolkit.agent import Agent, Batch
from toolkit.curiosity import CuriousAgent
from toolkit.nn import EnsembleMLP, TanhGaussian, fast_adam_options, mlp
from toolkit.nn.encoders import make_encoder, random_shift
from toolkit_sac.spec import SACConfig, SACICMConfig

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class TanhGaussianActor(nn.Module):
    """``a = scale * tanh(u) + bias`` with ``u ~ N(mu(s), sigma(s))``, the SAC policy."""

    def __init__(self, obs_dim: int, action_space: gym.spaces.Box, hidden: tuple[int, ...]) -> None:
        super().__init__()
        act_dim = int(action_space.shape[0])
        self.net = mlp(obs_dim, hidden, 2 * act_dim)
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.register_buffer("scale", (high - low) / 2.0)
        self.register_buffer("bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        # Squash log_std smoothly into [LOG_STD_MIN, LOG_STD_MAX] (as CleanRL does) for stability.
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        return mean, log_std

    def distribution(self, obs: torch.Tensor) -> TanhGaussian:
        """The policy ``pi(.|s)`` at a batch of observations."""
        mean, log_std = self(obs)
        return TanhGaussian(mean, log_std, self.scale, self.bias)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and its log-probability ``[B, 1]``."""
        return self.distribution(obs).rsample()

    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The action of :meth:`sample` without its log-probability (for acting): same draw."""
        return self.distribution(obs).sample()

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action used for evaluation."""
        return self.distribution(obs).mode()


#: DrQ's shift: images are padded by 4 pixels and cropped back (Kostrikov et al. 2020).
SHIFT_PIXELS = 4


class SAC(Agent):
    """Soft Actor-Critic for continuous (Box) action spaces, on vector or image observations."""

    def __init__(
        self,
        config: SACConfig,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.config = config
        # The encoder is built first: for vectors it has no parameters and draws no random
        # numbers, so actor and critics start from the same weights as without it.
        self.encoder = make_encoder(config.encoder, observation_space, device, config.encoder_trainable)
        obs_dim = self.encoder.out_dim
        act_dim = int(action_space.shape[0])
        hidden = tuple(config.hidden_sizes)

        self.actor = TanhGaussianActor(obs_dim, action_space, hidden).to(device)
        self.critic = EnsembleMLP(2, obs_dim + act_dim, hidden, 1).to(device)
        self.target_critic = EnsembleMLP(2, obs_dim + act_dim, hidden, 1).to(device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        # DrQ's target critics read a Polyak-averaged copy of the encoder. An encoder that does
        # not learn (the identity on vectors, a frozen one) is its own target.
        encoder_params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False) if encoder_params else self.encoder
        self.augment = config.augment == "shift" and self.encoder.image

        self.log_alpha = torch.tensor(math.log(config.alpha), device=device, requires_grad=config.autotune_alpha)
        self.target_entropy = -float(act_dim) if config.target_entropy is None else config.target_entropy

        # One optimiser with one parameter group per distinct learning rate: Adam is
        # per-parameter, so this equals separate optimisers for critics, actor and temperature,
        # but costs one fused step instead of three.
        # The encoder learns from the critic loss, so it takes the critics' learning rate.
        critic_params = list(self.critic.parameters()) + encoder_params
        other_params = list(self.actor.parameters()) + ([self.log_alpha] if config.autotune_alpha else [])
        critic_lr = config.critic_lr or config.lr
        if critic_lr == config.lr:
            groups = [{"params": critic_params + other_params, "lr": config.lr}]
        else:
            groups = [{"params": critic_params, "lr": critic_lr}, {"params": other_params, "lr": config.lr}]
        self.optimizer = torch.optim.Adam(groups, **fast_adam_options(device))
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        if self.target_encoder is not self.encoder:
            self._critic_params += list(self.encoder.parameters())
            self._target_params += list(self.target_encoder.parameters())

        self.checkpointed = {
            "actor": self.actor,
            "critic": self.critic,
            "target_critic": self.target_critic,
            "log_alpha": self.log_alpha,
            "optimizer": self.optimizer,
        }
        # Only an encoder with state is saved, so vector runs keep the checkpoint they always had.
        if self.encoder.state_dict():
            self.checkpointed["encoder"] = self.encoder
        if self.target_encoder is not self.encoder:
            self.checkpointed["target_encoder"] = self.target_encoder
        # What acts: the actor, and the encoder it reads observations through when that has state.
        self.policy_keys = ("actor", "encoder") if "encoder" in self.checkpointed else ("actor",)

    def prunable_modules(self) -> dict[str, torch.nn.Module]:
        """The policy: the actor, and the pixel encoder it acts through (shared with the critics)."""
        return {"encoder": self.encoder, "actor": self.actor}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Sample from the policy, or take its mean action when ``deterministic``."""
        features = self.encoder(obs)
        if deterministic:
            return self.actor.mode(features)
        return self.actor.sample_action(features)

    def augmented(self, obs: torch.Tensor) -> torch.Tensor:
        """DrQ's random shift of a batch of images (``augment=shift``); anything else as it is."""
        if not self.augment:
            return obs
        return random_shift(obs, SHIFT_PIXELS, self.encoder.channels_last)

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The critic, actor and temperature losses of one batch, and what to report of it."""
        cfg = self.config
        alpha = self.log_alpha.detach().exp()
        obs, next_obs = self.augmented(batch.obs), self.augmented(batch.next_obs)
        features = self.encoder(obs)

        # Soft Bellman target (paper eq. 3 with clipped double Q):
        # y = r + gamma (1 - done) (min_i Q'_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
        # The policy reads s' through the online encoder, the target critics through its target copy (DrQ).
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(self.encoder(next_obs))
            next_q = self.target_critic(torch.cat([self.target_encoder(next_obs), next_action], -1)).amin(0)
            target = batch.rewards + cfg.gamma * (1.0 - batch.dones) * (next_q - alpha * next_log_prob)

        # Critic loss J_Q = 1/2 E[(Q_i(s, a) - y)^2], summed over the twin critics (eq. 5).
        # Its gradient is the only one that reaches the encoder.
        q = self.critic(torch.cat([features, batch.actions], -1))
        critic_loss = 0.5 * (q - target).pow(2).mean(dim=(1, 2)).sum()

        # Policy loss J_pi = E[alpha log pi(a|s) - min_i Q_i(s, a)], a reparameterised (eq. 7).
        # The critics are read through detached weights and the encoder's features are detached
        # (DrQ), so this loss moves the actor only.
        state = features.detach()
        action, log_prob = self.actor.sample(state)
        q_pi = self.critic(torch.cat([state, action], -1), detach_params=True).min(0).values
        actor_loss = (alpha * log_prob - q_pi).mean()

        # Temperature loss J(alpha) = E[-alpha (log pi(a|s) + target_entropy)] (eq. 18), in log alpha.
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()

        metrics = {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "alpha": alpha,
            "entropy": -log_prob.detach().mean(),
            "q_mean": q.detach().mean(),
        }
        return critic_loss, actor_loss, alpha_loss, metrics

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One SAC gradient step on critics (and encoder), actor and temperature."""
        cfg = self.config
        critic_loss, actor_loss, alpha_loss, metrics = self.losses(batch)

        self.optimizer.zero_grad(set_to_none=True)
        (critic_loss + actor_loss + (alpha_loss if cfg.autotune_alpha else 0.0)).backward()
        self.optimizer.step()

        # Polyak averaging of the target critics (and the target encoder): theta' <- (1 - tau) theta' + tau theta.
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, cfg.tau)

        return metrics


def make_sac(config: SACConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> SAC:
    """Factory named by the ``sac`` entry point."""
    return SAC(config, observation_space, action_space, device)


def make_sac_icm(config: SACICMConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> Agent:
    """Factory named by the ``sac-icm`` entry point: SAC wrapped in the curiosity module."""
    return CuriousAgent(SAC(config, observation_space, action_space, device), observation_space, action_space, config.curiosity, device)
