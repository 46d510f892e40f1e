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

import gymnasium as gym
import torch

from toolkit.agent import Agent, Rollout
from toolkit.curiosity import CuriousAgent
from toolkit_pg.policies import PolicyGradientAgent
from toolkit_pg.returns import explained_variance, gae, masked_mean, standardize
from toolkit_pg.spec import PPOConfig, PPOICMConfig


def clipped_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` per sample, and the ratio ``rho``."""
    ratio = torch.exp(log_prob - old_log_prob)
    return torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages), ratio


class PPO(PolicyGradientAgent):
    """PPO-Clip with GAE(lambda), minibatch epochs and optional value clipping."""

    config: PPOConfig

    def update(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """``epochs`` passes of minibatch gradient steps on the clipped objective."""
        cfg = self.config

        # The rollout's policy pi_old and its values, advantages and value targets, all fixed.
        with torch.no_grad():
            old_log_prob, _, old_values = self.policy.evaluate(rollout.obs, rollout.actions)
            next_values = self.policy.value(rollout.next_obs)
            advantages = gae(rollout.rewards, old_values, next_values, rollout.terminated,
                             rollout.truncated, rollout.mask, cfg.gamma, cfg.gae_lambda)
            returns = advantages + old_values

        # Flatten [T, N] into one batch of T * N samples for shuffling.
        size = rollout.mask.numel()

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(size, *x.shape[2:])

        obs, actions, mask = flat(rollout.obs), flat(rollout.actions), flat(rollout.mask)
        old_log_prob, old_values = flat(old_log_prob), flat(old_values)
        advantages, returns = flat(advantages), flat(returns)
        num_minibatches = max(1, size // cfg.minibatch_size)

        sums: dict[str, torch.Tensor] = {}
        for _ in range(cfg.epochs):
            for idx in torch.randperm(size, device=mask.device).tensor_split(num_minibatches):
                m = mask[idx]
                log_prob, entropy, values = self.policy.evaluate(obs[idx], actions[idx])
                adv = standardize(advantages[idx], m) if cfg.normalize_advantage else advantages[idx]

                # Clipped surrogate objective (eq. 7), to be maximised.
                surrogate, ratio = clipped_surrogate(log_prob, old_log_prob[idx], adv, cfg.clip_range)
                policy_loss = -masked_mean(surrogate, m)

                # Value loss, optionally clipped around the rollout's values.
                value_error = (values - returns[idx]).pow(2)
                if cfg.clip_range_vf is not None:
                    clipped = old_values[idx] + (values - old_values[idx]).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
                    value_error = torch.maximum(value_error, (clipped - returns[idx]).pow(2))
                value_loss = masked_mean(value_error, m)

                entropy_mean = masked_mean(entropy, m)
                loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy_mean
                grad_norm = self.gradient_step(loss)

                with torch.no_grad():
                    log_ratio = log_prob - old_log_prob[idx]
                    step = {
                        "policy_loss": policy_loss,
                        "value_loss": value_loss,
                        "entropy": entropy_mean,
                        # KL(pi_old || pi) estimated as E[(rho - 1) - log rho] (Schulman's k3 estimator).
                        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, m),
                        "clip_fraction": masked_mean(((ratio - 1.0).abs() > cfg.clip_range).float(), m),
                        "grad_norm": grad_norm,
                    }
                    for key, value in step.items():
                        sums[key] = sums[key] + value.detach() if key in sums else value.detach()

        self.end_update(rollout)
        count = cfg.epochs * num_minibatches
        metrics = {key: value / count for key, value in sums.items()}
        metrics["explained_variance"] = explained_variance(old_values, returns, mask)
        if not self.policy.discrete:
            metrics["std"] = self.policy.log_std.detach().exp().mean()
        return metrics


def make_ppo(config: PPOConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> PPO:
    """Factory named by the ``ppo`` entry point."""
    return PPO(config, observation_space, action_space, device)


def make_ppo_icm(config: PPOICMConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> Agent:
    """Factory named by the ``ppo-icm`` entry point: PPO wrapped in the curiosity module."""
    return CuriousAgent(PPO(config, observation_space, action_space, device), observation_space, action_space, config.curiosity, device)
