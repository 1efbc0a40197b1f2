"""Synthetic probes: (N, N) complex64 illuminations centred on pixel (N // 2, N // 2).

Amplitudes are dimensionless (peak 1 for the disk and the Gaussian); the simulation
normalises intensities to a photon count, so a probe's overall scale does not matter there.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

#: Probe kinds accepted by :func:`make_probe`.
PROBE_KINDS = ("disk", "gaussian", "defocus", "diffuser")


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"probe side N must be an int >= 2, got {n!r}")
    return int(n)


def _positive(name: str, value: float) -> float:
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _radius_grid(n: int) -> np.ndarray:
    """(N, N) distance in pixels from pixel (N // 2, N // 2)."""
    r = np.arange(n) - n // 2
    return np.hypot(r[:, None], r[None, :])


def disk_probe(n: int, radius: float | None = None, edge: float = 1.0) -> np.ndarray:
    """A flat disk aperture of ``radius`` pixels (default N/4), amplitude 1 inside, 0 outside.

    ``edge`` (pixels) softens the rim with a linear ramp of that width centred on the radius
    (0 gives a hard edge). Phase is zero.

    >>> p = disk_probe(16, radius=4, edge=0)
    >>> p.dtype, float(abs(p[8, 8])), float(abs(p[8, 13])), int((abs(p) > 0).sum())
    (dtype('complex64'), 1.0, 0.0, 49)
    """
    n = _check_n(n)
    radius = _positive("radius", n / 4 if radius is None else radius)
    edge = float(edge)
    if not (edge >= 0 and math.isfinite(edge)):
        raise ValueError(f"edge must be a finite number >= 0 pixels, got {edge!r}")
    r = _radius_grid(n)
    if edge == 0:
        amp = (r <= radius).astype(np.float64)
    else:
        amp = np.clip((radius - r) / edge + 0.5, 0.0, 1.0)
    return amp.astype(np.complex64)


def gaussian_probe(n: int, sigma: float | None = None) -> np.ndarray:
    """A Gaussian beam ``exp(-r^2 / (2 sigma^2))``, ``sigma`` in pixels (default N/8), flat phase.

    >>> p = gaussian_probe(32, sigma=3.0)
    >>> float(abs(p[16, 16])), round(float(abs(p[16, 19])), 4)
    (1.0, 0.6065)
    """
    n = _check_n(n)
    sigma = _positive("sigma", n / 8 if sigma is None else sigma)
    r = _radius_grid(n)
    return np.exp(-(r ** 2) / (2 * sigma ** 2)).astype(np.complex64)


def fresnel_propagate(field: np.ndarray, distance: float) -> np.ndarray:
    """Propagate a 2-D field by a Fresnel transfer function (angular spectrum, paraxial).

    ``distance`` is the dimensionless ``lambda * z / dx**2`` (pixels squared); the transfer
    function is ``H(u, v) = exp(-1j * pi * distance * (u**2 + v**2))`` with ``u, v`` in cycles
    per pixel. Unitary: the total intensity is kept. The field is periodic on its grid; pad it
    to avoid wrap-around.

    >>> f = disk_probe(32, 6)
    >>> g = fresnel_propagate(f, 20.0)
    >>> bool(np.isclose((abs(g) ** 2).sum(), (abs(f) ** 2).sum(), rtol=1e-5))
    True
    """
    field = np.asarray(field, dtype=np.complex128)
    if field.ndim != 2:
        raise ValueError(f"field must be 2-D, got shape {field.shape}")
    d = float(distance)
    if not math.isfinite(d):
        raise ValueError(f"distance must be finite, got {distance!r}")
    u = scipy.fft.fftfreq(field.shape[0])[:, None]
    v = scipy.fft.fftfreq(field.shape[1])[None, :]
    h = np.exp(-1j * math.pi * d * (u ** 2 + v ** 2))
    return scipy.fft.ifft2(scipy.fft.fft2(field) * h)


def _aperture_grid(n: int, radius: float | None, distance: float | None, pad: int
                   ) -> tuple[int, float, float, np.ndarray]:
    """The checked ``(n, radius, distance, aperture)`` of a propagated-aperture probe: the disk
    of ``radius`` px (default N/8) on a grid ``pad`` times larger, float64, and the distance
    (default ``radius**2 / 4``)."""
    n = _check_n(n)
    radius = _positive("radius", n / 8 if radius is None else radius)
    distance = radius ** 2 / 4 if distance is None else float(distance)
    if not math.isfinite(distance):
        raise ValueError(f"distance must be finite, got {distance!r}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 1:
        raise ValueError(f"pad must be an int >= 1, got {pad!r}")
    return n, radius, distance, disk_probe(n * int(pad), radius, edge=1.0).real.astype(np.float64)


def _propagated_centre(field: np.ndarray, distance: float, n: int) -> np.ndarray:
    """``field`` (on the padded grid) propagated by ``distance``, its central N x N, complex64."""
    out = fresnel_propagate(field, distance)
    lo = field.shape[0] // 2 - n // 2
    return out[lo:lo + n, lo:lo + n].astype(np.complex64)


def defocused_probe(n: int, radius: float | None = None, distance: float | None = None,
                    pad: int = 2) -> np.ndarray:
    """A disk aperture of ``radius`` px (default N/8) propagated by ``distance`` (Fresnel).

    ``distance`` is ``lambda * z / dx**2`` in pixels squared (default ``radius**2 / 4``, i.e.
    Fresnel number ``radius**2 / distance = 4``: a disk with Fresnel rings and a curved phase). The propagation runs
    on a grid ``pad`` times larger (no wrap-around) and the central N x N is returned.

    >>> p = defocused_probe(32)
    >>> p.shape, p.dtype, bool(np.ptp(np.angle(p[abs(p) > 0.1])) > 0.1)
    ((32, 32), dtype('complex64'), True)
    """
    n, _, distance, aperture = _aperture_grid(n, radius, distance, pad)
    return _propagated_centre(aperture, distance, n)


def diffuser_probe(n: int, radius: float | None = None, distance: float | None = None,
                   strength: float = math.pi, correlation: float = 1.5, seed: int = 0,
                   pad: int = 2) -> np.ndarray:
    """The aperture of :func:`defocused_probe` behind a random phase screen (a diffuser),
    propagated the same way.

    The screen is white noise smoothed by a Gaussian of ``correlation`` px, scaled to a standard
    deviation of ``strength`` radians over the aperture, its mean tilt removed (a tilt only
    moves the probe off centre), drawn from ``seed``. Unlike the disk, Gaussian and defocused
    probes, which equal themselves turned by 180 degrees, this one is not centro-symmetric:
    with a symmetric probe every single pattern has an exact twin object (flipped, conjugated,
    ``-2 arg P`` added to its phase) with the same far field, which no one-pattern method can
    tell apart (``tests/test_backprop_estimate.py``); structured illumination removes it.

    >>> p = diffuser_probe(32)
    >>> p.shape, p.dtype, bool(np.abs(p - np.roll(p[::-1, ::-1], 1, (0, 1))).max() > 0.1)
    ((32, 32), dtype('complex64'), True)
    """
    import scipy.ndimage

    n, _, distance, aperture = _aperture_grid(n, radius, distance, pad)
    strength = float(strength)
    if not (strength >= 0 and math.isfinite(strength)):
        raise ValueError(f"strength must be a finite number >= 0 radians, got {strength!r}")
    correlation = _positive("correlation", correlation)
    big = aperture.shape[0]
    screen = scipy.ndimage.gaussian_filter(
        np.random.default_rng(seed).standard_normal((big, big)), correlation, mode="wrap")
    inside = aperture > 0
    yy, xx = np.indices((big, big), dtype=np.float64)
    # least-squares plane over the aperture: its tilt would steer the beam off centre
    basis = np.stack([np.ones(inside.sum()), yy[inside], xx[inside]], axis=1)
    plane = np.linalg.lstsq(basis, screen[inside], rcond=None)[0]
    screen = screen - (plane[0] + plane[1] * yy + plane[2] * xx)
    spread = screen[inside].std()
    screen = screen * (strength / spread if spread > 0 else 0.0)
    return _propagated_centre(aperture * np.exp(1j * screen), distance, n)


def make_probe(kind: str, n: int, **kwargs) -> np.ndarray:
    """The probe of ``kind`` in :data:`PROBE_KINDS` with side ``n``; ``kwargs`` go to its maker.

    >>> make_probe("gaussian", 16, sigma=2.0).shape
    (16, 16)
    """
    makers = {"disk": disk_probe, "gaussian": gaussian_probe, "defocus": defocused_probe,
              "diffuser": diffuser_probe}
    if kind not in makers:
        raise ValueError(f"unknown probe kind {kind!r}; expected one of {list(PROBE_KINDS)}")
    return makers[kind](n, **kwargs)
