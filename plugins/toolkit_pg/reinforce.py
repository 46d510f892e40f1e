"""REINFORCE with a learned baseline (Williams 1992; Sutton and Barto 2018, section 13.4).

The policy-gradient theorem turns the gradient of the expected return into an expectation
over the agent's own episodes:

    grad J(theta) = E_pi[ sum_t (G_t - b(s_t)) grad log pi_theta(a_t | s_t) ]

with ``G_t = sum_{k >= t} gamma^(k-t) r_k`` the discounted reward-to-go of the episode. Any
baseline ``b(s_t)`` that ignores ``a_t`` leaves the gradient unbiased and, close to ``V(s_t)``,
shrinks its variance, so ``b = V_w`` is learned by regressing onto ``G_t``. An entropy bonus
``beta * H(pi(.|s_t))`` (Williams and Peng 1991) keeps the policy from collapsing too early.
(As in most implementations, the ``gamma^t`` weight of the exact theorem is dropped.)

Each rollout holds whole episodes (``complete_episodes``); an episode cut by a time limit is
bootstrapped from ``V(s_T)`` at the cut, since its state was not terminal. One gradient step
per rollout: the samples came from this policy, so they are used once and thrown away.
"""

from __future__ import annotations

import gymnasium as gym
import torch

from toolkit.agent import Rollout
from toolkit_pg.policies import PolicyGradientAgent
from toolkit_pg.returns import discounted_returns, masked_mean, standardize
from toolkit_pg.spec import ReinforceConfig


class Reinforce(PolicyGradientAgent):
    """Monte-Carlo policy gradient with a value baseline and an entropy bonus."""

    config: ReinforceConfig

    def update(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """One gradient step of the REINFORCE loss on a rollout of whole episodes."""
        cfg = self.config
        mask = rollout.mask

        # G_t, discounted reward-to-go; V(s_{t+1}) is read only where a time limit cut the episode.
        with torch.no_grad():
            next_values = self.policy.value(rollout.next_obs)
            returns = discounted_returns(
                rollout.rewards, next_values, rollout.terminated, rollout.truncated, mask, cfg.gamma
            )

        log_prob, entropy, values = self.policy.evaluate(rollout.obs, rollout.actions)
        advantages = returns - values.detach()  # G_t - b(s_t)
        if cfg.normalize_advantage:
            advantages = standardize(advantages, mask)

        # Maximise sum_t (G_t - b(s_t)) log pi(a_t|s_t) + beta H; fit b(s_t) to G_t by least squares.
        metrics = self.vanilla_policy_gradient_step(rollout, advantages, returns, log_prob, entropy, values)
        metrics["return_mean"] = masked_mean(returns, mask)
        return metrics


def make_reinforce(config: ReinforceConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> Reinforce:
    """Factory named by the ``reinforce`` entry point."""
    return Reinforce(config, observation_space, action_space, device)
