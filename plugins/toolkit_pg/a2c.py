"""Advantage actor-critic, A2C (Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement
Learning", the synchronous variant of A3C).

``num_envs`` environments play side by side for ``n = rollout_steps`` steps; then one
gradient step on

    L = - E[ A_t log pi(a_t|s_t) ] + c_v E[ (R_t - V(s_t))^2 ] - beta E[ H(pi(.|s_t)) ]

where the advantage ``A_t = R_t - V(s_t)`` uses either the n-step return (paper, Algorithm S3)

    R_t = r_t + gamma r_{t+1} + ... + gamma^(n-1-t) r_{n-1} + gamma^(n-t) V(s_n)

bootstrapped at the end of the rollout (and at a time-limit cut, not at a terminal state), or
GAE(lambda) (Schulman et al. 2016), with ``R_t = A_t + V(s_t)`` as the critic's target.
Actor and critic are two networks or one torso with two heads (``shared_network``, as in
the paper). Many environments decorrelate the batch, which replaces A3C's asynchrony.
The defaults are stable-baselines3's (RMSprop, lr 7e-4, n = 5, entropy weight 0; the paper
used 0.01, set ``ent_coef`` for that).
"""

from __future__ import annotations

import gymnasium as gym
import torch

from toolkit.agent import Rollout
from toolkit_pg.policies import PolicyGradientAgent
from toolkit_pg.returns import discounted_returns, gae, standardize
from toolkit_pg.spec import A2CConfig


class A2C(PolicyGradientAgent):
    """Synchronous advantage actor-critic with n-step or GAE(lambda) advantages."""

    config: A2CConfig

    def __init__(
        self, config: A2CConfig, observation_space: gym.Space, action_space: gym.Space, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__(config, observation_space, action_space, device, optimizer=config.optimizer)

    def update(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """One gradient step of the actor-critic loss on an n-step rollout."""
        cfg = self.config
        mask = rollout.mask
        log_prob, entropy, values = self.policy.evaluate(rollout.obs, rollout.actions)

        with torch.no_grad():
            next_values = self.policy.value(rollout.next_obs)
            if cfg.advantage == "gae":
                advantages = gae(rollout.rewards, values.detach(), next_values, rollout.terminated,
                                 rollout.truncated, mask, cfg.gamma, cfg.gae_lambda)
                returns = advantages + values.detach()
            else:  # n-step returns R_t, bootstrapped from V(s_n)
                returns = discounted_returns(rollout.rewards, next_values, rollout.terminated,
                                             rollout.truncated, mask, cfg.gamma)
                advantages = returns - values.detach()
            if cfg.normalize_advantage:
                advantages = standardize(advantages, mask)

        return self.vanilla_policy_gradient_step(rollout, advantages, returns, log_prob, entropy, values)


def make_a2c(config: A2CConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> A2C:
    """Factory named by the ``a2c`` entry point."""
    return A2C(config, observation_space, action_space, device)
