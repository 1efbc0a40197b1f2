"""Deterministic inputs for the parity stages: probes, objects, offsets and a small scan.

Everything is drawn from a :class:`numpy.random.Generator` the caller seeds, in numpy, once,
and handed to both backends as the same float32 / complex64 arrays. The scan goes through the
core's own data path (:class:`ptycho.data.RawData` -> :func:`ptycho.data.group_data`), so the
scale factors the stages see are the ones training sees.

>>> rng = np.random.default_rng(0)
>>> off = group_offsets(rng, 3, 2, spacing=4.0)
>>> off.shape, bool(np.allclose(off.mean(axis=1), 0.0, atol=1e-6))
((3, 4, 2), True)
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.data import GroupedData, RawData, group_data, normalise_probe
from ptycho.physics.forward import far_field_amplitude
from ptycho.physics.patches import extract_patches


def random_complex(rng: np.random.Generator, shape, amplitude=(0.2, 1.0)) -> np.ndarray:
    """complex64 with amplitude uniform in ``amplitude`` and phase uniform in [-pi, pi)."""
    amp = rng.uniform(amplitude[0], amplitude[1], size=shape)
    phase = rng.uniform(-math.pi, math.pi, size=shape)
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def smooth_object(rng: np.random.Generator, shape, correlation: float = 3.0) -> np.ndarray:
    """A smooth complex64 object (amplitude in [0.5, 1], phase in [-1, 1] rad): filtered noise."""
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    filt = np.exp(-2 * (math.pi * correlation) ** 2 * (kx ** 2 + ky ** 2))
    fields = []
    for _ in range(2):
        f = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(h, w))) * filt))
        f = (f - f.min()) / max(float(np.ptp(f)), 1e-12)
        fields.append(f)
    return ((0.5 + 0.5 * fields[0]) * np.exp(1j * (2 * fields[1] - 1))).astype(np.complex64)


def make_probe(n: int, probe_scale: float, rng: Optional[np.random.Generator] = None,
               radius: Optional[float] = None, curvature: float = 0.02) -> np.ndarray:
    """A soft-edged disk probe of radius ``n/4`` with a quadratic phase, normalised by
    :func:`ptycho.data.normalise_probe` (the one owner of the probe scale)."""
    radius = n / 4.0 if radius is None else radius
    r = np.arange(n) - n // 2
    rr = np.sqrt(r[:, None] ** 2 + r[None, :] ** 2)
    amp = 0.5 * (1 - np.tanh((rr - radius) / 1.5))
    phase = curvature * rr ** 2
    if rng is not None:
        phase = phase + 0.1 * rng.normal(size=(n, n))
    return normalise_probe(amp * np.exp(1j * phase), probe_scale)


def group_offsets(rng: np.random.Generator, n_groups: int, gridsize: int, spacing: float,
                  jitter: float = 1.0) -> np.ndarray:
    """(B, C, 2) float32 ``(x, y)`` offsets of a gridsize x gridsize group relative to its
    centre: a grid of step ``spacing`` plus uniform sub-pixel ``jitter``, recentred (so
    offsets are negative as often as positive and mostly non-integral)."""
    g = np.arange(gridsize) - (gridsize - 1) / 2.0
    gx, gy = np.meshgrid(g, g)
    base = np.stack([gx.ravel(), gy.ravel()], axis=-1) * spacing
    off = base[None] + rng.uniform(-jitter, jitter, size=(n_groups, gridsize * gridsize, 2))
    off = off - off.mean(axis=1, keepdims=True)
    return off.astype(np.float32)


def simulate_scan(model: ModelConfig, rng: np.random.Generator, n_side: int = 4,
                  step: Optional[float] = None, nphotons: float = 1e6,
                  poisson: bool = True) -> RawData:
    """A small raster scan (``n_side**2`` points, sub-pixel jitter) of a smooth object.

    Diffraction is ``far_field_amplitude(probe * patch)`` from the float64 reference, then
    Poisson counts scaled to ``nphotons`` mean photons per pattern (sqrt taken again).
    """
    n = model.N
    step = n / 4.0 if step is None else step
    extent = step * (n_side - 1)
    side = n + 2 * int(math.ceil(extent / 2 + 2))
    obj = smooth_object(rng, (side, side))
    g = (np.arange(n_side) - (n_side - 1) / 2.0) * step
    gx, gy = np.meshgrid(g, g)
    pos = np.stack([gx.ravel(), gy.ravel()], axis=-1) + rng.uniform(-0.5, 0.5, (n_side ** 2, 2))
    probe = make_probe(n, model.probe_scale, rng)
    patches = extract_patches(obj[None], pos[None], n)[0]            # (M, N, N)
    amp = far_field_amplitude(probe * patches)
    if poisson:
        intensity = amp ** 2
        lam = intensity * (nphotons / float(np.mean(np.sum(intensity, axis=(-2, -1)))))
        amp = np.sqrt(rng.poisson(lam))
    centre = side // 2
    return RawData(amp.astype(np.float32), probe, pos[:, 0] + centre, pos[:, 1] + centre,
                   object_guess=obj)


def small_dataset(training: TrainingConfig, seed: int, n_side: int = 4) -> GroupedData:
    """:func:`simulate_scan` grouped by :func:`ptycho.data.group_data` with ``training``'s
    model, nphotons, n_groups, neighbor_count and ``seed``."""
    rng = np.random.default_rng([seed, 1000])
    raw = simulate_scan(training.model, rng, n_side=n_side, nphotons=training.nphotons)
    return group_data(raw, training.model, training.nphotons, n_groups=training.n_groups,
                      neighbor_count=training.neighbor_count, seed=seed)
