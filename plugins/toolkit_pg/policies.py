"""The policy and value networks shared by REINFORCE, A2C and PPO, and the agent scaffolding
around them (acting, one optimiser step, observation statistics).

Two policy heads, with their log-probabilities and entropies written out:

* ``Discrete(n)`` actions: a categorical distribution over ``softmax(logits(s))``,
  ``log pi(a|s) = logits_a - logsumexp(logits)``, ``H = -sum_a pi(a|s) log pi(a|s)``;
* ``Box`` actions: a diagonal Gaussian ``N(mu(s), diag(sigma^2))`` whose log standard
  deviation is a learned vector that does not depend on the state (as in PPO's paper and
  stable-baselines3), ``log pi(a|s) = sum_i [-(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi)/2]``,
  ``H = sum_i [log sigma_i + (1 + log(2 pi))/2]``.

Observations first pass through one encoder (``encoder=...``,
:func:`toolkit.nn.encoders.make_encoder`), shared by policy and value: the identity for
vectors (the default), a CNN for images, as in the PPO and A2C Atari networks whose convolutional
torso feeds both heads (Mnih et al. 2016; Schulman et al. 2017). It is trained by the whole
loss, policy and value terms together. On its features, actor and critic are two MLPs, or one
torso with two heads (``shared_network``). Weights are
initialised orthogonally as in the PPO and A2C reference implementations (OpenAI baselines,
stable-baselines3): gain sqrt(2) in hidden layers, 0.01 for the policy's output (so the first
policy is close to uniform or zero-mean) and 1 for the value's.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from toolkit.agent import Agent, Rollout
from toolkit.errors import ToolkitError
from toolkit.nn import fast_adam_options
from toolkit.nn.encoders import make_encoder
from toolkit.nn.normalization import RunningNormalizer
from toolkit_pg.returns import explained_variance, masked_mean, real_count
from toolkit_pg.spec import PolicyGradientConfig

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# --- the two action distributions -------------------------------------------------------------

# ``log_softmax`` is ``logits - logsumexp(logits)`` in one kernel with a one-node backward, while on
# CPU ``logsumexp`` is composite (max, exp, sum, log and an inf guard); computed once for both the
# log-probability and the entropy, it halves the head's forward and backward time in a small
# minibatch. It agrees with the subtraction to rounding (a few 1e-7).

def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` of integer ``actions`` ``[...]`` under ``softmax(logits)`` ``[..., n]``."""
    return _gather_actions(torch.log_softmax(logits, -1), actions)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H = -sum_a pi(a|s) log pi(a|s)``, shape ``[...]``."""
    return _entropy_of(torch.log_softmax(logits, -1))


def categorical_log_prob_and_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`categorical_log_prob` and :func:`categorical_entropy` from one log-softmax."""
    log_probs = torch.log_softmax(logits, -1)
    return _gather_actions(log_probs, actions), _entropy_of(log_probs)


def _gather_actions(log_probs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def _entropy_of(log_probs: torch.Tensor) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).sum(-1)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log N(a; mu, diag(sigma^2))`` summed over action dimensions, shape ``[...]``."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - HALF_LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
    """Entropy of the diagonal Gaussian; it does not depend on the state, so it is broadcast."""
    return (log_std + 0.5 + HALF_LOG_2PI).sum(-1).expand(batch_shape)


# --- networks ---------------------------------------------------------------------------------

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _linear(in_dim: int, out_dim: int, gain: float) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _torso(in_dim: int, hidden: tuple[int, ...], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [_linear(in_dim, width, math.sqrt(2.0)), activation()]
        in_dim = width
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """A stochastic policy ``pi(a|s)`` (categorical or diagonal Gaussian) and a value ``V(s)``."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: PolicyGradientConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if not isinstance(observation_space, gym.spaces.Box):
            raise ToolkitError(f"Policy-gradient agents need Box (vector or image) observations, not {observation_space}.")
        self.obs_shape = tuple(observation_space.shape)
        # For vectors the encoder is the identity on the flattened observation: no parameters,
        # no random numbers drawn, so the networks below start as they did without it.
        self.encoder = make_encoder(config.encoder, observation_space, device, config.encoder_trainable)
        obs_dim = self.encoder.out_dim
        if config.normalize_obs and self.encoder.image:
            raise ToolkitError(
                "normalize_obs standardises vector observations, but this environment observes images "
                f"{self.obs_shape}, which the encoder scales to [0, 1]; leave normalize_obs off."
            )
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            out_dim = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            out_dim = int(action_space.shape[0])
            if not (math.isfinite(float(action_space.low.min())) and math.isfinite(float(action_space.high.max()))):
                raise ToolkitError(f"Gaussian policies need finite action bounds, but the action space is {action_space}.")
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))
            self.log_std = nn.Parameter(torch.full((out_dim,), float(config.init_log_std)))
        else:
            raise ToolkitError(f"Policy-gradient agents need Discrete or one-dimensional Box actions, not {action_space}.")

        hidden, act = tuple(config.hidden_sizes), ACTIVATIONS[config.activation]
        self.obs_norm = RunningNormalizer((obs_dim,)) if config.normalize_obs else None
        self.shared = config.shared_network
        self.actor_torso = _torso(obs_dim, hidden, act)
        self.critic_torso = self.actor_torso if self.shared else _torso(obs_dim, hidden, act)
        self.policy_head = _linear(hidden[-1], out_dim, 0.01)
        self.value_head = _linear(hidden[-1], 1, 1.0)

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.encoder(obs)
        return self.obs_norm(x) if self.obs_norm is not None else x

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distribution parameters (logits, or the Gaussian's mean) and ``V(s)``, in one pass."""
        x = self._features(obs)
        actor = self.actor_torso(x)
        critic = actor if self.shared else self.critic_torso(x)
        return self.policy_head(actor), self.value_head(critic).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``V(s)``, shape ``obs.shape[:-len(obs_shape)]``."""
        return self.value_head(self.critic_torso(self._features(obs))).squeeze(-1)

    def distribution(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy's logits or mean without evaluating the critic (used for acting)."""
        return self.policy_head(self.actor_torso(self._features(obs)))

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log pi(a|s)``, the policy's entropy at ``s`` and ``V(s)``, all shaped like the batch."""
        params, value = self(obs)
        if self.discrete:
            return (*categorical_log_prob_and_entropy(params, actions), value)
        return gaussian_log_prob(params, self.log_std, actions), gaussian_entropy(self.log_std, value.shape), value

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """``a ~ pi(.|s)`` from torch's global generator. Gaussian samples are not clipped: the
        loop clips them for the environment and keeps them as drawn, so log-probs stay exact."""
        params = self.distribution(obs)
        if self.discrete:  # Gumbel-max: argmax(logits + G), G = -log(Exp(1)); 4x cheaper than multinomial
            return (params - torch.empty_like(params).exponential_().log()).argmax(-1)
        return params + torch.randn_like(params) * self.log_std.exp()

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely action (evaluation), inside the action space's bounds."""
        params = self.distribution(obs)
        if self.discrete:
            return params.argmax(-1)
        return torch.maximum(torch.minimum(params, self.action_high), self.action_low)


# --- gradient clipping -----------------------------------------------------------------------
# ``nn.utils.clip_grad_norm_`` computes exactly this, but first groups the gradients by device and
# dtype in Python on every call, which cost more than the arithmetic (about 110 us against 45 us
# per PPO minibatch on CPU). An agent's gradients live on one device in one dtype, so the
# grouping is skipped; the results are bitwise the same.

def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``grads`` taken together, as one tensor (no host synchronisation).
    ``grads`` is never empty here: every loss reaches the trainable policy and value heads."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_to_norm(grads: list[torch.Tensor], norm: torch.Tensor, max_norm: float) -> None:
    """Scale ``grads`` in place so that their global ``norm`` is at most ``max_norm`` (with
    ``clip_grad_norm_``'s 1e-6 guard); a multiplication by 1 where it already is."""
    torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))


# --- the agent scaffolding the three algorithms share -----------------------------------------

class PolicyGradientAgent(Agent):
    """What REINFORCE, A2C and PPO share: an :class:`ActorCritic`, its optimiser and lr schedule.

    Subclasses implement :meth:`update` from a :class:`~toolkit.agent.Rollout`; since the
    parameters did not change while the rollout was collected, they recompute log-probabilities
    and values from it instead of being handed them.
    """

    def __init__(
        self,
        config: PolicyGradientConfig,
        observation_space: gym.Space,
        action_space: gym.Space,
        device: torch.device | str = "cpu",
        optimizer: str = "adam",
    ) -> None:
        super().__init__()
        self.config = config
        self.policy = ActorCritic(observation_space, action_space, config, device).to(device)
        # A frozen encoder's parameters stay out of the optimiser and the gradient clipping.
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if optimizer == "rmsprop":  # A3C's and stable-baselines3's A2C settings
            self.optimizer: torch.optim.Optimizer = torch.optim.RMSprop(params, lr=config.lr, alpha=0.99, eps=1e-5)
        else:  # eps 1e-5 as in the PPO reference implementations
            self.optimizer = torch.optim.Adam(params, lr=config.lr, eps=1e-5, **fast_adam_options(device))
        # Linear decay in env steps, counted as the nominal num_envs * rollout_steps per update.
        per_update = config.num_envs * config.rollout_steps
        decay = config.lr_decay_steps if config.lr_schedule == "linear" else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda u: 1.0 if decay is None else max(0.0, 1.0 - u * per_update / decay)
        )
        self._params = params
        self.checkpointed: dict[str, Any] = {"policy": self.policy, "optimizer": self.optimizer, "lr_schedule": self.scheduler}
        # The actor-critic acts (its value head, small and often sharing the torso, comes along).
        self.policy_keys = ("policy",)

    def prunable_modules(self) -> dict[str, torch.nn.Module]:
        """The acting path: encoder, actor torso and policy head (with a shared network the
        torso also feeds the value head)."""
        policy = self.policy
        return {"encoder": policy.encoder, "actor_torso": policy.actor_torso, "policy_head": policy.policy_head}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Sample from the policy, or take its most likely action when ``deterministic``."""
        return self.policy.mode(obs) if deterministic else self.policy.sample(obs)

    def gradient_step(self, loss: torch.Tensor) -> torch.Tensor:
        """One optimiser step on ``loss``, the gradient's global norm clipped; returns the norm."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self._params if p.grad is not None]
        norm = global_norm(grads)
        if self.config.max_grad_norm is not None:
            clip_to_norm(grads, norm, self.config.max_grad_norm)
        self.optimizer.step()
        return norm

    def actor_critic_loss(
        self, policy_loss: torch.Tensor, value_loss: torch.Tensor, entropy_mean: torch.Tensor
    ) -> torch.Tensor:
        """``policy_loss + c_v value_loss - beta entropy``, the loss all three algorithms descend.

        With ``beta = 0`` (PPO's and A2C's default) the entropy term is left out rather than
        multiplied by 0: the loss and its gradient are the same, but backward no longer walks the
        entropy's subgraph, a few percent of a small minibatch's time on CPU."""
        cfg = self.config
        loss = policy_loss + cfg.vf_coef * value_loss
        return loss - cfg.ent_coef * entropy_mean if cfg.ent_coef else loss

    def vanilla_policy_gradient_step(
        self,
        rollout: Rollout,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        log_prob: torch.Tensor,
        entropy: torch.Tensor,
        values: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """One gradient step of the loss REINFORCE and A2C share, then :meth:`end_update`:

            L = - E[ A_t log pi(a_t|s_t) ] + c_v E[ (R_t - V(s_t))^2 ] - beta E[ H(pi(.|s_t)) ]

        i.e. ascend the advantage-weighted log-likelihood, fit the critic (or baseline) to the
        return by least squares, and keep entropy up. Returns the loss terms for logging."""
        mask = rollout.mask
        count = real_count(mask)  # shared by the three means
        policy_loss = -masked_mean(advantages * log_prob, mask, count)
        value_loss = masked_mean((returns - values).pow(2), mask, count)
        entropy_mean = masked_mean(entropy, mask, count)
        grad_norm = self.gradient_step(self.actor_critic_loss(policy_loss, value_loss, entropy_mean))
        self.end_update(rollout)
        return {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy_mean.detach(),
            "explained_variance": explained_variance(values.detach(), returns, mask),
            "grad_norm": grad_norm.detach(),
        }

    def end_update(self, rollout: Rollout) -> None:
        """After learning from a rollout: advance the lr schedule and fold the rollout's
        observations into the normaliser. Done last, so that every log-probability of this update
        was computed with the statistics the rollout was collected with."""
        self.scheduler.step()
        if self.policy.obs_norm is not None:
            self.policy.obs_norm.update(rollout.obs.float().flatten(2), rollout.mask)
