"""Photon statistics: scale noise-free intensities to a mean photon count and draw Poisson counts.

Convention (the one owner of the simulation's photon scale): for noise-free far-field
intensities ``I`` (M, N, N) the expected counts are ``nphotons * I / mean_total(I)``, where
``mean_total(I) = mean_m sum_px I[m]``; so the *mean over patterns* of the total expected
count of a pattern is exactly ``nphotons`` (photons per pattern). The returned patterns are
amplitudes, ``sqrt(counts)``, float32, the public layout of ``diffraction``.

Draws are reproducible: counts depend only on the seed and the data, never on the number of
worker threads (the data are cut into fixed chunks of :data:`CHUNK` patterns, each with its own
child seed of ``numpy.random.SeedSequence(seed)``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Union

import numpy as np

#: Patterns per chunk of work (and per child random stream). Fixed: changing it changes draws.
CHUNK = 256

SeedLike = Union[int, np.random.SeedSequence, None]


def default_workers() -> int:
    """Threads used by default: the CPU count, at most 8 (numpy releases the GIL here).

    >>> 1 <= default_workers() <= 8
    True
    """
    return max(1, min(8, os.cpu_count() or 1))


def run_chunks(n_items: int, fn: Callable[[slice, int], None], workers: int | None) -> None:
    """Call ``fn(slice, chunk_index)`` for consecutive chunks of :data:`CHUNK` items.

    With more than one worker the calls run in a thread pool (each ``fn`` must write to its
    own slice only). Exceptions propagate.

    >>> out = np.zeros(600)
    >>> def fill(sl, k):
    ...     out[sl] = k
    >>> run_chunks(600, fill, workers=2)
    >>> out[[0, 255, 256, 599]].tolist()
    [0.0, 0.0, 1.0, 2.0]
    """
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    slices = [slice(i, min(i + CHUNK, n_items)) for i in range(0, n_items, CHUNK)]
    if workers == 1 or len(slices) == 1:
        for k, sl in enumerate(slices):
            fn(sl, k)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(fn, sl, k) for k, sl in enumerate(slices)]:
            f.result()


def mean_total_intensity(intensity: np.ndarray) -> float:
    """``mean_m sum_px I[m]``: the mean total intensity of a pattern (same units as ``I``).

    >>> mean_total_intensity(np.stack([np.ones((2, 2)), 3 * np.ones((2, 2))]))
    8.0
    """
    i = np.asarray(intensity)
    if i.ndim != 3:
        raise ValueError(f"intensity must be (M, N, N), got shape {i.shape}")
    return float(i.sum(axis=(1, 2), dtype=np.float64).mean())


def photon_scale(intensity: np.ndarray, nphotons: float) -> float:
    """Factor that turns noise-free intensities into expected photon counts.

    ``nphotons / mean_total_intensity(intensity)`` (counts per intensity unit).

    >>> photon_scale(np.ones((2, 4, 4)), 1000.0)
    62.5
    """
    nph = float(nphotons)
    if not (nph > 0 and math.isfinite(nph)):
        raise ValueError(f"nphotons must be a finite number > 0 (photons per pattern), "
                         f"got {nphotons!r}")
    total = mean_total_intensity(intensity)
    if not (total > 0 and math.isfinite(total)):
        raise ValueError(f"the mean total intensity must be finite and > 0, got {total} "
                         "(is the probe or the object zero?)")
    return nph / total


def poisson_amplitudes(intensity: np.ndarray, nphotons: float, seed: SeedLike = 0, *,
                       noise: bool = True, workers: int | None = None,
                       out: np.ndarray | None = None) -> np.ndarray:
    """Amplitudes ``sqrt(Poisson(nphotons * I / mean_total(I)))`` as float32 (M, N, N).

    ``intensity`` (M, N, N) non-negative noise-free far-field intensities (any unit).
    ``nphotons``: mean total photon count per pattern. ``noise=False`` returns the expected
    amplitudes ``sqrt(nphotons * I / mean_total(I))`` without drawing. ``out`` may be
    ``intensity`` itself (float32) to work in place. ``seed``: int, SeedSequence or None.

    >>> a = poisson_amplitudes(np.full((2, 4, 4), 0.5, np.float32), 1600.0, seed=1)
    >>> a.dtype, a.shape, bool(abs((a ** 2).sum() / 2 - 1600) < 200)
    (dtype('float32'), (2, 4, 4), True)
    """
    intensity = np.asarray(intensity)
    if intensity.ndim != 3:
        raise ValueError(f"intensity must be (M, N, N), got shape {intensity.shape}")
    if intensity.dtype.kind not in "fiu":
        raise ValueError(f"intensity must be real, got dtype {intensity.dtype}")
    if not np.all(np.isfinite(intensity)) or float(intensity.min()) < 0:
        raise ValueError("intensity must be finite and >= 0")
    scale = photon_scale(intensity, nphotons)
    if out is None:
        out = np.empty(intensity.shape, dtype=np.float32)
    elif out.shape != intensity.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {intensity.shape}, got {out.dtype} "
                         f"{out.shape}")
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    # children built from (entropy, spawn_key) rather than root.spawn(), which would mutate root
    seeds = [np.random.SeedSequence(root.entropy, spawn_key=root.spawn_key + (k,))
             for k in range(-(-len(intensity) // CHUNK))]

    def work(sl: slice, k: int) -> None:
        lam = intensity[sl].astype(np.float64) * scale
        if noise:
            lam = np.random.default_rng(seeds[k]).poisson(lam)
        np.sqrt(lam, out=out[sl], casting="unsafe")

    run_chunks(len(intensity), work, workers)
    return out
