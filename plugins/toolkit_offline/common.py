"""What the offline learners share: bounded actions, dataset normalisation, the optimiser.

Every learner predicts actions through ``tanh`` in ``[-1, 1]`` and is trained on the
dataset's actions mapped into that range, so one network serves any box-bounded action space;
:class:`ActionBounds` maps between the two. The dataset's statistics sit in a
:class:`~toolkit.offline.DatasetNormalizer` inside the checkpoint.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from toolkit.configs import OfflineConfig
from toolkit.errors import ToolkitError
from toolkit.offline import DatasetNormalizer, DatasetStatistics, OfflineAgent


class ActionBounds(nn.Module):
    """The affine map between an action box ``[low, high]`` and ``[-1, 1]``."""

    def __init__(self, action_space: gym.spaces.Box) -> None:
        super().__init__()
        low = np.asarray(action_space.low, np.float32).reshape(-1)
        high = np.asarray(action_space.high, np.float32).reshape(-1)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ToolkitError(f"offline learners predict bounded actions (tanh); {action_space} has infinite bounds.")
        self.register_buffer("low", torch.as_tensor(low))
        self.register_buffer("high", torch.as_tensor(high))

    def to_unit(self, actions: torch.Tensor) -> torch.Tensor:
        """Env actions into ``[-1, 1]`` (clamped: logged actions may sit on or past a bound)."""
        return (2.0 * (actions - self.low) / (self.high - self.low) - 1.0).clamp(-1.0, 1.0)

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` back to env actions."""
        return self.low + (unit + 1.0) * 0.5 * (self.high - self.low)


class OfflinePolicyAgent(OfflineAgent):
    """Scaffolding for an offline learner whose network is ``self.model``.

    Subclasses build ``self.model`` and call :meth:`finish_setup`; they implement
    :meth:`update` with :meth:`gradient_step` and :meth:`act`.
    """

    config: OfflineConfig
    #: Evaluation may run all its episodes side by side, one row of ``act`` each
    #: (:func:`toolkit.evaluation.evaluate`): one network call per step for all of them.
    evaluates_episodes_together = True

    def __init__(self, config: OfflineConfig, observation_space: gym.Space, action_space: gym.Space,
                 device: torch.device | str) -> None:
        super().__init__()
        if not isinstance(action_space, gym.spaces.Box):
            raise ToolkitError(f"offline learners need a continuous (Box) action space, got {action_space}.")
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise ToolkitError(f"offline learners take vector observations, got {observation_space}.")
        self.config = config
        self.device = torch.device(device)
        self.obs_dim = int(observation_space.shape[0])
        self.action_dim = int(np.prod(action_space.shape))
        self.action_shape = tuple(action_space.shape)
        self.normalizer = DatasetNormalizer(self.obs_dim).to(self.device)
        self.bounds = ActionBounds(action_space).to(self.device)

    def finish_setup(self, model: nn.Module) -> None:
        """Optimiser (AdamW with linear warm-up, as Decision Transformer) and checkpoint contents."""
        self.model = model.to(self.device)
        cfg = self.config
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.checkpointed: dict[str, Any] = {
            "model": self.model, "normalizer": self.normalizer, "optimizer": self.optimizer, "lr_schedule": self.scheduler,
        }
        self.policy_keys = ("model", "normalizer")  # the sequence model conditions on normalised returns

    def prunable_modules(self) -> dict[str, torch.nn.Module]:
        """The sequence model, which is the whole policy."""
        return {"model": self.model}

    def set_dataset_statistics(self, stats: DatasetStatistics) -> None:
        self.normalizer.set(stats, self.config.return_scale, self.config.target_return)

    def gradient_step(self, loss: torch.Tensor) -> torch.Tensor:
        """One AdamW step on ``loss`` (gradient norm clipped) and a scheduler tick; returns the norm.
        (Subclasses switch the model to train mode before their forward pass, not here.)"""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.max_grad_norm is not None:
            norm = nn.utils.clip_grad_norm_(params, self.config.max_grad_norm, foreach=True)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        self.optimizer.step()
        self.scheduler.step()
        return norm

    def env_actions(self, unit_actions: torch.Tensor) -> torch.Tensor:
        """Network output in ``[-1, 1]`` as env actions of the right shape."""
        return self.bounds.from_unit(unit_actions).reshape(*unit_actions.shape[:-1], *self.action_shape)

    def unit_targets(self, actions: torch.Tensor) -> torch.Tensor:
        """The dataset's actions, flattened and mapped into ``[-1, 1]``."""
        return self.bounds.to_unit(actions.flatten(actions.dim() - len(self.action_shape)))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[B, K, ...]`` over the real steps of ``mask`` ``[B, K]``."""
    per_step = values.reshape(*mask.shape, -1).mean(-1)
    return (per_step * mask).sum() / mask.sum().clamp(min=1.0)
