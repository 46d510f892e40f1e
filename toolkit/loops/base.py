"""What every training loop shares: counters, metrics, evaluation, checkpoints, Ctrl-C.

A loop subclass only says how experience is gathered and handed to the agent
(:meth:`TrainingLoop.train_until`) and what else belongs in its checkpoint.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit.agent import Agent
from toolkit.evaluation import EvalResult, evaluate
from toolkit.progress import TrainingProgress
from toolkit.runs import CHECKPOINT, MetricsLogger, RunSettings, save_checkpoint


#: A file in the run directory that asks a running loop to stop with a checkpoint.
STOP_FILE = "STOP"


@dataclass
class LoopResult:
    """How a call to :meth:`TrainingLoop.run` ended."""

    step: int
    interrupted: bool
    last_return: float | None
    #: What ``last_return`` is the return of: a training "episode" or an "evaluation".
    return_source: str = "episode"


class TrainingLoop:
    """Base of the training loops: owns the agent, the run directory and the bookkeeping."""

    #: Where :attr:`last_return` comes from (offline loops see no training episodes).
    return_source = "episode"

    def __init__(
        self,
        agent: Agent,
        settings: RunSettings,
        make_env: Callable[[], Any],
        run_dir: Path,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        self.agent, self.settings, self.make_env = agent, settings, make_env
        self.run_dir, self.device, self.show_progress = run_dir, device, progress
        self.step = 0
        self.updates = 0
        self.episodes = 0
        self.last_return: float | None = None
        self.logger: MetricsLogger | None = None
        #: The last averaged training metrics written to the log (empty before the first).
        self.latest_metrics: dict[str, float] = {}
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_count = 0
        self._stop_requested = False
        self._stop_file_checked = 0.0
        self._eval_env: Any = None
        self._window = (time.perf_counter(), 0)

    # --- what a subclass provides -------------------------------------------------------------

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        """Gather experience and update until ``total_steps`` or a stop request."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Loop-specific checkpoint content (environments, buffers)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Agent, counters, pending metrics, every random stream and the subclass's state."""
        return {
            "agent": self.agent.state_dict(),
            "counters": {"step": self.step, "updates": self.updates, "episodes": self.episodes,
                         "last_return": self.last_return},
            # Metrics accumulated since the last log line, so a resumed run logs the same averages.
            "pending_metrics": {"sums": dict(self._metric_sums), "count": self._metric_count},
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self.agent.load_state_dict(state["agent"])
        c = state["counters"]
        self.step, self.updates, self.episodes, self.last_return = c["step"], c["updates"], c["episodes"], c["last_return"]
        self._metric_sums = dict(state["pending_metrics"]["sums"])
        self._metric_count = int(state["pending_metrics"]["count"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        python_state = state["rng"]["python"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        self.load_extra_state(state)

    def save(self) -> None:
        """Write the checkpoint atomically."""
        save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())

    # --- bookkeeping used by subclasses -------------------------------------------------------

    def accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add an update's metrics to the running sums (on the device: no host sync)."""
        for key, value in metrics.items():
            value = value.detach().float()
            if key in self._metric_sums:
                self._metric_sums[key] += value
            else:
                self._metric_sums[key] = value.clone()
        self._metric_count += 1

    def log_episode(self, episode_return: float, length: int, step: int) -> None:
        """Record a finished episode's (extrinsic) return."""
        self.episodes += 1
        self.last_return = episode_return
        assert self.logger is not None
        self.logger.log(step, "episode", {"return": episode_return, "length": length})

    def after_steps(self, previous_step: int) -> None:
        """Log, evaluate and checkpoint when ``self.step`` crossed a multiple of their periods."""
        s = self.settings

        def crossed(every: int) -> bool:
            return bool(every) and self.step // every > previous_step // every

        if crossed(s.log_every):
            self._flush_metrics()
        if crossed(s.eval_every):
            self._evaluate()
        if crossed(s.checkpoint_every):
            self.save()

    def _flush_metrics(self) -> None:
        assert self.logger is not None
        values = {k: (v / self._metric_count).item() for k, v in self._metric_sums.items()} if self._metric_count else {}
        now = time.perf_counter()
        t0, s0 = self._window
        values.update(steps_per_second=(self.step - s0) / max(now - t0, 1e-9), updates=self.updates)
        self._window = (now, self.step)
        self.logger.log(self.step, "train", values)
        self.latest_metrics = values
        self._metric_sums, self._metric_count = {}, 0

    def _evaluate(self) -> EvalResult:
        assert self.logger is not None
        from toolkit.data import normalized_score

        if self._eval_env is None:
            self._eval_env = self.make_env()
        result = evaluate(self.agent, self.settings.env, self.settings.eval_episodes,
                          seed=self.settings.seed + 1_000_000, device=self.device, env=self._eval_env)
        values = {"return_mean": result.mean, "return_std": result.std}
        score = normalized_score(self.settings.env, result.mean)
        if score is not None:  # D4RL's normalised score, for envs with published references
            values["normalized_score"] = float(score)
        self.logger.log(self.step, "eval", values)
        return result

    @property
    def stop_requested(self) -> bool:
        """True once Ctrl-C was pressed, or a ``STOP`` file appeared in the run directory:
        finish the current step, checkpoint, return. The file is how a loop running where no
        terminal reaches it (a Ray task on a cluster GPU) is stopped cleanly; it is looked
        for at most once a second, so the check costs nothing per step."""
        if not self._stop_requested:
            now = time.monotonic()
            if now - self._stop_file_checked >= 1.0:
                self._stop_file_checked = now
                stop_file = self.run_dir / STOP_FILE
                if stop_file.exists():
                    stop_file.unlink(missing_ok=True)
                    self._stop_requested = True
        return self._stop_requested

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self._stop_requested = True

    # --- the run ------------------------------------------------------------------------------

    def run(self, total_steps: int) -> LoopResult:
        """Train until ``total_steps`` env steps; Ctrl-C stops cleanly with a checkpoint."""
        self.logger = MetricsLogger(self.run_dir)
        (self.run_dir / STOP_FILE).unlink(missing_ok=True)  # a stale request must not stop this run
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous_handler = signal.signal(signal.SIGINT, self._request_stop) if in_main_thread else None
        self._window = (time.perf_counter(), self.step)
        try:
            with TrainingProgress(total_steps, start=self.step, enabled=self.show_progress) as bar:
                self.train_until(total_steps, bar)
            self.save()
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous_handler)
            self.logger.close()
        return LoopResult(self.step, self._stop_requested, self.last_return, self.return_source)

