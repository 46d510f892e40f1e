"""The contract between the framework and an agent plugin.

An agent acts and learns; it never steps environments, writes logs, seeds, parses the
command line or talks to Ray. The framework's loops do that once for every agent, which is
why the same plugin runs locally, under Ray and in the contract tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import numpy as np
import torch

from toolkit.checkpointing import Checkpointed


class Batch(NamedTuple):
    """A minibatch of transitions, all tensors on the learner's device.

    ``dones`` is 1.0 only where the episode *terminated* (a time-limit truncation is not a
    terminal state, so bootstrapping continues through it). ``obs_history`` holds the last
    ``k`` observations ending at ``obs`` (shape ``[B, k, *obs_shape]``) when an agent asks
    for history through :attr:`Agent.history_length`; earlier steps of the same episode
    are repeated at an episode's start.

    When an agent asks for n-step returns through :attr:`Agent.n_step`, the batch also holds
    the window of up to ``n`` steps starting at each transition, cut short where the episode
    ended (by termination or truncation) or where the stored data ends:

    * ``window_rewards`` ``[B, n]``: ``r_t, ..., r_{t+k-1}``, then zeros (``1 <= k <= n``);
    * ``window_next_obs``: ``s_{t+k}``, the successor of the window's last step;
    * ``window_dones`` ``[B, 1]``: 1.0 where the window's last step *terminated* the episode;
    * ``window_length`` ``[B, 1]``: ``k`` as a float.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor
    obs_history: torch.Tensor | None = None
    window_rewards: torch.Tensor | None = None
    window_next_obs: torch.Tensor | None = None
    window_dones: torch.Tensor | None = None
    window_length: torch.Tensor | None = None


class Rollout(NamedTuple):
    """``T`` consecutive steps from each of ``N`` environments, time-major, on the learner's device.

    ``obs``/``next_obs`` are ``[T, N, *obs_shape]``, ``actions`` ``[T, N, *action_shape]``
    (as the policy produced them, before the env's bounds were applied), and ``rewards``,
    ``terminated``, ``truncated`` and ``mask`` are ``[T, N]`` floats. ``next_obs`` is the true
    successor, also where an episode ended, so a truncated episode can be bootstrapped.
    ``mask`` is 0 for padding: with ``complete_episodes`` an environment whose episode ended
    waits while the others finish theirs.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    next_obs: torch.Tensor
    mask: torch.Tensor


class Agent(Checkpointed, ABC):
    """Base class of every agent.

    Subclasses put everything that must survive a checkpoint (networks, optimisers, tensors)
    in :attr:`checkpointed`; :meth:`state_dict` and :meth:`load_state_dict` then come for free.
    """

    #: Observations of history the agent needs in each batch (1 = just the current one).
    history_length: int = 1
    #: Length of the reward window each replay batch carries (1 = plain one-step transitions).
    n_step: int = 1
    #: The keys of :attr:`checkpointed` that acting needs: the policy. What only acts (Ray env
    #: runners) is sent these alone; critics, targets and optimisers stay with the learner.
    #: ``None`` (the default, for agents that do not say) means everything.
    policy_keys: tuple[str, ...] | None = None
    #: Evaluation may run its episodes side by side, one row of :meth:`act` each, with
    #: ``start_episode(n)`` and one reward per episode in :meth:`record_reward`
    #: (:func:`toolkit.evaluation.evaluate_together`). Off by default.
    evaluates_episodes_together: bool = False

    @abstractmethod
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions for a batch of observations, in the environment's action space."""

    @abstractmethod
    def update(self, batch: Batch | Rollout) -> dict[str, torch.Tensor]:
        """Learn from a replay :class:`Batch` (off-policy) or a :class:`Rollout` (on-policy).
        Returns scalar metrics as tensors: the framework decides when to read them, so the
        update never waits on the device."""

    def policy_state_dict(self) -> dict[str, Any]:
        """The state of :attr:`policy_keys` (all of :meth:`state_dict` when it is ``None``): what
        a copy of the agent that only acts must load to act as this one does."""
        if self.policy_keys is None:
            return self.state_dict()
        out: dict[str, Any] = {}
        for name in self.policy_keys:
            obj = self.checkpointed[name]
            if isinstance(obj, Agent):  # a wrapped agent (curiosity) ships its own policy
                out[name] = obj.policy_state_dict()
            else:
                out[name] = obj.state_dict() if hasattr(obj, "state_dict") else obj.detach().clone()
        return out

    def load_policy_state_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`policy_state_dict` returned (the rest of the agent is left as it is)."""
        if self.policy_keys is None:
            self.load_state_dict(state)
            return
        for name in self.policy_keys:
            obj = self.checkpointed[name]
            if isinstance(obj, Agent):
                obj.load_policy_state_dict(state[name])
            elif hasattr(obj, "load_state_dict"):
                obj.load_state_dict(state[name])
            else:
                with torch.no_grad():
                    obj.copy_(state[name])

    def record_acting(self, steps: int) -> None:
        """Count ``steps`` actions that another copy of this agent took (a Ray env runner's).
        Agents whose schedules run on their own acting (DQN's epsilon) advance them here, so
        the learner needs no :meth:`act` on observations it would throw away. Default: nothing."""

    def start_episode(self, episodes: int = 1) -> None:
        """Called before the first :meth:`act` of every evaluation episode (of ``episodes``
        episodes run side by side, with :attr:`evaluates_episodes_together`). Memoryless agents
        ignore it; sequence models clear their context here."""

    def record_reward(self, reward: float | np.ndarray) -> None:
        """Called after every evaluation step with the reward the last action earned, one per
        episode when they run side by side (return-conditioned models count their
        return-to-go down with it)."""


def observation_tensor(obs: Any, device: torch.device | str) -> torch.Tensor:
    """A batch of one observation as the agent sees it: float32 (uint8 pixels stay uint8).

    Environments such as MuJoCo's return float64; agents and buffers work in float32.
    """
    return observations_tensor([obs], device)


def observations_tensor(observations: list[Any], device: torch.device | str) -> torch.Tensor:
    """One observation per row, as :func:`observation_tensor` makes each."""
    array = np.stack([np.asarray(obs) for obs in observations])
    dtype = torch.uint8 if array.dtype == np.uint8 else torch.float32
    return torch.as_tensor(array, dtype=dtype, device=device)
