"""Peak memory of a process, sampled and read from the kernel; the training-memory subprocess.

``VmHWM`` (the kernel's peak resident set) counts every page the process touched, including
pages of a memory-mapped scan that the kernel can drop at will; ``RssAnon`` counts the
process's own allocations (heap, framework buffers). A background thread samples ``RssAnon``
so that its peak is known too. Each measurement runs in a fresh process (``python -m
benchmarks.memory ...``) so that one peak does not hide another.

>>> s = status_mib()
>>> s["VmHWM"] >= s["VmRSS"] > 0
True
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Optional

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def status_mib() -> dict[str, float]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` of this process, in MiB (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in FIELDS:
                    out[key] = round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return out


class AnonPeak:
    """Samples ``RssAnon`` every ``interval`` seconds in a daemon thread; ``peak`` in MiB."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = status_mib().get("RssAnon", 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_mib().get("RssAnon", 0.0))
            self._stop.wait(self.interval)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_mib().get("RssAnon", 0.0))


def train_memory(backend: str, n: int, gridsize: int, batch: int, epochs: int,
                 patterns: int, threads: Optional[int] = None) -> dict:
    """Train the reference network for a few epochs (``ptycho.workflows.train``); memory."""
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.worker import _configure
    impl, _ = _configure(backend, threads)
    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.simulate import simulate_dataset
    from ptycho.workflows import train

    raw, _ = simulate_dataset(patterns, n, nphotons=1e6, seed=0, scan="jitter")
    cfg = TrainingConfig(model=ModelConfig(N=n, gridsize=gridsize), batch_size=batch,
                         nepochs=epochs, nphotons=1e6)
    before = status_mib()
    t0 = time.perf_counter()
    with AnonPeak() as peak:
        result = train(cfg, raw, backend=impl.name)
    after = status_mib()
    return {"benchmark": "memory_train", "backend": impl.name,
            "config": {"N": n, "gridsize": gridsize, "batch_groups": batch, "epochs": epochs,
                       "patterns": patterns, "n_filters_scale": cfg.model.n_filters_scale,
                       "base_filters": cfg.model.base_filters},
            "seconds": round(time.perf_counter() - t0, 2),
            "rss_before_mib": before.get("VmRSS"), "peak_rss_mib": after.get("VmHWM"),
            "peak_anon_mib": peak.peak,
            "train_patterns_per_s": round(result.timings["patterns_per_s"], 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    p.add_argument("what", choices=["train"])
    p.add_argument("--backend", required=True)
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--gridsize", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--patterns", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    rec = train_memory(a.backend, a.N, a.gridsize, a.batch, a.epochs, a.patterns, a.threads)
    json.dump(rec, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
