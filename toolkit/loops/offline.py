"""The offline training loop: gradient steps on windows sampled from a dataset.

For every offline agent (BC, decision-LSTM, decision transformer): a "step" is one gradient
step, and the environment is only touched to evaluate. Logging, periodic evaluation (with the
D4RL normalised score where the env has reference returns), checkpoints and Ctrl-C come from
:class:`~toolkit.loops.base.TrainingLoop`, as for online agents.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from toolkit.data.dataset import OfflineDataset
from toolkit.evaluation import EvalResult
from toolkit.loops.base import TrainingLoop
from toolkit.offline import DatasetStatistics, OfflineAgent, SequenceSampler
from toolkit.progress import TrainingProgress
from toolkit.runs import RunSettings


class OfflineLoop(TrainingLoop):
    """Trains one offline agent on one dataset; evaluates it in the run's environment."""

    return_source = "evaluation"

    def __init__(
        self,
        agent: OfflineAgent,
        config: Any,
        settings: RunSettings,
        make_env: Callable[[], Any],
        run_dir: Path,
        device: torch.device,
        dataset: OfflineDataset,
        progress: bool = True,
    ) -> None:
        super().__init__(agent, settings, make_env, run_dir, device, progress)
        self.config = config
        self.batch_size = int(config.batch_size)
        # On resume the checkpoint restores these same statistics (they live in the agent).
        agent.set_dataset_statistics(DatasetStatistics.of(dataset))
        self.sampler = SequenceSampler(dataset, agent.context_length, device, seed=settings.seed)

    def extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    @classmethod
    def from_session(cls, session: Any, run_dir: Path, progress: bool) -> OfflineLoop:
        return cls(session.learner, session.config, session.settings, session.make_env, run_dir,
                   session.device, dataset=session.data, progress=progress)

    def evaluate(self) -> EvalResult:
        # No training episodes offline: the bar's "return" is the latest evaluation's.
        result = super().evaluate()
        self.last_return = result.mean
        return result

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        while self.step < total_steps and not self.stop_requested:
            batch = self.sampler.sample(self.batch_size)
            self.accumulate(self.agent.update(batch))
            self.step += 1
            self.updates += 1
            self.after_steps(self.step - 1)
            loss = self.latest_metrics.get("loss")  # as of the last log line: no per-step device read
            bar.update(self.step, self.last_return, "" if loss is None else f"loss {loss:.4f}")
