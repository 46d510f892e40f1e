"""A progress bar for long work: steps, steps/s, the latest return and the time left."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

#: Seconds of recent progress the rate (and so the time left) is measured over. Measuring
#: since the start would let a fast phase (an off-policy agent's random steps before
#: ``learning_starts``) promise an end minutes too early; a short recent window forgets it
#: within seconds and still smooths the jitter of single updates.
RATE_WINDOW_S = 5.0


def format_eta(seconds: float | None) -> str:
    """``H:MM:SS`` left, or ``-:--:--`` while there is no rate yet."""
    if seconds is None:
        return "-:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainingProgress:
    """Context manager showing training progress; does nothing when disabled.

    Updating a terminal costs time, so :meth:`update` redraws at most a few times a second.
    The rate and the time left come from the last :data:`RATE_WINDOW_S` seconds only.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "training",
                 show_return: bool = True, clock: Callable[[], float] = time.perf_counter) -> None:
        self.enabled = enabled
        self.total, self.start = total, start
        self._progress: Progress | None = None
        self._task = None
        self._clock = clock
        self._last_draw = -float("inf")
        #: (time, step) samples of the last RATE_WINDOW_S seconds, oldest first.
        self._samples: deque[tuple[float, int]] = deque([(clock(), start)])
        #: Steps per second over the recent window (0 until a second has passed).
        self.rate = 0.0
        self.description = description
        #: Models have no episodes: their bar shows the loss note only.
        self.show_return = show_return

    @property
    def eta(self) -> float | None:
        """Seconds left at the recent rate; None before there is one."""
        if self.rate <= 0:
            return None
        last = self._samples[-1][1]
        return max(0.0, (self.total - last) / self.rate)

    def __enter__(self) -> TrainingProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7.1f} steps/s"),
                *([TextColumn("return {task.fields[ret]}")] if self.show_return else []),
                TextColumn("{task.fields[note]}"),
                TextColumn("[cyan]{task.fields[eta]}"),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.start,
                                                 rate=0.0, ret="-", note="", eta=format_eta(None))
        return self

    def _measure(self, now: float, step: int) -> None:
        """Add a sample and re-estimate the rate over the recent window."""
        samples = self._samples
        samples.append((now, step))
        # Drop samples older than the window, but keep one at or before its start so the
        # estimate always spans the whole window.
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        t0, s0 = samples[0]
        if now - t0 >= 1.0:
            self.rate = (step - s0) / (now - t0)

    def update(self, step: int, last_return: float | None, note: str = "") -> None:
        """Report that ``step`` steps are done; ``last_return`` is the latest episode's return
        and ``note`` any short text worth showing (an offline learner's latest loss)."""
        if self._progress is None:
            return
        now = self._clock()
        if now - self._last_draw < 0.25 and step < self.total:
            return
        self._measure(now, step)
        ret = "-" if last_return is None else f"{last_return:.1f}"
        self._progress.update(self._task, completed=step, rate=self.rate, ret=ret, note=note,
                              eta=format_eta(self.eta))
        self._last_draw = now

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(et, ev, tb)
