"""Terminal progress bars for the command line (no dependency; one line redrawn with ``\\r``).

A bar is shown only when it is wanted and useful: not with ``--quiet``, and only when both
standard output and the bar's stream (standard error) are terminals, so that a log file or a
pipe receives the final summary and nothing else. Redraws are throttled to
:data:`MIN_INTERVAL_S`; the final state is always drawn.

>>> import io
>>> out = io.StringIO()
>>> bar = ProgressBar(4, "predict", stream=out, enabled=True, min_interval_s=0.0, width=8)
>>> for i in range(1, 5):
...     bar.update(i)
>>> bar.close()
>>> out.getvalue().rsplit("\\r", 1)[-1].split(" 4/4")[0]
'predict |########|'
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import IO, Mapping, Optional

#: Smallest time between two redraws of a bar (seconds).
MIN_INTERVAL_S = 0.1
#: Bar width in characters when the terminal's width is unknown.
DEFAULT_WIDTH = 24


def bars_enabled(quiet: bool, stdout: Optional[IO[str]] = None,
                 stream: Optional[IO[str]] = None) -> bool:
    """Whether to draw bars: not ``quiet``, and both ``stdout`` and ``stream`` are terminals.

    >>> import io
    >>> bars_enabled(False, io.StringIO(), io.StringIO())
    False
    """
    if quiet:
        return False
    stdout = sys.stdout if stdout is None else stdout
    stream = sys.stderr if stream is None else stream
    return all(_isatty(s) for s in (stdout, stream))


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    """``75.2`` -> ``'1:15'``; ``3725`` -> ``'1:02:05'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """One progress bar: ``desc |#####-----| n/total  elapsed<eta  rate/s  postfix``.

    ``unit`` names what is counted (for the rate). Disabled bars do nothing at all.
    """

    def __init__(self, total: int, desc: str = "", *, unit: str = "it",
                 stream: Optional[IO[str]] = None, enabled: bool = True,
                 min_interval_s: float = MIN_INTERVAL_S, width: Optional[int] = None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.width = width
        self.n = 0
        self.postfix = ""
        self._start = time.perf_counter()
        self._first: Optional[tuple[int, float]] = None    # (count, time) of the first update
        self._updated = self._start
        self._last_draw = -math.inf
        self._drawn_n = -1
        self._closed = False

    def update(self, n: int, postfix: str = "") -> None:
        """Set the count to ``n`` (absolute, not an increment) and redraw when due."""
        self.n = int(n)
        self.postfix = postfix
        if not self.enabled or self._closed:
            return
        now = time.perf_counter()
        self._updated = now
        if self._first is None:
            self._first = (self.n, now)
        if self.n >= self.total or now - self._last_draw >= self.min_interval_s:
            self._draw(now)

    def _rate(self, now: float) -> Optional[float]:
        """Counts per second between the first update and now (None before a second one).

        The first update is the reference because the work before it (a first step that
        compiles a graph, or reading data) is not known to the bar.
        """
        if self._first is None or self.n <= self._first[0] or now <= self._first[1]:
            return None
        return (self.n - self._first[0]) / (now - self._first[1])

    def _bar_width(self) -> int:
        if self.width is not None:
            return self.width
        columns = shutil.get_terminal_size((80, 24)).columns
        return max(10, min(40, columns - 60))

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self._drawn_n = self.n
        elapsed = now - self._start
        frac = min(self.n / self.total, 1.0) if self.total else 1.0
        width = self._bar_width()
        filled = int(round(frac * width))
        rate = self._rate(now)
        if self.n >= self.total:
            eta, speed = 0.0, f"{rate:.1f} {self.unit}/s" if rate else ""
        elif rate:
            eta, speed = (self.total - self.n) / rate, f"{rate:.1f} {self.unit}/s"
        else:
            eta, speed = math.inf, f"? {self.unit}/s"
        text = (f"{self.desc} |{'#' * filled}{'-' * (width - filled)}| {self.n}/{self.total} "
                f"{_duration(elapsed)}<{_duration(eta)}")
        for extra in (speed, self.postfix):
            if extra:
                text += f" {extra}"
        self.stream.write("\r" + text + "\x1b[K")   # erase what a longer earlier line left
        self.stream.flush()

    def close(self) -> None:
        """Draw the last state if it was not drawn (as of its update) and end the line (once)."""
        if self._closed:
            return
        if self.enabled:
            if self._drawn_n != self.n:
                self._draw(self._updated)
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True


class TrainingProgress:
    """A :data:`ptycho.training.ProgressFn`: one bar per epoch, counting its optimiser steps.

    The postfix shows the running mean of the total loss over the epoch's steps so far.
    """

    def __init__(self, nepochs: int, *, stream: Optional[IO[str]] = None, enabled: bool = True):
        self.nepochs = nepochs
        self.stream = stream
        self.enabled = enabled
        self._bar: Optional[ProgressBar] = None
        self._epoch: Optional[int] = None
        self._sum = 0.0

    def __call__(self, epoch: int, step: int, n_steps: int, terms: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        if epoch != self._epoch:
            if self._bar is not None:
                self._bar.close()
            width = len(str(self.nepochs))
            self._bar = ProgressBar(n_steps, f"epoch {epoch + 1:>{width}}/{self.nepochs}",
                                    unit="steps", stream=self.stream, enabled=True)
            self._epoch, self._sum = epoch, 0.0
        self._sum += float(terms["total"])
        self._bar.update(step + 1, postfix=f"loss {self._sum / (step + 1):.5g}")

    def close(self) -> None:
        """End the last epoch's line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ChunkProgress:
    """A ``progress(done, total)`` callback (reconstruction) drawing one bar of groups."""

    def __init__(self, desc: str, *, unit: str = "groups", stream: Optional[IO[str]] = None,
                 enabled: bool = True):
        self.desc, self.unit, self.stream, self.enabled = desc, unit, stream, enabled
        self._bar: Optional[ProgressBar] = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = ProgressBar(total, self.desc, unit=self.unit, stream=self.stream)
        self._bar.update(done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RefineProgress:
    """A ``refine_progress(done, total, nll)`` callback: one bar of refinement iterations with
    the last iteration's mean NLL."""

    def __init__(self, iterations: int, *, stream: Optional[IO[str]] = None,
                 enabled: bool = True):
        self.iterations, self.stream = iterations, stream
        self.enabled = enabled and iterations > 0
        self._bar: Optional[ProgressBar] = None

    def __call__(self, done: int, total: int, nll: float) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = ProgressBar(total, "refine", unit="it", stream=self.stream)
        self._bar.update(done, postfix=f"nll {nll:.5g}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
