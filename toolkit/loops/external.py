"""The loop of an agent whose library trains it (kind ``"external"``, :mod:`toolkit.external`).

The library steps its own environments and updates itself; this loop lends it the toolkit's
run around that: it asks for chunks of env steps that end where the run logs, evaluates or
checkpoints, logs every finished episode and the library's statistics, evaluates with the
toolkit's protocol, and writes checkpoints in two parts: the library's own checkpoint in
``checkpoints/native/step-<N>/`` and the toolkit's ``checkpoints/latest.pt`` (counters, random
streams, the evaluation history) naming it. The toolkit's file is written second, so after a
crash it always names a complete native checkpoint; native checkpoints no checkpoint names
any more are removed. ``checkpoints/best.pt`` names ``checkpoints/native/best-step-<N>/``.
The same loop serves runs with ``--workers``: the library (RLlib) spreads its own work over
the Ray cluster.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch

from toolkit.envs import make_env
from toolkit.external import NATIVE_FOLDER, EnvContext, ExternalAgent, load_external_state
from toolkit.loops.base import TrainingLoop
from toolkit.progress import TrainingProgress
from toolkit.runs import BEST_CHECKPOINT, CHECKPOINT, file_error, load_checkpoint


class ExternalLoop(TrainingLoop):
    """Trains an :class:`~toolkit.external.ExternalAgent` through its library, in chunks."""

    agent: ExternalAgent
    #: Whether this loop has started the library (once per run() of a fresh or resumed run).
    _started = False
    #: The native folders the toolkit's checkpoints on disk name, by "latest" and "best" (read
    #: from the files once, then kept as they are written).
    _named: dict[str, str] | None = None

    @classmethod
    def from_session(cls, session: Any, run_dir: Path, progress: bool) -> ExternalLoop:
        return cls(session.learner, session.settings, session.make_env, run_dir, session.device, progress=progress)

    def env_context(self) -> EnvContext:
        """How the library makes this run's environments (picklable, for Ray workers too)."""
        s = self.settings
        return EnvContext(
            env_id=s.env, make_env=partial(make_env, s.env, options=s.env_options), seed=s.seed,
            device=self.device, total_steps=s.steps, workers=s.workers, envs_per_worker=s.envs_per_worker,
            gpus_per_worker=s.gpus_per_worker, address=s.address,
        )

    # --- training -------------------------------------------------------------------------------

    def _next_boundary(self, total_steps: int) -> int:
        """The first step after ``self.step`` where the run logs, evaluates or checkpoints."""
        s = self.settings
        ends = [total_steps] + [(self.step // every + 1) * every
                                for every in (s.log_every, s.eval_every, s.checkpoint_every) if every]
        return min(ends)

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        if not self._started:
            self._remove_unnamed_native()  # of a checkpoint write that a crash cut short
            self.agent.start(self.env_context())
            self._started = True
        while self.step < total_steps and not self.stop_requested:
            before = self.step
            report = self.agent.learn(self._next_boundary(total_steps) - self.step)
            for episode_return, length, offset in report.episodes:
                self.log_episode(float(episode_return), int(length), before + int(offset))
            self.step += int(report.steps)
            if report.metrics:
                self.accumulate({key: torch.tensor(float(value)) for key, value in report.metrics.items()})
            self.updates += 1
            self.after_steps(before)
            bar.update(self.step, self.last_return)

    def run(self, total_steps: int) -> Any:
        try:
            return super().run(total_steps)
        finally:
            self.agent.close()

    # --- checkpoints: the library's own, named by the toolkit's ---------------------------------

    def _write_native(self, name: str, resumable: bool) -> dict[str, Any]:
        """Write the library's checkpoint to ``checkpoints/native/<name>`` (atomically, through a
        ``.tmp`` folder) and return the agent entry of a toolkit checkpoint naming it."""
        folder = self.run_dir / NATIVE_FOLDER
        target, tmp = folder / name, folder / f"{name}.tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self.agent.save_native(tmp, resumable=resumable)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except OSError as exc:
            raise file_error("native checkpoint", target, exc) from None
        return {**self.agent.state_dict(), "native": name}

    def _native_name(self, which: str) -> str:
        """The native folder of the ``latest`` or ``best`` checkpoint taken at this step."""
        return f"best-step-{self.step}" if which == "best" else f"step-{self.step}"

    def learner_state(self, which: str) -> dict[str, Any]:
        # The best checkpoint is only ever evaluated: it leaves out what only resuming needs.
        return self._write_native(self._native_name(which), resumable=which != "best")

    def load_learner_state(self, state: dict[str, Any]) -> None:
        load_external_state(self.agent, state, self.run_dir)

    def checkpoint(self) -> None:
        super().checkpoint()
        self._named_folders()["latest"] = self._native_name("latest")
        self._remove_unnamed_native()

    def keep_best(self, value: float) -> bool:
        kept = super().keep_best(value)
        if kept:
            self._named_folders()["best"] = self._native_name("best")
            self._remove_unnamed_native()
        return kept

    def _named_folders(self) -> dict[str, str]:
        """:attr:`_named`, read from ``latest.pt`` and ``best.pt`` the first time it is needed."""
        if self._named is None:
            self._named = {}
            for which, path in (("latest", CHECKPOINT), ("best", BEST_CHECKPOINT)):
                if (self.run_dir / path).is_file():
                    self._named[which] = load_checkpoint(self.run_dir / path)[self.learner_key].get("native")
        return self._named

    def _remove_unnamed_native(self) -> None:
        """Delete native checkpoints that neither ``latest.pt`` nor ``best.pt`` names (older
        ones, and folders a crash left half-written)."""
        named = set(self._named_folders().values())
        folder = self.run_dir / NATIVE_FOLDER
        if folder.is_dir():
            for child in folder.iterdir():
                if child.name not in named:
                    shutil.rmtree(child, ignore_errors=True)


__all__ = ["ExternalLoop"]
