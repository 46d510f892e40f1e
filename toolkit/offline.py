"""The contract between the framework and an offline (dataset-trained) agent.

An offline agent learns from windows of logged episodes that the framework samples for it
(:class:`SequenceBatch`) and acts online only to be evaluated. What it needs to know about the
data (observation statistics, the scale of returns) it gets once, from
:meth:`OfflineAgent.set_dataset_statistics`, and keeps in its checkpoint; it never opens a file.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from toolkit.agent import Agent
from toolkit.data.dataset import OfflineDataset


class SequenceBatch(NamedTuple):
    """``B`` windows of ``K`` consecutive steps of logged episodes, on the learner's device.

    ``observations`` ``[B, K, *obs_shape]``, ``actions`` ``[B, K, *action_shape]``,
    ``rewards`` and ``returns_to_go`` ``[B, K]`` (undiscounted, to the episode's end),
    ``timesteps`` ``[B, K]`` int64 (step index within the episode) and ``mask`` ``[B, K]``
    float, 1.0 for real steps. A window never crosses an episode boundary: one that starts
    near an episode's end is padded on the right with zeros (``mask`` 0), so a model reading
    left to right (an LSTM, a causal transformer) never sees padding before real steps.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    returns_to_go: torch.Tensor
    timesteps: torch.Tensor
    mask: torch.Tensor


class DatasetStatistics(NamedTuple):
    """What an offline agent may learn about its dataset before training."""

    obs_mean: np.ndarray
    obs_std: np.ndarray
    #: Largest undiscounted episode return in the data (a natural evaluation target).
    max_return: float
    #: Largest absolute episode return, used to scale returns-to-go to about [-1, 1].
    return_scale: float
    #: Longest episode, in steps.
    max_episode_length: int

    @classmethod
    def of(cls, dataset: OfflineDataset) -> DatasetStatistics:
        """Statistics of a dataset; the std is floored so constant features do not blow up."""
        obs = dataset.observations.reshape(len(dataset), -1).astype(np.float64)
        returns = dataset.episode_returns()
        return cls(
            obs_mean=obs.mean(0).astype(np.float32),
            obs_std=np.maximum(obs.std(0), 1e-3).astype(np.float32),
            max_return=float(returns.max()),
            return_scale=float(max(np.abs(returns).max(), 1e-6)),
            max_episode_length=int(dataset.episode_lengths().max()),
        )


class DatasetNormalizer(nn.Module):
    """The statistics as module buffers, so that they travel in the agent's checkpoint.

    ``target_return`` is the return an evaluation episode is conditioned on: the agent's
    configured target when given, else the best episode return in the data.
    """

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("return_scale", torch.ones(()))
        self.register_buffer("target_return", torch.zeros(()))

    def set(self, stats: DatasetStatistics, return_scale: float | None, target_return: float | None) -> None:
        """Fill the buffers from ``stats``; explicit ``return_scale``/``target_return`` win."""
        device = self.obs_mean.device
        self.obs_mean.copy_(torch.as_tensor(stats.obs_mean, device=device))
        self.obs_std.copy_(torch.as_tensor(stats.obs_std, device=device))
        self.return_scale.fill_(return_scale if return_scale is not None else stats.return_scale)
        self.target_return.fill_(target_return if target_return is not None else stats.max_return)

    def observations(self, obs: torch.Tensor) -> torch.Tensor:
        """``(s - mean) / std`` of vector observations ``[..., obs_dim]``, as float32."""
        return (obs.float() - self.obs_mean) / self.obs_std

    def returns(self, returns_to_go: torch.Tensor) -> torch.Tensor:
        """Returns-to-go divided by the scale, as a trailing feature of width 1."""
        return (returns_to_go / self.return_scale).unsqueeze(-1)


class OfflineAgent(Agent):
    """Base class of agents trained from a dataset (``kind="offline"``).

    Subclasses set :attr:`context_length` (steps per sampled window), implement
    :meth:`update` on a :class:`SequenceBatch` and :meth:`act`; sequence models also use the
    episode hooks :meth:`start_episode` and :meth:`record_reward` to keep their context
    while they are evaluated.
    """

    #: Steps per window the framework samples for :meth:`update` (1 for a memoryless policy).
    context_length: int = 1

    def set_dataset_statistics(self, stats: DatasetStatistics) -> None:
        """Called once before training with the dataset's statistics (restored from the
        checkpoint on resume, so subclasses keep them in :attr:`checkpointed`)."""


def window_indices(
    starts: torch.Tensor, context: int, episode_end: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices ``[B, K]`` of windows beginning at ``starts`` and their mask, 0 past the
    end of each start's episode (those rows are clamped to the episode's last step)."""
    offsets = torch.arange(context, device=starts.device)
    rows = starts.unsqueeze(1) + offsets
    end = episode_end[starts].unsqueeze(1)
    mask = rows < end
    return torch.minimum(rows, end - 1), mask


class SequenceSampler:
    """Samples :class:`SequenceBatch` windows uniformly over a dataset's steps, on the device.

    Every step is equally likely to start a window (as in Decision Transformer, where episodes
    are drawn in proportion to their length and a start within them uniformly). Indices come
    from the sampler's own generator, checkpointed by the offline loop, so a resumed run
    sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, dataset: OfflineDataset, context: int, device: torch.device | str, seed: int = 0) -> None:
        self.context = int(context)
        self.device = torch.device(device)
        d = self.device
        starts, ends = dataset.episode_bounds()
        self.size = len(dataset)
        self.observations = torch.as_tensor(dataset.observations, dtype=torch.float32, device=d)
        self.actions = torch.as_tensor(dataset.actions, dtype=torch.float32, device=d)
        self.rewards = torch.as_tensor(dataset.rewards, dtype=torch.float32, device=d).reshape(-1)
        self.returns_to_go = torch.as_tensor(dataset.returns_to_go(), dtype=torch.float32, device=d)
        self.timesteps = torch.as_tensor(dataset.timesteps(), dtype=torch.int64, device=d)
        self.episode_end = torch.as_tensor(np.repeat(ends, ends - starts), dtype=torch.int64, device=d)
        self.generator = torch.Generator(device=d)
        self.generator.manual_seed(seed)

    def sample(self, batch_size: int) -> SequenceBatch:
        """``batch_size`` windows of :attr:`context` steps (right-padded at episode ends)."""
        starts = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        rows, mask = window_indices(starts, self.context, self.episode_end)
        maskf = mask.float()

        def take(values: torch.Tensor) -> torch.Tensor:
            picked = values[rows]
            return picked * maskf.view(*maskf.shape, *([1] * (picked.dim() - 2))).to(picked.dtype)

        return SequenceBatch(
            observations=take(self.observations),
            actions=take(self.actions),
            rewards=take(self.rewards),
            returns_to_go=take(self.returns_to_go),
            timesteps=take(self.timesteps),
            mask=maskf,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
