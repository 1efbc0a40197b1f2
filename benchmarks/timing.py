"""Timing helpers: wall and CPU time per call, medians, and per-round ratios.

On a shared machine a single timing means little. Every measurement here records wall time
(``time.perf_counter``) and the process's CPU time (``time.process_time``, all threads), is
repeated, and is summarised by its median; two things compared with each other (ours and
the yardstick, TensorFlow and PyTorch) are measured in alternating rounds, and their ratio
is the median of the per-round ratios, so that load which comes and goes during a run hits
both sides alike.

>>> s = summarize([(0.1, 0.1), (0.3, 0.2), (0.2, 0.2)])
>>> s["wall_s"], s["cpu_s"], s["n"]
(0.2, 0.2, 3)
>>> ratio_of_rounds([[1.0, 1.0], [2.0]], [[2.0, 2.0], [2.0]])   # rounds: 2.0 and 1.0
1.5
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

Sample = tuple[float, float]          # (wall seconds, CPU seconds) of one call


def time_calls(fn: Callable[[], object], n: int) -> list[Sample]:
    """Call ``fn`` ``n`` times; (wall, cpu) seconds of each call."""
    out = []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - w0, time.process_time() - c0))
    return out


def summarize(samples: Sequence[Sample]) -> dict:
    """Median, minimum and 90th percentile of the wall times, median CPU time, count."""
    walls = sorted(s[0] for s in samples)
    cpus = [s[1] for s in samples]
    p90 = walls[min(len(walls) - 1, int(round(0.9 * (len(walls) - 1))))]
    return {"wall_s": round(statistics.median(walls), 6), "cpu_s": round(statistics.median(cpus), 6),
            "min_wall_s": round(walls[0], 6), "p90_wall_s": round(p90, 6), "n": len(walls)}


def ratio_of_rounds(a_rounds: Sequence[Sequence[float]],
                    b_rounds: Sequence[Sequence[float]]) -> float:
    """Median over rounds of ``median(b) / median(a)``: the throughput of A relative to B when
    ``a_rounds`` and ``b_rounds`` hold per-call times of A and B measured in the same rounds.
    """
    ratios = [statistics.median(b) / statistics.median(a)
              for a, b in zip(a_rounds, b_rounds) if a and b]
    return round(statistics.median(ratios), 4) if ratios else float("nan")
