"""What every RL training loop adds to the env-free :class:`~toolkit.trainer.Trainer`:
an environment factory, episode counting and evaluation episodes.

A loop subclass only says how experience is gathered and handed to the agent
(:meth:`TrainingLoop.train_until`) and what else belongs in its checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from toolkit.agent import Agent
from toolkit.evaluation import EvalResult, evaluate
from toolkit.runs import RunSettings
from toolkit.trainer import STOP_FILE, LoopResult, Trainer

if TYPE_CHECKING:
    from toolkit.session import Session

__all__ = ["STOP_FILE", "LoopResult", "TrainingLoop"]


class TrainingLoop(Trainer):
    """Base of the RL training loops: the trainer plus environments and episodes."""

    learner_key = "agent"

    def __init__(
        self,
        agent: Agent,
        settings: RunSettings,
        make_env: Callable[[], Any],
        run_dir: Path,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        super().__init__(agent, settings, run_dir, device, progress)
        self.agent, self.make_env = agent, make_env
        self.episodes = 0
        self.last_return: float | None = None
        self._eval_env: Any = None

    @classmethod
    def from_session(cls, session: Session, run_dir: Path, progress: bool) -> TrainingLoop:
        """The loop for a built session (how :mod:`toolkit.training` makes every loop)."""
        return cls(session.learner, session.config, session.settings, session.make_env,  # type: ignore[call-arg]
                   run_dir, session.device, progress=progress)

    def counters(self) -> dict[str, Any]:
        return {**super().counters(), "episodes": self.episodes, "last_return": self.last_return}

    def load_counters(self, counters: dict[str, Any]) -> None:
        super().load_counters(counters)
        self.episodes, self.last_return = counters["episodes"], counters["last_return"]

    def last_value(self) -> float | None:
        return self.last_return

    def log_episode(self, episode_return: float, length: int, step: int) -> None:
        """Record a finished episode's (extrinsic) return."""
        self.episodes += 1
        self.last_return = episode_return
        assert self.logger is not None
        self.logger.log(step, "episode", {"return": episode_return, "length": length})

    def evaluate(self) -> EvalResult:
        """Deterministic evaluation episodes in a separate env, logged as ``eval``; a mean
        return better than every earlier one keeps the agent in ``checkpoints/best.pt``."""
        assert self.logger is not None
        from toolkit.data import normalized_score

        if self._eval_env is None:
            self._eval_env = self.make_env()
        result = evaluate(self.agent, self.settings.env, self.settings.eval_episodes,
                          seed=self.settings.seed + 1_000_000, device=self.device, env=self._eval_env,
                          options=self.settings.env_options)
        values = {"return_mean": result.mean, "return_std": result.std}
        score = normalized_score(self.settings.env, result.mean)
        if score is not None:  # D4RL's normalised score, for envs with published references
            values["normalized_score"] = float(score)
        self.logger.log(self.step, "eval", values)
        # The best mean return so far is kept in checkpoints/best.pt (`toolkit eval --checkpoint best`).
        self.keep_best(result.mean)
        return result
