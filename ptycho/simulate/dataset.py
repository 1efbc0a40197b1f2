"""Simulate a ptychography scan: object patches x probe -> far field -> Poisson counts.

The forward model (the same conventions as :mod:`ptycho.physics`):

* patch ``m`` at position ``(x, y)`` (object pixels, x = column) is
  ``patch[r, c] = obj(y - N//2 + r, x - N//2 + c)``, read bilinearly for fractional
  positions; this equals ``ptycho.physics.translate(obj, (N//2 - x, N//2 - y))[:N, :N]``;
* ``I = far_field_amplitude(probe * patch) ** 2 = |fftshift(fft2(probe * patch))|^2 / N^2``;
* ``diffraction = sqrt(Poisson(nphotons * I / mean_total(I)))`` (:mod:`.noise`), float32.

The fast path crops an (N+1) x (N+1) window per pattern with one gather, applies the bilinear
weights in complex64, folds the ``fftshift`` into the probe for even N (a ``(-1)^(r+c)``
checkerboard) and runs complex64 FFTs, chunk by chunk in a thread pool; about 1 s for 10,000
patterns of 64 x 64 on two cores (see the test that measures it).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import scipy.fft

from ptycho.data.contract import RawData
from ptycho.limits import check_bytes
from ptycho.simulate.noise import CHUNK, default_workers, poisson_amplitudes, run_chunks
from ptycho.simulate.objects import (AMPLITUDE_RANGE, PHASE_RANGE, grf_object, image_object,
                                     lines_object)
from ptycho.simulate.probes import make_probe
from ptycho.simulate.scans import SCAN_KINDS, check_inside, grid_dims, make_scan, scan_extent
from ptycho.stitching import gather_patches

#: Object kinds :func:`simulate_dataset` can generate.
OBJECT_KINDS = ("lines", "grf")

#: Bytes one pixel of a pattern in flight costs: its (N+1)^2 window and bilinear blend
#: (complex64), the FFT and its squared magnitude; a chunk of :data:`noise.CHUNK` patterns per
#: worker thread is in flight.
CHUNK_BYTES_PER_PIXEL = 48
#: Bytes one object pixel costs while the object is generated and used: the real patterns and
#: the phase factor (float64 / complex128), the complex64 object and its zero-padded copy.
OBJECT_BYTES_PER_PIXEL = 48
#: Bytes one scan position costs: (x, y) float64 and the temporaries of the scan generators.
POSITION_BYTES = 64

ArrayOrName = Union[np.ndarray, str, None]


def _positions(positions: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions must be a non-empty (M, 2) array of (x, y), got shape "
                         f"{pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions hold non-finite values (NaN or Inf)")
    return pos


def check_simulation_memory(n_patterns: int, n: int, object_shape: Sequence[int] | None = None,
                            workers: int | None = None) -> None:
    """Check a simulation's memory against the budget (:mod:`ptycho.limits`) before it runs.

    Counted: the diffraction (M, N, N) float32, the positions, the patterns in flight (one
    chunk per worker) and, when known, the (H, W) object. Raises
    :class:`ptycho.errors.ResourceLimitError` saying what needs how much.

    >>> import os
    >>> os.environ["PTYCHO_MAX_BYTES"] = "8GiB"
    >>> check_simulation_memory(100_000_000, 4096)
    Traceback (most recent call last):
    ...
    ptycho.errors.ResourceLimitError: simulating 100000000 patterns of 4096 x 4096 needs 5.96 PiB, more than the memory budget of 8 GiB (PTYCHO_MAX_BYTES=8GiB); set PTYCHO_MAX_BYTES to change it
    >>> del os.environ["PTYCHO_MAX_BYTES"]
    """
    m, n = int(n_patterns), int(n)
    in_flight = min(m, CHUNK * (default_workers() if workers is None else max(int(workers), 1)))
    need = m * (n * n * 4 + POSITION_BYTES) + in_flight * (n + 1) ** 2 * CHUNK_BYTES_PER_PIXEL
    what = f"simulating {m} patterns of {n} x {n}"
    if object_shape is not None:
        h, w = (int(v) for v in object_shape)
        need += h * w * OBJECT_BYTES_PER_PIXEL
        what += f" on a {h} x {w} object"
    check_bytes(need, what)


def _object(obj: np.ndarray) -> np.ndarray:
    o = np.asarray(obj)
    if o.ndim != 2 or o.dtype.kind not in "biufc":
        raise ValueError(f"object must be a numeric 2-D array, got {o.dtype} {o.shape}")
    return o.astype(np.complex64, copy=False)


def object_patches(obj: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """The (M, N, N) complex64 object patches at ``positions`` (M, 2) = (x, y).

    ``patch[r, c] = obj(y - N//2 + r, x - N//2 + c)``, bilinear, zero outside the object;
    every patch must lie inside (:func:`ptycho.simulate.scans.check_inside`).

    >>> obj = np.arange(36.0).reshape(6, 6)
    >>> object_patches(obj, np.array([[2.0, 3.0]]), 2).real[0].tolist()   # rows 2-3, cols 1-2
    [[13.0, 14.0], [19.0, 20.0]]
    """
    obj = _object(obj)
    pos = _positions(positions)
    check_inside(pos, obj.shape, n)
    return gather_patches(np.pad(obj, ((0, 1), (0, 1))), pos, n)


def diffraction_intensity(obj: np.ndarray, probe: np.ndarray, positions: np.ndarray, *,
                          workers: int | None = None) -> np.ndarray:
    """Noise-free far-field intensities ``|fftshift(fft2(probe * patch))|^2 / N^2`` (M, N, N).

    float32, computed in complex64; ``sum I[m] == sum |probe * patch_m|^2`` (Parseval).
    ``obj`` (H, W), ``probe`` (N, N), ``positions`` (M, 2) = (x, y) inside the object.

    >>> I = diffraction_intensity(np.ones((8, 8)), np.ones((4, 4)), np.array([[4.0, 4.0]]))
    >>> float(I[0, 2, 2]), float(I.sum())
    (16.0, 16.0)
    """
    obj = _object(obj)
    probe = np.asarray(probe)
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1] or probe.dtype.kind not in "biufc":
        raise ValueError(f"probe must be a numeric square (N, N) array, got {probe.dtype} "
                         f"{probe.shape}")
    n = probe.shape[0]
    pos = _positions(positions)
    check_inside(pos, obj.shape, n)
    check_simulation_memory(len(pos), n, obj.shape, workers)
    padded = np.pad(obj, ((0, 1), (0, 1)))
    even = n % 2 == 0
    if even:  # fftshift(fft2(x)) == fft2(x * (-1)^(r + c)) for even N: fold it into the probe
        r = np.arange(n)
        probe = probe * (1 - 2 * ((r[:, None] + r[None, :]) % 2))
    probe = probe.astype(np.complex64)
    out = np.empty((len(pos), n, n), dtype=np.float32)
    inv_n2 = np.float32(1.0 / (n * n))

    def work(sl: slice, _k: int) -> None:
        f = scipy.fft.fft2(gather_patches(padded, pos[sl], n) * probe, overwrite_x=True)
        if not even:
            f = np.fft.fftshift(f, axes=(-2, -1))
        i = f.real * f.real
        i += f.imag * f.imag
        np.multiply(i, inv_n2, out=out[sl])

    run_chunks(len(pos), work, workers)
    return out


def _make_object(obj: ArrayOrName, shape: tuple[int, int], rng: np.random.Generator,
                 amplitude_range, phase_range) -> np.ndarray:
    if obj is None or isinstance(obj, str):
        kind = obj or "lines"
        if kind == "lines":
            return lines_object(shape, rng, amplitude_range=amplitude_range,
                                phase_range=phase_range)
        if kind == "grf":
            return grf_object(shape, rng, amplitude_range=amplitude_range, phase_range=phase_range)
        raise ValueError(f"unknown object kind {kind!r}; expected one of {list(OBJECT_KINDS)} "
                         "or a 2-D array (read an image file with ptycho.simulate.load_image)")
    return image_object(obj, amplitude_range, phase_range)


def _auto_step(shape: tuple[int, int], n: int, n_patterns: int) -> tuple[float, float]:
    """Integer grid steps (step_x, step_y) that span a given object with ``n_patterns`` points."""
    rows, cols = grid_dims(n_patterns)
    h, w = shape
    steps = []
    for extent, count in ((w, cols), (h, rows)):
        span = (extent - n) / (count - 1) if count > 1 else float(max(1, n // 4))
        if span < 1:
            raise ValueError(f"{n_patterns} grid positions of {n} x {n} patches do not fit in "
                             f"the {shape} object with a step of at least 1 pixel; use fewer "
                             "patterns or a larger object")
        steps.append(float(math.floor(span)))
    return steps[0], steps[1]


def simulate_dataset(n_patterns: int | None = None, N: int = 64, *,  # noqa: N803
                     object: ArrayOrName = None,  # noqa: A002 (the brief's name)
                     probe: ArrayOrName = None,
                     scan: Union[str, np.ndarray] = "grid",
                     nphotons: float = 1e9, seed: int = 0,
                     step=None, jitter: float | None = None,
                     object_shape: Sequence[int] | None = None,
                     amplitude_range: Sequence[float] = AMPLITUDE_RANGE,
                     phase_range: Sequence[float] = PHASE_RANGE,
                     noise: bool = True, store_object: bool = True,
                     workers: int | None = None) -> tuple[RawData, np.ndarray]:
    """Simulate a scan; return ``(RawData, ground_truth_object)``.

    n_patterns: number of patterns M (needed when ``scan`` is a kind; else from positions).
    N: pattern side in pixels.
    object: ``None``/``"lines"``/``"grf"`` to generate one (amplitude in ``amplitude_range``,
        phase in ``phase_range`` radians), or an (H, W) array: complex is used as is, a real
        image is mapped to amplitude and phase (:func:`ptycho.simulate.objects.image_object`).
    probe: ``None``/``"disk"``/``"gaussian"``/``"defocus"``/``"diffuser"`` or an (N, N) array.
    scan: ``"grid"``, ``"jitter"``, ``"random"`` or an (M, 2) array of (x, y) positions.
        ``step`` (pixels, a number or (step_x, step_y); default N/4, or with a given object
        the integer steps that span it) and ``jitter`` (pixels, default min(step)/4 for a
        generated object, 0 for a given one) shape the generated scans.
    object_shape: size of a generated object (default: the smallest that holds the scan).
    nphotons: mean total photon count per pattern. ``noise=False`` skips the Poisson draw.
    seed: everything (object, scan, counts) is drawn from ``SeedSequence(seed)``: the same
        seed gives the same dataset, whatever ``workers``.
    store_object: put the ground truth in ``RawData.object_guess`` (``objectGuess`` on disk).

    Returns RawData with diffraction (M, N, N) float32 amplitudes sqrt(counts), probe (N, N)
    complex64, xcoords/ycoords (M,) float64; and the ground-truth object (H, W) complex64.

    >>> raw, obj = simulate_dataset(16, 16, nphotons=1e4, seed=3)
    >>> raw.diffraction.shape, raw.probe.shape, obj.dtype
    ((16, 16, 16), (16, 16), dtype('complex64'))
    >>> bool(abs((raw.diffraction ** 2).sum(axis=(1, 2)).mean() / 1e4 - 1) < 0.05)
    True
    """
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 2:
        raise ValueError(f"N must be an int >= 2 (pattern side in pixels), got {N!r}")
    n = int(N)
    if (isinstance(scan, str) and isinstance(n_patterns, (int, np.integer))
            and not isinstance(n_patterns, bool) and n_patterns >= 1):
        check_simulation_memory(n_patterns, n, workers=workers)   # before the scan is made
    obj_seed, scan_seed, noise_seed = np.random.SeedSequence(seed).spawn(3)
    given_obj = None
    if object is not None and not isinstance(object, str):
        given_obj = _make_object(object, (0, 0), None, amplitude_range, phase_range)
        if given_obj.shape[0] < n or given_obj.shape[1] < n:
            raise ValueError(f"object shape {given_obj.shape} is smaller than one {n} x {n} patch")
        if object_shape is not None and tuple(object_shape) != given_obj.shape:
            raise ValueError(f"object_shape {tuple(object_shape)} contradicts the given object's "
                             f"shape {given_obj.shape}")
        object_shape = given_obj.shape

    if isinstance(scan, str):
        if scan not in SCAN_KINDS:
            raise ValueError(f"unknown scan kind {scan!r}; expected one of {list(SCAN_KINDS)} "
                             "or an (M, 2) array of positions")
        if n_patterns is None:
            raise ValueError("n_patterns is required when scan is a kind "
                             f"({scan!r}) rather than an array of positions")
        if given_obj is not None and step is None and scan != "random":
            if scan == "jitter":
                jitter = 0.0 if jitter is None else float(jitter)
            margin = 2 * (jitter or 0.0) if scan == "jitter" else 0.0
            step = _auto_step((given_obj.shape[0] - margin, given_obj.shape[1] - margin), n,
                              int(n_patterns))
        pos, shape = make_scan(scan, n_patterns, n, np.random.default_rng(scan_seed), step=step,
                               jitter=jitter, object_shape=object_shape)
    else:
        pos = _positions(scan)
        if n_patterns is not None and n_patterns != len(pos):
            raise ValueError(f"n_patterns {n_patterns} contradicts the {len(pos)} positions given")
        shape = (tuple(int(s) for s in object_shape) if object_shape is not None
                 else scan_extent(pos, n))
        check_inside(pos, shape, n)

    check_simulation_memory(len(pos), n, shape, workers)   # before the object is made
    if given_obj is None:
        obj = _make_object(object, shape, np.random.default_rng(obj_seed), amplitude_range,
                           phase_range)
    else:
        obj = given_obj

    if probe is None or isinstance(probe, str):
        probe_arr = make_probe(probe or "disk", n)
    else:
        probe_arr = np.asarray(probe)
        if probe_arr.shape != (n, n):
            raise ValueError(f"probe must have shape ({n}, {n}) for N = {n}, got {probe_arr.shape}")
        probe_arr = probe_arr.astype(np.complex64)

    intensity = diffraction_intensity(obj, probe_arr, pos, workers=workers)
    amplitudes = poisson_amplitudes(intensity, nphotons, noise_seed, noise=noise, workers=workers,
                                    out=intensity)
    raw = RawData(diffraction=amplitudes, probe=probe_arr, xcoords=pos[:, 0].copy(),
                  ycoords=pos[:, 1].copy(), object_guess=obj if store_object else None)
    return raw, obj

