"""Returns and advantages of a time-major rollout, shared by REINFORCE, A2C and PPO.

Every function takes ``[T, N]`` tensors (T steps of N environments) laid out as
:class:`toolkit.agent.Rollout` lays them out, and respects how a step ended:

* ``terminated``: the episode reached a terminal state; the future is worth 0 (no bootstrap);
* ``truncated``: a time limit cut the episode; the future is worth ``V(s_{t+1})`` (bootstrap
  from ``next_values``), because the state itself was not terminal;
* the rollout's last step, or a step followed by padding, of an episode still running: the
  future is worth ``V(s_{t+1})`` too;
* ``mask`` = 0 marks padding (an environment that finished its episode and waited); padding
  gets a return and advantage of 0 and is never looked through.

``next_values`` is ``V(s_{t+1})`` for every step, evaluated on ``Rollout.next_obs``, which holds
the true successor even where an episode ended.
"""

from __future__ import annotations

import torch


def continues(terminated: torch.Tensor, truncated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 where step ``t + 1`` of the rollout continues the episode of step ``t``, else 0.

    Not after an episode ended, not into padding, and never past the rollout's last step.
    """
    ended = torch.maximum(terminated, truncated)
    following = torch.cat([mask[1:], torch.zeros_like(mask[:1])])
    return (1.0 - ended) * following


def discounted_returns(
    rewards: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """Discounted reward-to-go ``G_t = r_t + gamma * G_{t+1}``, bootstrapped where the episode is cut.

    Where the episode continues in the rollout, ``G_{t+1}`` is the next step's return; where it
    stops, the future is ``(1 - terminated_t) * V(s_{t+1})``. On whole episodes this is
    REINFORCE's return; on a rollout of ``n`` steps it is A2C's n-step return.
    """
    cont = continues(terminated, truncated, mask)
    bootstrap = (1.0 - terminated) * next_values
    returns = torch.zeros_like(rewards)
    future = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        future = cont[t] * future + (1.0 - cont[t]) * bootstrap[t]
        returns[t] = mask[t] * (rewards[t] + gamma * future)
        future = returns[t]
    return returns


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)`` and
    ``A_t = delta_t + gamma * lambda * A_{t+1}`` while the episode continues in the rollout.
    ``lambda = 1`` gives the discounted return minus ``V(s_t)``; ``lambda = 0`` the one-step TD error.
    Returns the advantages; the value targets are ``advantages + values``.
    """
    # Everything but the recursion is computed on whole tensors, and the rows are unbound once, so
    # each of the T steps costs three small ops instead of three ops plus three index lookups and
    # a copy; the values are bitwise the same as the step-by-step ``gamma * lam * cont[t] * A``.
    decay = gamma * lam * continues(terminated, truncated, mask)
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    advantages: list[torch.Tensor] = []
    next_advantage = torch.zeros_like(rewards[0])
    for m_t, delta_t, decay_t in zip(reversed(mask.unbind()), reversed(deltas.unbind()), reversed(decay.unbind())):
        next_advantage = m_t * (delta_t + decay_t * next_advantage)
        advantages.append(next_advantage)
    return torch.stack(advantages[::-1]) if advantages else torch.zeros_like(rewards)


def real_count(mask: torch.Tensor) -> torch.Tensor:
    """How many real steps ``mask`` holds (at least 1, so that means of padding alone are 0)."""
    return mask.sum().clamp(min=1.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x`` over the real steps (``mask`` = 1), without reading the count back to the host.

    ``count``, :func:`real_count` of ``mask``, may be passed in when many means share one mask
    (a PPO minibatch takes seven), so that it is summed once."""
    return (x * mask).sum() / (real_count(mask) if count is None else count)


def standardize(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, count: torch.Tensor | None = None) -> torch.Tensor:
    """``(x - mean) / std`` over the real steps; padding stays 0. ``count`` as for :func:`masked_mean`."""
    count = real_count(mask) if count is None else count
    mean = masked_mean(x, mask, count)
    std = masked_mean((x - mean).pow(2), mask, count).sqrt()
    return mask * (x - mean) / (std + eps)


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[target - prediction] / Var[target]``: 1 is a perfect critic, 0 no better than a constant."""
    def var(x: torch.Tensor) -> torch.Tensor:
        return masked_mean((x - masked_mean(x, mask)).pow(2), mask)

    return 1.0 - var(targets - predictions) / var(targets).clamp(min=1e-8)
