"""Proximal Policy Optimisation (Schulman et al. 2017), the clipped-surrogate variant.

After each rollout, with the probability ratio ``rho_t(theta) = pi_theta(a_t|s_t) / pi_old(a_t|s_t)``
against the policy that collected it, PPO maximises for ``epochs`` passes over shuffled
minibatches

    L(theta) = E[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ]        (paper eq. 7)
               - c_1 E[ (V(s_t) - V_t^targ)^2 ] + c_2 E[ H(pi(.|s_t)) ]      (eq. 9)

The clip removes any incentive to move ``rho`` outside ``[1 - eps, 1 + eps]``: the minimum makes
the objective a pessimistic bound, so many gradient steps on one batch stay close to the
policy that collected it. Advantages are GAE(lambda) (Schulman et al. 2016; paper eq. 11-12),
standardised per minibatch, and ``V^targ = A + V_old``. With ``clip_range_vf`` the value
prediction is clipped around ``V_old`` as well and the larger of the two losses is taken, as
in OpenAI baselines' PPO2.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import gymnasium as gym
import torch

from toolkit.agent import Agent, Rollout
from toolkit.curiosity import CuriousAgent
from toolkit_pg.policies import PolicyGradientAgent
from toolkit_pg.returns import explained_variance, gae, masked_mean, real_count, standardize
from toolkit_pg.spec import PPOConfig, PPOICMConfig

#: What every minibatch step reports, in the order of the row it returns; averaged per update.
STEP_METRICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm")


def clipped_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` per sample, and the ratio ``rho``."""
    ratio = torch.exp(log_prob - old_log_prob)
    return torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages), ratio


class Samples(NamedTuple):
    """A rollout flattened to ``T * N`` samples, with what is fixed while PPO learns from it."""

    obs: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    old_log_prob: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def shuffled_minibatches(samples: Samples, count: int) -> Iterator[Samples]:
    """One epoch: the samples in a fresh random order, split into ``count`` minibatches.

    Each column is gathered once in the new order and split into views, rather than indexed
    once per minibatch: the minibatches hold the same samples (one ``randperm`` per epoch, as
    before), for seven index ops an epoch instead of seven to ten a minibatch. The price is one
    shuffled copy of the rollout alive while the epoch runs."""
    order = torch.randperm(samples.mask.numel(), device=samples.mask.device)
    columns = [column[order].tensor_split(count) for column in samples]
    return (Samples(*parts) for parts in zip(*columns))


class PPO(PolicyGradientAgent):
    """PPO-Clip with GAE(lambda), minibatch epochs and optional value clipping."""

    config: PPOConfig

    def update(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """``epochs`` passes of minibatch gradient steps on the clipped objective."""
        cfg = self.config
        samples = self.fixed_samples(rollout)
        num_minibatches = max(1, samples.mask.numel() // cfg.minibatch_size)

        # One row of STEP_METRICS per minibatch, kept on the device and averaged once at the end.
        rows = [self.minibatch_step(batch) for _ in range(cfg.epochs)
                for batch in shuffled_minibatches(samples, num_minibatches)]

        self.end_update(rollout)
        metrics = dict(zip(STEP_METRICS, torch.stack(rows).mean(0).unbind()))
        metrics["explained_variance"] = explained_variance(samples.old_values, samples.returns, samples.mask)
        if not self.policy.discrete:
            metrics["std"] = self.policy.log_std.detach().exp().mean()
        return metrics

    @torch.no_grad()
    def fixed_samples(self, rollout: Rollout) -> Samples:
        """The rollout's policy pi_old and its values, advantages and value targets, all fixed,
        with ``[T, N]`` flattened into one batch of ``T * N`` samples for shuffling."""
        cfg = self.config
        old_log_prob, _, old_values = self.policy.evaluate(rollout.obs, rollout.actions)
        next_values = self.policy.value(rollout.next_obs)
        advantages = gae(rollout.rewards, old_values, next_values, rollout.terminated,
                         rollout.truncated, rollout.mask, cfg.gamma, cfg.gae_lambda)
        returns = advantages + old_values
        size = rollout.mask.numel()

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(size, *x.shape[2:])

        return Samples(flat(rollout.obs), flat(rollout.actions), flat(rollout.mask), flat(old_log_prob),
                       flat(old_values), flat(advantages), flat(returns))

    def minibatch_step(self, batch: Samples) -> torch.Tensor:
        """One gradient step on the clipped objective; returns the row of :data:`STEP_METRICS`."""
        cfg = self.config
        m = batch.mask
        count = real_count(m)  # shared by the minibatch's seven masked means
        log_prob, entropy, values = self.policy.evaluate(batch.obs, batch.actions)
        adv = standardize(batch.advantages, m, count=count) if cfg.normalize_advantage else batch.advantages

        # Clipped surrogate objective (eq. 7), to be maximised.
        surrogate, ratio = clipped_surrogate(log_prob, batch.old_log_prob, adv, cfg.clip_range)
        policy_loss = -masked_mean(surrogate, m, count)
        value_loss = masked_mean(self.value_error(values, batch), m, count)
        entropy_mean = masked_mean(entropy, m, count)
        grad_norm = self.gradient_step(self.actor_critic_loss(policy_loss, value_loss, entropy_mean))

        with torch.no_grad():
            excess = ratio - 1.0
            # KL(pi_old || pi) estimated as E[(rho - 1) - log rho] (Schulman's k3 estimator).
            approx_kl = masked_mean(excess - (log_prob - batch.old_log_prob), m, count)
            clip_fraction = masked_mean((excess.abs() > cfg.clip_range).float(), m, count)
            return torch.stack([policy_loss, value_loss, entropy_mean, approx_kl, clip_fraction, grad_norm])

    def value_error(self, values: torch.Tensor, batch: Samples) -> torch.Tensor:
        """Squared error of ``V(s)`` against its target, optionally clipped around the rollout's values."""
        error = (values - batch.returns).pow(2)
        vf = self.config.clip_range_vf
        if vf is None:
            return error
        clipped = batch.old_values + (values - batch.old_values).clamp(-vf, vf)
        return torch.maximum(error, (clipped - batch.returns).pow(2))


def make_ppo(config: PPOConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> PPO:
    """Factory named by the ``ppo`` entry point."""
    return PPO(config, observation_space, action_space, device)


def make_ppo_icm(config: PPOICMConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> Agent:
    """Factory named by the ``ppo-icm`` entry point: PPO wrapped in the curiosity module."""
    return CuriousAgent(PPO(config, observation_space, action_space, device), observation_space, action_space, config.curiosity, device)
