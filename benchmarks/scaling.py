"""Scaling of reconstruction: 1k, 10k, 100k patterns, streamed from a memory-mapped scan.

The scan lives in a ``.npy`` file on disk, opened with ``mmap_mode="r"`` (as ``load_npz(...,
mmap_mode="r")`` opens an uncompressed NPZ), and every size reconstructs over the same
object canvas (random sub-pixel positions on a fixed square object), so the canvas's memory
is the same for every size and anything that grew with the number of patterns would show.
Each size runs in a fresh process (``python -m benchmarks.scaling``) for a clean memory peak.

Measured per size: :func:`ptycho.workflows.reconstruct` end to end (``keep_patches=False``:
read, scale, predict, stitch, chunk by chunk) and, separately, the stitching alone (the
:class:`ptycho.stitching.Stitcher` fed the same number of patches at the same positions);
both per pattern. The network is small (the point is the pipeline, not the convolutions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

import numpy as np

from benchmarks.memory import AnonPeak, status_mib

#: The small network of the scaling runs.
SMALL_MODEL = {"base_filters": 4, "n_filters_scale": 1}
#: Side of the fixed object canvas (pixels) the scan positions fall on.
OBJECT_SIDE = 1024
#: Real simulated patterns tiled into the big scan file.
TILE = 1024


def make_scan(path: str, n_patterns: int, n: int, seed: int = 0) -> dict:
    """Write a scan of ``n_patterns`` (N, N) float32 amplitudes to ``path`` (.npy), tiled from
    :data:`TILE` simulated patterns, and its positions to ``path + '.pos.npy'``."""
    from ptycho.simulate import simulate_dataset

    raw, _ = simulate_dataset(TILE, n, nphotons=1e6, seed=seed)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                   shape=(n_patterns, n, n))
    for lo in range(0, n_patterns, TILE):
        hi = min(lo + TILE, n_patterns)
        mm[lo:hi] = raw.diffraction[:hi - lo]
    mm.flush()
    del mm
    rng = np.random.default_rng(seed)
    lo, hi = n // 2 + 1, OBJECT_SIDE - n // 2 - 2
    pos = rng.uniform(lo, hi, size=(n_patterns, 2))
    np.save(path + ".pos.npy", pos)
    np.save(path + ".probe.npy", raw.probe)
    return {"path": path, "bytes": n_patterns * n * n * 4}


def run_size(backend: str, path: str, m: int, chunk_groups: int, batch: int,
             threads: Optional[int] = None) -> dict:
    """Reconstruct the first ``m`` patterns of the scan at ``path``; times and memory."""
    from benchmarks.worker import _configure
    impl, import_s = _configure(backend, threads)
    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.data import RawData
    from ptycho.stitching import Stitcher
    from ptycho.weights import init_weights
    from ptycho.workflows.model import PtychoModel
    from ptycho.workflows.reconstruct import reconstruct, stitch_window

    diff = np.load(path, mmap_mode="r")[:m]
    pos = np.load(path + ".pos.npy")[:m]
    probe = np.load(path + ".probe.npy")
    n = diff.shape[-1]
    cfg = TrainingConfig(model=ModelConfig(N=n, **SMALL_MODEL), batch_size=batch, nphotons=1e6)
    model = PtychoModel(impl.build_model(cfg.model, init_weights(cfg.model, 0, probe, 3.0)), cfg)
    shape = (OBJECT_SIDE, OBJECT_SIDE)
    base = status_mib()
    with AnonPeak() as peak:
        t0 = time.perf_counter()
        raw = RawData(diffraction=diff, probe=probe, xcoords=pos[:, 0], ycoords=pos[:, 1])
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        rec = reconstruct(model, raw, keep_patches=False, object_shape=shape, batch_size=batch,
                          chunk_groups=chunk_groups)
        t_rec = time.perf_counter() - t0
    after = status_mib()
    # the stitching alone: the same count of patches at the same positions
    patches = model.predict(np.asarray(diff[:min(m, TILE)])[:, None] * 1.0, batch_size=batch)
    patches = patches.reshape(-1, n, n)
    st = Stitcher(shape, n, window=stitch_window(model))
    t0 = time.perf_counter()
    for lo in range(0, m, len(patches)):
        hi = min(lo + len(patches), m)
        st.add(patches[:hi - lo], pos[lo:hi])
    t_stitch = time.perf_counter() - t0
    assert rec.n_patterns == m
    return {"benchmark": "scaling", "backend": impl.name, "patterns": m,
            "config": {"N": n, "gridsize": 1, "batch_groups": batch, "chunk_groups": chunk_groups,
                       "object": list(shape), **SMALL_MODEL},
            "load_s": round(t_load, 3), "reconstruct_s": round(t_rec, 3),
            "reconstruct_us_per_pattern": round(1e6 * t_rec / m, 2),
            "stitch_s": round(t_stitch, 3), "stitch_us_per_pattern": round(1e6 * t_stitch / m, 2),
            "rss_before_mib": base.get("VmRSS"), "anon_before_mib": base.get("RssAnon"),
            "peak_anon_mib": peak.peak, "peak_rss_mib": after.get("VmHWM"),
            "rss_file_after_mib": after.get("RssFile")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling")
    p.add_argument("--backend", required=True)
    p.add_argument("--data", required=True, help=".npy scan written by make_scan")
    p.add_argument("--patterns", type=int, required=True)
    p.add_argument("--chunk-groups", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rec = run_size(a.backend, a.data, a.patterns, a.chunk_groups, a.batch, a.threads)
    json.dump(rec, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
