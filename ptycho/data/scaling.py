"""Every scale factor of the library, each computed in exactly one function here.

Units:

* raw diffraction ``A``: amplitudes, sqrt(photon counts) as measured (or simulated);
* normalised amplitude ``A * s_norm`` with :func:`normalisation_factor`: dimensionless, the
  mean total intensity of a pattern is ``(N/2)**2`` (bad pixels of a mask counted as holding
  the mean measured intensity, see :func:`normalisation_factor`);
* photon-unit amplitude ``A * s_norm * s_int`` with :func:`intensity_scale`: sqrt(counts),
  the mean total count of a pattern is ``nphotons``;
* the model's log intensity scale starts at :func:`initial_log_intensity_scale`
  ``= log(s_int)`` (optionally trainable afterwards);
* the probe from :func:`normalise_probe` has ``sum |P|^2 = (probe_scale * N / 2)**2``.

>>> a = np.ones((4, 16, 16), np.float32)
>>> s = normalisation_factor(a)
>>> float(np.mean(np.sum((a * s) ** 2, axis=(-2, -1))))
64.0
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ptycho.errors import ConfigError, DataError

#: Patterns summed per step in :func:`normalisation_factor`.
_CHUNK = 1024


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"N must be a positive int (pattern side in pixels), got {n!r}")
    return int(n)


def normalisation_factor(diffraction: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Dataset normalisation ``s_norm = sqrt((N/2)**2 / mean_m sum_px A**2)`` (dimensionless).

    ``diffraction``: (..., N, N) amplitudes (sqrt of counts); the mean runs over every
    leading axis (all patterns). After multiplying by ``s_norm`` the mean total intensity
    ``sum_px (s_norm A)**2`` of a pattern is ``(N/2)**2``. Computed in float64.

    ``mask`` (True = measured; None = every pixel): one (N, N) mask shared by every pattern,
    or one per pattern (the shape of ``diffraction``). Bad pixels are left out, and the mean
    total intensity of a pattern is counted as ``N**2`` times the mean intensity of the
    measured pixels, pooled over all patterns: a bad pixel counts as if it held the average
    measured intensity. Without bad pixels this is exactly the unmasked mean total, and the
    pooling keeps a pattern with few measured pixels from weighing more than its share.

    >>> normalisation_factor(np.full((2, 16, 16), 2.0))
    0.25
    >>> a = np.full((2, 16, 16), 2.0); a[:, 0, 0] = 1e6           # a hot pixel ...
    >>> m = np.ones((16, 16), bool); m[0, 0] = False              # ... masked out
    >>> normalisation_factor(a, m)
    0.25
    """
    a = np.asarray(diffraction)
    if a.ndim < 3 or a.shape[-1] != a.shape[-2] or a.shape[-1] == 0:
        raise DataError(f"normalisation_factor: expected diffraction (..., N, N) with at least "
                        f"one pattern axis, got shape {tuple(a.shape)}")
    if a.dtype.kind not in "fiu":
        raise DataError(f"normalisation_factor: expected real amplitudes, got dtype {a.dtype}")
    n = a.shape[-1]
    flat = a.reshape(-1, n, n)
    if flat.shape[0] == 0:
        raise DataError(f"normalisation_factor: no patterns (diffraction shape {tuple(a.shape)})")
    shared, per_pattern = _split_mask(mask, a.shape)
    # in chunks of patterns, so a memory-mapped scan is not copied to float64 all at once
    total = 0.0
    measured = 0
    for i in range(0, flat.shape[0], _CHUNK):
        sq = np.square(flat[i:i + _CHUNK], dtype=np.float64)
        if per_pattern is not None:
            keep = per_pattern[i:i + _CHUNK]
            total += float(np.sum(sq, where=keep))
            measured += int(np.count_nonzero(keep))
        elif shared is not None:
            total += float(np.sum(sq, where=shared))
            measured += int(np.count_nonzero(shared)) * sq.shape[0]
        else:
            total += float(np.sum(sq))
            measured += sq.size
    if measured == 0:
        raise DataError("normalisation_factor: the mask excludes every pixel; expected at "
                        "least one measured pixel")
    mean_total = total / measured * (n * n)
    if not math.isfinite(mean_total):
        raise DataError("normalisation_factor: diffraction holds NaN or Inf values")
    if mean_total <= 0.0:
        raise DataError("normalisation_factor: every diffraction pattern is zero; expected a "
                        "positive mean total intensity")
    return math.sqrt((n / 2.0) ** 2 / mean_total)


def _split_mask(mask: Optional[np.ndarray], shape: tuple) -> tuple:
    """(shared (N, N) bool or None, per-pattern (P, N, N) bool or None) for diffraction ``shape``."""
    if mask is None:
        return None, None
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise DataError(f"normalisation_factor: mask must be bool (True = measured), got dtype "
                        f"{m.dtype}")
    n = shape[-1]
    if m.shape == (n, n):
        return m.astype(bool, copy=False), None
    if m.shape == tuple(shape):
        return None, m.reshape(-1, n, n).astype(bool, copy=False)
    raise DataError(f"normalisation_factor: mask must be ({n}, {n}) (shared) or "
                    f"{tuple(shape)} (per pattern), got {tuple(m.shape)}")


def intensity_scale(nphotons: float, n: int) -> float:
    """Intensity scale ``s_int = sqrt(nphotons) / (N/2)`` (sqrt(counts) per normalised unit).

    A normalised amplitude times ``s_int`` is an amplitude in photon units: the mean total
    count of a pattern becomes ``nphotons``.

    >>> intensity_scale(1e4, 20)
    10.0
    """
    n = _check_n(n)
    if isinstance(nphotons, bool) or not isinstance(nphotons, (int, float, np.number)):
        raise ConfigError(f"nphotons must be a positive number, got {nphotons!r}")
    if not math.isfinite(float(nphotons)) or float(nphotons) <= 0:
        raise ConfigError(f"nphotons must be a finite number > 0, got {nphotons!r}")
    return math.sqrt(float(nphotons)) / (n / 2.0)


def initial_log_intensity_scale(nphotons: float, n: int) -> float:
    """Starting value of the model's ``log_intensity_scale``: ``log(intensity_scale(...))``.

    >>> round(initial_log_intensity_scale(1e4, 20), 6) == round(math.log(10.0), 6)
    True
    """
    return math.log(intensity_scale(nphotons, n))


def normalise_probe(probe: np.ndarray, probe_scale: float) -> np.ndarray:
    """``P * probe_scale * (N/2) / sqrt(sum |P|**2)`` as complex64 (dimensionless).

    Afterwards ``sum |P|**2 = (probe_scale * N / 2)**2``. A real probe is accepted and cast.
    Raises :class:`DataError` for a non-square, non-finite or all-zero probe.

    >>> p = normalise_probe(np.ones((16, 16)), 2.0)
    >>> p.dtype, round(float(np.sum(np.abs(p) ** 2)), 3)
    (dtype('complex64'), 256.0)
    """
    p = np.asarray(probe)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] == 0:
        raise DataError(f"normalise_probe: expected a square (N, N) probe, got shape "
                        f"{tuple(p.shape)}")
    if p.dtype.kind not in "fiuc":
        raise DataError(f"normalise_probe: expected a numeric probe, got dtype {p.dtype}")
    if isinstance(probe_scale, bool) or not isinstance(probe_scale, (int, float, np.number)) \
            or not math.isfinite(float(probe_scale)) or float(probe_scale) <= 0:
        raise ConfigError(f"probe_scale must be a finite number > 0, got {probe_scale!r}")
    p = p.astype(np.complex128)
    power = float(np.sum(np.abs(p) ** 2))
    if not math.isfinite(power):
        raise DataError("normalise_probe: the probe holds NaN or Inf values")
    if power == 0.0:
        raise DataError("normalise_probe: the probe is zero everywhere (sum |P|^2 = 0); "
                        "cannot normalise it")
    n = p.shape[0]
    return (p * (float(probe_scale) * (n / 2.0) / math.sqrt(power))).astype(np.complex64)
