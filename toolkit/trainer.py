"""The env-free core of every training loop, shared by agents and models.

A :class:`Trainer` owns a learner (an agent or a model), the run directory and the
bookkeeping that does not depend on where experience comes from:

* step and update counters, and the metrics of the updates, averaged on the device and read
  back only at log steps (no host sync per update);
* ``metrics.jsonl`` and TensorBoard through :class:`~toolkit.runs.MetricsLogger`;
* periodic evaluation through the :meth:`Trainer.evaluate` hook;
* atomic checkpoints with everything needed to continue exactly (learner, counters, pending
  metrics, every random stream, the subclass's own state);
* a clean stop on Ctrl-C or a ``STOP`` file, and the progress bar: a second Ctrl-C while a
  checkpoint is being written waits for the write to finish; one at any other time stops at
  once and says which step the kept checkpoint holds;
* a stop with one sentence when a training metric becomes NaN or infinite (checked where the
  metrics are read to the host anyway: at log steps, and before each checkpoint, so a
  checkpoint never holds the state that produced it);
* ``checkpoints/best.pt``: the learner at the best evaluation so far (:meth:`Trainer.keep_best`).

A subclass says how it gathers data and updates (:meth:`Trainer.train_until`), what else
belongs in its checkpoint (:meth:`Trainer.extra_state`) and how it evaluates. The RL loops
(:mod:`toolkit.loops.base` and below) and the model loop (:mod:`toolkit.loops.model`) stand
on it; see ``docs/architecture.md``.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit.progress import TrainingProgress
from toolkit.errors import ToolkitError
from toolkit.runs import (
    BEST_CHECKPOINT,
    CHECKPOINT,
    MetricsLogger,
    RunSettings,
    file_error,
    remove_stale_temporaries,
    save_checkpoint,
)

#: A file in the run directory that asks a running loop to stop with a checkpoint.
STOP_FILE = "STOP"


class NonFiniteMetricError(ToolkitError):
    """A training metric became NaN or infinite; the run stopped without checkpointing it."""


class StoppedAtOnce(ToolkitError):
    """A second Ctrl-C stopped the run between checkpoints."""

    exit_code = 130


@dataclass
class LoopResult:
    """How a call to :meth:`Trainer.run` ended."""

    step: int
    interrupted: bool
    last_return: float | None
    #: What ``last_return`` is the return of: a training "episode" or an "evaluation".
    return_source: str = "episode"
    #: Seconds this call trained, and its steps per second (None where not measured).
    wall_time: float | None = None
    steps_per_second: float | None = None


class Trainer:
    """Base of every training loop: counters, metrics, evaluation, checkpoints, stopping."""

    #: The key the learner's state has in a checkpoint ("agent" or "model").
    learner_key = "agent"
    #: Where :attr:`LoopResult.last_return` comes from.
    return_source = "episode"
    #: Whether the progress bar has a return column (models have no episodes).
    shows_return = True

    def __init__(self, learner: Any, settings: RunSettings, run_dir: Path, device: torch.device,
                 progress: bool = True) -> None:
        self.learner, self.settings = learner, settings
        self.run_dir, self.device, self.show_progress = run_dir, device, progress
        self.step = 0
        self.updates = 0
        self.logger: MetricsLogger | None = None
        #: The last averaged training metrics written to the log (empty before the first).
        self.latest_metrics: dict[str, float] = {}
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_count = 0
        self._stop_requested = False
        self._stop_file_checked = 0.0
        self._window = (time.perf_counter(), 0)
        #: The step the checkpoint on disk holds (None: none written or loaded yet).
        self.saved_step: int | None = None
        self._saving = False
        self._told_to_wait = False
        #: The best evaluation value so far (higher is better) and its step; see keep_best.
        self.best_value: float | None = None
        self.best_step: int | None = None

    # --- what a subclass provides -------------------------------------------------------------

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        """Gather data and update until ``total_steps`` or a stop request."""
        raise NotImplementedError

    def evaluate(self) -> None:
        """Periodic evaluation (every ``settings.eval_every`` steps); log what it measures."""

    def extra_state(self) -> dict[str, Any]:
        """Loop-specific checkpoint content (environments, buffers, samplers)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def counters(self) -> dict[str, Any]:
        """The loop's counters as plain values (subclasses add their own)."""
        return {"step": self.step, "updates": self.updates, "best_value": self.best_value,
                "best_step": self.best_step}

    def load_counters(self, counters: dict[str, Any]) -> None:
        """Restore what :meth:`counters` returned."""
        self.step, self.updates = int(counters["step"]), int(counters["updates"])
        self.best_value, self.best_step = counters.get("best_value"), counters.get("best_step")

    # --- checkpoints --------------------------------------------------------------------------

    def learner_state(self, which: str) -> Any:
        """The learner's entry in the ``latest`` or ``best`` checkpoint: its state dict (a loop
        whose learner keeps its weights elsewhere, an external library's, says where instead)."""
        return self.learner.state_dict()

    def load_learner_state(self, state: Any) -> None:
        """Restore what :meth:`learner_state` returned."""
        self.learner.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """Learner, counters, pending metrics, every random stream and the subclass's state."""
        return {
            self.learner_key: self.learner_state("latest"),
            "counters": self.counters(),
            # Metrics accumulated since the last log line, so a resumed run logs the same averages.
            "pending_metrics": {"sums": dict(self._metric_sums), "count": self._metric_count},
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self.load_learner_state(state[self.learner_key])
        self.load_counters(state["counters"])
        self._metric_sums = dict(state["pending_metrics"]["sums"])
        self._metric_count = int(state["pending_metrics"]["count"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        python_state = state["rng"]["python"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        self.load_extra_state(state)
        self.saved_step = self.step

    def save(self) -> None:
        """Write the checkpoint atomically."""
        self._write(self.run_dir / CHECKPOINT, self.state_dict, "checkpoint")

    def checkpoint(self) -> None:
        """Save, unless a metric since the last log line is not finite (then the run stops and
        the previous checkpoint stays); remember the step the checkpoint on disk holds."""
        self.check_pending_finite()
        self.save()
        self.saved_step = self.step

    def _write(self, path: Path, state: Any, what: str) -> None:
        """Write the checkpoint ``state()`` returns; Ctrl-C meanwhile waits for it (see
        :meth:`_request_stop`)."""
        self._saving = True
        try:
            save_checkpoint(path, state())
        except OSError as exc:
            raise file_error(what, path, exc) from None
        finally:
            self._saving = False

    def keep_best(self, value: float) -> bool:
        """Remember ``value`` (higher is better, e.g. a mean evaluation return) and write the
        learner to ``checkpoints/best.pt`` when it beats every earlier one; True if it did."""
        if not math.isfinite(value) or (self.best_value is not None and value <= self.best_value):
            return False
        self.best_value, self.best_step = float(value), self.step
        self._write(self.run_dir / BEST_CHECKPOINT,
                    lambda: {self.learner_key: self.learner_state("best"), "counters": self.counters()},
                    "best checkpoint")
        return True

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

    def after_steps(self, previous_step: int) -> None:
        """Log, evaluate and checkpoint when ``self.step`` crossed a multiple of their periods."""
        s = self.settings

        def crossed(every: int) -> bool:
            return bool(every) and self.step // every > previous_step // every

        if crossed(s.log_every):
            self.flush_metrics()
        if crossed(s.eval_every):
            self.evaluate()
        if crossed(s.checkpoint_every):
            self.checkpoint()

    def flush_metrics(self) -> None:
        """Write the averaged training metrics since the last log line, with steps/s; stop the
        run (:class:`NonFiniteMetricError`) if one of them is NaN or infinite."""
        assert self.logger is not None
        values = {k: (v / self._metric_count).item() for k, v in self._metric_sums.items()} if self._metric_count else {}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        now = time.perf_counter()
        t0, s0 = self._window
        values.update(steps_per_second=(self.step - s0) / max(now - t0, 1e-9), updates=self.updates)
        self._window = (now, self.step)
        self.logger.log(self.step, "train", values)
        self.latest_metrics = values
        self._metric_sums, self._metric_count = {}, 0
        if bad:
            self._stop_non_finite(bad[0], values[bad[0]])

    def check_pending_finite(self) -> None:
        """Before a checkpoint: are the metrics since the last log line finite? (One device
        read per checkpoint; a non-finite one is logged and stops the run.)"""
        if self._metric_count and self._metric_sums:
            finite = torch.stack([torch.isfinite(v).all() for v in self._metric_sums.values()]).all()
            if not bool(finite):
                self.flush_metrics()

    def _stop_non_finite(self, name: str, value: float) -> None:
        kept = (f"the last good checkpoint (step {self.saved_step}) is kept in {self.run_dir / CHECKPOINT}"
                if self.saved_step is not None else "no checkpoint had been saved yet")
        raise NonFiniteMetricError(
            f"Training stopped at step {self.step}: metric '{name}' became {value}; {kept} "
            "(a lower learning rate or a smaller reward scale may help)."
        )

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
        if self._saving:  # never cut a checkpoint write short: it finishes, then the loop stops
            if self._stop_requested and not self._told_to_wait:
                self._told_to_wait = True
                sys.stderr.write("saving checkpoint, please wait\n")
                sys.stderr.flush()
            self._stop_requested = True
            return
        if self._stop_requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self._stop_requested = True

    def _stopped_at_once(self) -> StoppedAtOnce:
        if self.saved_step is None:
            kept = "no checkpoint was saved, so nothing of this run can be resumed"
        else:
            lost = self.step - self.saved_step
            kept = (f"the checkpoint holds step {self.saved_step}"
                    + (f", so the {lost} steps since are lost" if lost > 0 else "")
                    + f"; continue with `toolkit resume {self.run_dir}`")
        return StoppedAtOnce(f"Stopped at once by a second Ctrl-C at step {self.step}; {kept}.")

    def last_value(self) -> float | None:
        """What the result and the progress bar report as the latest return (None: nothing yet)."""
        return None

    # --- the run ------------------------------------------------------------------------------

    def run(self, total_steps: int) -> LoopResult:
        """Train until ``total_steps`` steps; Ctrl-C stops cleanly with a checkpoint."""
        remove_stale_temporaries(self.run_dir)  # of a checkpoint write that a crash cut short
        # A resumed run drops what was logged after its checkpoint, so no step is logged twice.
        self.logger = MetricsLogger(self.run_dir, resume_step=self.saved_step)
        (self.run_dir / STOP_FILE).unlink(missing_ok=True)  # a stale request must not stop this run
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous_handler = signal.signal(signal.SIGINT, self._request_stop) if in_main_thread else None
        self._window = started = (time.perf_counter(), self.step)
        try:
            with TrainingProgress(total_steps, start=self.step, enabled=self.show_progress,
                                  show_return=self.shows_return) as bar:
                self.train_until(total_steps, bar)
            self.checkpoint()
        except KeyboardInterrupt:
            if not in_main_thread:
                raise
            raise self._stopped_at_once() from None
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous_handler)
            self.logger.close()
        self.write_curves()
        wall = time.perf_counter() - started[0]
        return LoopResult(self.step, self._stop_requested, self.last_value(), self.return_source,
                          wall_time=wall, steps_per_second=(self.step - started[1]) / wall if wall > 0 else None)


    def write_curves(self) -> None:
        """``curves.png`` in the run directory, redrawn whenever a run (or a resumed part) ends
        (:func:`toolkit.plot.write_curves`). The run has succeeded by then, so a figure that
        cannot be drawn (no font, a full disk) is a warning on stderr, not a failed run."""
        from toolkit.plot import write_curves

        try:
            write_curves(self.run_dir)
        except Exception as exc:  # noqa: BLE001 - any plotting failure must not turn a finished run into an error
            print(f"warning: could not draw {self.run_dir / 'curves.png'}: {exc}", file=sys.stderr)


class GradientStepTrainer(Trainer):
    """A trainer whose step is one gradient step on data it samples itself (the model loops):
    no episodes, the latest loss and test metric in the progress bar, and a finished run ends
    with an evaluation of its final weights."""

    learner_key = "model"
    return_source = "evaluation"
    shows_return = False

    def __init__(self, learner: Any, settings: RunSettings, run_dir: Path, device: torch.device,
                 progress: bool = True) -> None:
        super().__init__(learner, settings, run_dir, device, progress)
        #: The test metrics of the latest evaluation, and the step it ran at.
        self.latest_eval: dict[str, float] = {}
        self._evaluated_at = -1

    def gradient_step(self) -> dict[str, torch.Tensor]:
        """Sample a batch and update the learner once; return its metrics."""
        raise NotImplementedError

    def note(self) -> str:
        """Short text for the progress bar beside the step count."""
        loss = self.latest_metrics.get("loss")  # as of the last log line: no per-step device read
        return "" if loss is None else f"loss {loss:.4g}"

    def record_evaluation(self, metrics: dict[str, float]) -> None:
        """Log an evaluation's test metrics as ``eval`` and remember them."""
        assert self.logger is not None
        self.logger.log(self.step, "eval", metrics)
        self.latest_eval, self._evaluated_at = metrics, self.step

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        self.learner.train_mode(True)
        while self.step < total_steps and not self.stop_requested:
            self.accumulate(self.gradient_step())
            self.step += 1
            self.updates += 1
            self.after_steps(self.step - 1)
            if self.step % 10 == 0 or self.step == total_steps:
                bar.update(self.step, None, self.note())
        if self.step == total_steps and self._evaluated_at != self.step:
            self.evaluate()  # a finished run's last record describes its final weights
