"""A progress bar for long work: steps, steps/s and the latest return."""

from __future__ import annotations

import time
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    """Context manager showing training progress; does nothing when disabled.

    Updating a terminal costs time, so :meth:`update` redraws at most a few times a second.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "training",
                 show_return: bool = True) -> None:
        self.enabled = enabled
        self.total, self.start = total, start
        self._progress: Progress | None = None
        self._task = None
        self._last_draw = 0.0
        self._window: tuple[float, int] = (time.perf_counter(), start)
        self._rate = 0.0
        self.description = description
        #: Models have no episodes: their bar shows the loss note only.
        self.show_return = show_return

    def __enter__(self) -> TrainingProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7.1f} steps/s"),
                *([TextColumn("return {task.fields[ret]}")] if self.show_return else []),
                TextColumn("{task.fields[note]}"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.start, rate=0.0, ret="-", note="")
        return self

    def update(self, step: int, last_return: float | None, note: str = "") -> None:
        """Report that ``step`` steps are done; ``last_return`` is the latest episode's return
        and ``note`` any short text worth showing (an offline learner's latest loss)."""
        if self._progress is None:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.25 and step < self.total:
            return
        t0, s0 = self._window
        if now - t0 > 1.0:
            self._rate = (step - s0) / (now - t0)
            self._window = (now, step)
        ret = "-" if last_return is None else f"{last_return:.1f}"
        self._progress.update(self._task, completed=step, rate=self._rate, ret=ret, note=note)
        self._last_draw = now

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(et, ev, tb)
