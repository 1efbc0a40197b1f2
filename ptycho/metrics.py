"""Image-quality metrics of a reconstruction against a ground truth (numpy + scipy.ndimage).

* :func:`mae`, :func:`mse`; :func:`psnr` with peak = the data range of the *reference*
  (``max - min`` of the ground truth), in dB, ``inf`` for identical images.
* :func:`ssim`: Wang et al. (2004) with a Gaussian window of 11 taps, sigma 1.5, K1 = 0.01,
  K2 = 0.03, L = the reference's data range; the mean over the image minus a 5-pixel border.
* :func:`frc`: Fourier ring correlation curve (frequencies in cycles per pixel, 0 to 0.5), and
  :func:`frc_resolution` where it first drops below a threshold (0.5, or 1/7 = 0.143); ``None``
  ("not resolved") when it is below the threshold from the first ring on, so a resolution is
  never coarser than the image.
* :func:`metric_region`: the box reconstructions are scored over, the pixels whose coverage
  reaches :data:`METRIC_COVERAGE_THRESHOLD` of the maximum; :func:`scanned_area`, the pixels
  figures show (those, with the holes inside the scan filled).
* Alignment before comparing: :func:`align_phase` removes a constant phase offset and
  optionally a fitted phase plane (ramp); :func:`align_amplitude` applies the least-squares
  scale. :func:`compare_objects` does both and computes every metric for amplitude and phase.

Units: amplitudes are dimensionless transmission, phases radians, positions pixels.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import scipy.ndimage

#: SSIM constants and window (Wang et al. 2004).
SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WIN = 0.01, 0.03, 1.5, 11
#: The two usual FRC thresholds.
FRC_THRESHOLDS = {"frc50": 0.5, "frc17": 1.0 / 7.0}
#: What summaries print for an FRC resolution of ``inf`` pixels (see :func:`frc_resolution`).
NOT_RESOLVED = "not resolved"
#: A pixel is scored when its coverage (the summed stitching weight, i.e. the probe intensity
#: summed over the scan) reaches this fraction of the maximum coverage. Pixels lit only by the
#: tails of the probe (1e-7 of the maximum for a defocused probe) carry no information about
#: the object; at 0.1 a pixel must have seen about a tenth of the best-lit pixel's light.
METRIC_COVERAGE_THRESHOLD = 0.1
#: Smallest scored box (pixels per side): the SSIM window.
MIN_METRIC_REGION = 11

RegionLike = Union[None, Sequence[int], tuple]


def _pair(a: Any, b: Any, what: str = "images", real: bool = True) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what} must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"{what} are empty")
    for name, x in (("first", a), ("second", b)):
        if x.dtype.kind not in "biufc" or (real and x.dtype.kind == "c"):
            kind = "real numeric" if real else "numeric"
            raise ValueError(f"{what}: the {name} array must be {kind}, got dtype {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{what}: the {name} array holds non-finite values (NaN or Inf)")
    dt = np.complex128 if (a.dtype.kind == "c" or b.dtype.kind == "c") else np.float64
    return a.astype(dt), b.astype(dt)


def mae(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute error ``mean |image - reference|`` (units of the images).

    >>> mae(np.array([1.0, 2.0]), np.array([1.0, 4.0]))
    1.0
    """
    a, b = _pair(image, reference, real=False)
    return float(np.mean(np.abs(a - b)))


def mse(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean squared error ``mean |image - reference|^2`` (units of the images squared).

    >>> mse(np.array([1.0, 2.0]), np.array([1.0, 4.0]))
    2.0
    """
    a, b = _pair(image, reference, real=False)
    return float(np.mean(np.abs(a - b) ** 2))


def data_range(reference: np.ndarray) -> float:
    """``max - min`` of a real reference image: the PSNR peak and the SSIM ``L``.

    >>> data_range(np.array([[0.5, 1.0], [0.75, 0.6]]))
    0.5
    """
    ref = np.asarray(reference, dtype=np.float64)
    return float(ref.max() - ref.min())


def _range(reference: np.ndarray, given: float | None) -> float:
    rng = data_range(reference) if given is None else float(given)
    if not (rng > 0 and math.isfinite(rng)):
        raise ValueError(f"data range must be finite and > 0, got {rng} (a constant reference "
                         "has no data range: pass data_range explicitly)")
    return rng


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(L^2 / mse)``, ``L`` the reference's range.

    ``inf`` for identical images.

    >>> round(psnr(np.array([0.0, 1.0, 0.5]), np.array([0.0, 1.0, 0.6])), 3)
    24.771
    """
    a, b = _pair(image, reference)
    rng = _range(b, data_range)
    err = float(np.mean((a - b) ** 2))
    return math.inf if err == 0 else 10.0 * math.log10(rng * rng / err)


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity (mean SSIM) of two real 2-D images, both at least 11 x 11.

    Local means, variances and covariance are Gaussian-weighted (sigma 1.5, truncated to 11
    taps, ``reflect`` borders); ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L`` the data
    range of the reference; the SSIM map is averaged after removing a 5-pixel border.
    1.0 for identical images.

    >>> img = np.random.default_rng(0).random((16, 16))
    >>> ssim(img, img), round(ssim(img, img + 0.5), 2) < 1.0
    (1.0, True)
    """
    a, b = _pair(image, reference)
    if a.ndim != 2:
        raise ValueError(f"ssim needs 2-D images, got shape {a.shape}")
    if min(a.shape) < SSIM_WIN:
        raise ValueError(f"ssim needs images of at least {SSIM_WIN} x {SSIM_WIN} pixels, "
                         f"got {a.shape}")
    rng = _range(b, data_range)
    c1, c2 = (SSIM_K1 * rng) ** 2, (SSIM_K2 * rng) ** 2
    radius = (SSIM_WIN - 1) // 2
    truncate = radius / SSIM_SIGMA

    def blur(x: np.ndarray) -> np.ndarray:
        return scipy.ndimage.gaussian_filter(x, SSIM_SIGMA, truncate=truncate, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
         / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)))
    inner = s[radius:-radius, radius:-radius]
    value = float(inner.mean())
    # identical inputs give exactly 1 up to rounding; report it as such
    return 1.0 if np.array_equal(a, b) else value


def frc(image: np.ndarray, reference: np.ndarray, apodize: bool = False
        ) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two 2-D images (real or complex) of the same shape.

    Returns ``(freq, curve)``: ring frequencies in cycles per pixel, ``k / n`` for
    ``k = 0 .. n // 2`` with ``n = min(H, W)``, and
    ``FRC(k) = Re sum F1 conj(F2) / sqrt(sum |F1|^2 sum |F2|^2)`` over the pixels of ring k.
    ``apodize`` multiplies both images by a 2-D Hann window first (suppresses edge effects).

    >>> img = np.random.default_rng(0).random((32, 32))
    >>> f, c = frc(img, img)
    >>> f[-1], bool(np.allclose(c, 1.0))
    (np.float64(0.5), True)
    """
    a, b = _pair(image, reference, real=False)
    if a.ndim != 2:
        raise ValueError(f"frc needs 2-D images, got shape {a.shape}")
    h, w = a.shape
    if min(h, w) < 2:
        raise ValueError(f"frc needs images of at least 2 x 2 pixels, got {a.shape}")
    if apodize:
        win = np.outer(np.hanning(h), np.hanning(w))
        a, b = a * win, b * win
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    n = min(h, w)
    r = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    ring = np.rint(r * n).astype(np.int64).ravel()
    nrings = n // 2 + 1
    keep = ring < nrings
    ring = ring[keep]

    def ring_sum(v: np.ndarray) -> np.ndarray:
        return np.bincount(ring, weights=v.ravel()[keep], minlength=nrings)

    num = ring_sum(np.real(fa * np.conj(fb)))
    den = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.arange(nrings) / n, curve


def frc_resolution(freq: np.ndarray, curve: np.ndarray, threshold: float) -> Optional[float]:
    """First frequency (cycles/pixel) at which ``curve`` falls below ``threshold``.

    Linear interpolation between the ring before and the first ring below; the last
    frequency (Nyquist, 0.5) if it never does. The resolution in pixels is ``1 / freq``.
    The zero-frequency ring (index 0) is never a crossing: when the curve is already below
    the threshold at the first ring (index 1, one period across the image) nothing is
    resolved and the result is ``None``, never a resolution coarser than the image.

    >>> frc_resolution(np.array([0.0, 0.1, 0.2, 0.3]), np.array([1.0, 0.8, 0.4, 0.1]), 0.5)
    0.175
    >>> frc_resolution(np.array([0.0, 0.1, 0.2, 0.3]), np.array([1.0, 0.3, 0.2, 0.1]), 0.5) is None
    True
    """
    freq = np.asarray(freq, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    if freq.shape != curve.shape or freq.ndim != 1 or freq.size < 2:
        raise ValueError(f"freq and curve must be 1-D of equal length >= 2, got {freq.shape} "
                         f"and {curve.shape}")
    if curve[1] < threshold:
        return None
    below = np.flatnonzero(curve[2:] < threshold)
    if below.size == 0:
        return float(freq[-1])
    k = int(below[0]) + 2
    c0, c1 = curve[k - 1], curve[k]
    t = 0.0 if c0 == c1 else (c0 - threshold) / (c0 - c1)
    t = min(max(t, 0.0), 1.0)
    return float(round(freq[k - 1] + t * (freq[k] - freq[k - 1]), 12))


def describe_resolution(pixels: Optional[float], digits: int = 3) -> str:
    """A resolution in pixels for people: ``"4.2 px"``, or :data:`NOT_RESOLVED` for ``inf``/None.

    >>> describe_resolution(4.2123), describe_resolution(math.inf), describe_resolution(None)
    ('4.21 px', 'not resolved', 'not resolved')
    """
    if pixels is None or (isinstance(pixels, str) and pixels == "inf"):
        return NOT_RESOLVED
    value = float(pixels)
    return NOT_RESOLVED if math.isinf(value) else f"{value:.{digits}g} px"


def metric_region(coverage: np.ndarray, threshold: float = METRIC_COVERAGE_THRESHOLD,
                  min_side: int = MIN_METRIC_REGION) -> Optional[tuple[int, int, int, int]]:
    """``(row0, row1, col0, col1)``: the box over which a reconstruction is scored.

    The bounding box of the pixels whose ``coverage`` (the stitching weight summed over the
    scan, :attr:`ptycho.workflows.Reconstruction.coverage`) is at least ``threshold`` times
    its maximum (default :data:`METRIC_COVERAGE_THRESHOLD`). ``None`` when nothing is
    covered or the box is smaller than ``min_side`` pixels on a side (default the SSIM
    window). For a scan with holes the box may hold some pixels below the threshold.

    >>> cov = np.zeros((20, 30)); cov[2:18, 3:25] = 1.0; cov[0, :] = 1e-7   # a faint tail
    >>> metric_region(cov)
    (2, 18, 3, 25)
    """
    lit = metric_mask(coverage, threshold)
    if not lit.any():
        return None
    rows = np.flatnonzero(lit.any(axis=1))
    cols = np.flatnonzero(lit.any(axis=0))
    box = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if min(box[1] - box[0], box[3] - box[2]) < min_side:
        return None
    return box


def metric_mask(coverage: np.ndarray, threshold: float = METRIC_COVERAGE_THRESHOLD) -> np.ndarray:
    """Boolean mask of the pixels whose coverage is at least ``threshold`` of the maximum.

    >>> metric_mask(np.array([[0.0, 1e-7, 0.5, 1.0]])).tolist()
    [[False, False, True, True]]
    """
    cov = np.asarray(coverage, dtype=np.float64)
    if cov.ndim != 2:
        raise ValueError(f"coverage must be 2-D, got shape {cov.shape}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1] (a fraction of the maximum coverage), "
                         f"got {threshold}")
    top = float(cov.max()) if cov.size else 0.0
    if not (top > 0 and math.isfinite(top)):
        return np.zeros(cov.shape, dtype=bool)
    return cov >= threshold * top


def scanned_area(coverage: np.ndarray, threshold: float = METRIC_COVERAGE_THRESHOLD) -> np.ndarray:
    """:func:`metric_mask` with its enclosed holes filled: the area a scan covers, as figures
    show it. A structured probe's dark speckles, repeated at the same offsets by a raster
    scan, leave isolated pixels inside the scan below the threshold; they lie inside the
    scored box (:func:`metric_region`) and are shown, while the faint tails outside it are not.

    >>> cov = np.ones((5, 5)); cov[2, 2] = 0.0; cov[0, :] = 1e-7
    >>> scanned_area(cov).astype(int).tolist()[:3]
    [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    """
    return scipy.ndimage.binary_fill_holes(metric_mask(coverage, threshold))


# -- alignment ---------------------------------------------------------------------------------

def _wrap(p: np.ndarray) -> np.ndarray:
    """Wrap radians into [-pi, pi)."""
    return (p + np.pi) % (2 * np.pi) - np.pi


def _mask(mask: np.ndarray | None, shape: tuple) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise ValueError(f"mask must have shape {shape}, got {m.shape}")
    if not m.any():
        raise ValueError("mask selects no pixels")
    return m


def fit_phase_ramp(phase: np.ndarray, reference: np.ndarray, plane: bool = False,
                   mask: np.ndarray | None = None) -> tuple[float, float, float]:
    """Fit ``phase - reference`` (modulo 2 pi) by ``c + gx * x + gy * y``; return (c, gx, gy).

    ``x`` is the column and ``y`` the row index in pixels, so ``c`` is the offset at pixel
    (0, 0) in radians and ``gx``, ``gy`` are in radians per pixel (zero unless ``plane``).
    The offset is the circular mean of the difference; a plane is found from the peak of the
    Fourier transform of ``exp(1j * difference)`` and refined by least squares on the wrapped
    residual, so ramps that wrap many times are found too. ``mask`` restricts the fit.

    >>> yy, xx = np.mgrid[0:32, 0:32]
    >>> ref = np.sin(xx / 5.0)
    >>> c, gx, gy = fit_phase_ramp(ref + 1.0 + 0.3 * xx - 0.2 * yy, ref, plane=True)
    >>> [round(v, 6) for v in (c, gx, gy)]
    [1.0, 0.3, -0.2]
    """
    p, r = _pair(phase, reference, "phase and reference")
    if p.ndim != 2:
        raise ValueError(f"phases must be 2-D, got shape {p.shape}")
    m = _mask(mask, p.shape)
    d = _wrap(p - r)
    yy, xx = np.mgrid[0:p.shape[0], 0:p.shape[1]].astype(np.float64)
    gx = gy = 0.0
    if plane:
        # coarse ramp: peak of the (zero-padded) spectrum of exp(i d) over the mask
        h, w = p.shape
        ph, pw = 4 * h, 4 * w
        spec = np.abs(np.fft.fft2(np.where(m, np.exp(1j * d), 0), s=(ph, pw)))
        ky, kx = np.unravel_index(int(np.argmax(spec)), spec.shape)
        gy = 2 * np.pi * np.fft.fftfreq(ph)[ky]
        gx = 2 * np.pi * np.fft.fftfreq(pw)[kx]
        d = _wrap(d - gx * xx - gy * yy)
    c0 = float(np.angle(np.mean(np.exp(1j * d[m]))))
    res = _wrap(d - c0)
    if plane:
        design = np.stack([np.ones(int(m.sum())), xx[m], yy[m]], axis=-1)
        (dc, dgx, dgy), *_ = np.linalg.lstsq(design, res[m], rcond=None)
        return float(_wrap(np.array(c0 + dc))), float(gx + dgx), float(gy + dgy)
    return float(c0), 0.0, 0.0


def align_phase(phase: np.ndarray, reference: np.ndarray, plane: bool = False,
                mask: np.ndarray | None = None) -> np.ndarray:
    """``phase`` with the fitted offset (and plane) removed, unwrapped onto ``reference``.

    Returns ``reference + wrap(phase - ramp - reference)``: the remaining difference to the
    reference lies in [-pi, pi), so phase metrics measure real errors, not 2 pi jumps.

    >>> ref = np.linspace(-1, 1, 16).reshape(4, 4)
    >>> bool(np.allclose(align_phase(ref + 2.5, ref), ref))
    True
    """
    c, gx, gy = fit_phase_ramp(phase, reference, plane=plane, mask=mask)
    p = np.asarray(phase, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    yy, xx = np.mgrid[0:p.shape[0], 0:p.shape[1]]
    return r + _wrap(p - (c + gx * xx + gy * yy) - r)


def amplitude_scale(amplitude: np.ndarray, reference: np.ndarray,
                    mask: np.ndarray | None = None) -> float:
    """Least-squares scale ``s = sum(a g) / sum(a a)`` minimising ``|s a - g|^2``.

    >>> amplitude_scale(np.array([1.0, 2.0]), np.array([3.0, 6.0]))
    3.0
    """
    a, g = _pair(amplitude, reference, "amplitude and reference")
    m = _mask(mask, a.shape)
    den = float(np.sum(a[m] * a[m]))
    if den == 0:
        raise ValueError("cannot scale an all-zero amplitude")
    return float(np.sum(a[m] * g[m]) / den)


def align_amplitude(amplitude: np.ndarray, reference: np.ndarray,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """``amplitude`` times its least-squares scale to ``reference`` (:func:`amplitude_scale`).

    >>> align_amplitude(np.array([1.0, 2.0]), np.array([2.0, 4.0])).tolist()
    [2.0, 4.0]
    """
    return amplitude_scale(amplitude, reference, mask) * np.asarray(amplitude, dtype=np.float64)


# -- all together ------------------------------------------------------------------------------

def _region(region: RegionLike, shape: tuple[int, int]) -> tuple[slice, slice]:
    if region is None:
        return slice(None), slice(None)
    if (isinstance(region, tuple) and len(region) == 2
            and all(isinstance(s, slice) for s in region)):
        rows, cols = region
    else:
        try:
            r0, r1, c0, c1 = (int(v) for v in region)
        except (TypeError, ValueError):
            raise ValueError("region must be None, a pair of slices, or (row0, row1, col0, "
                             f"col1), got {region!r}") from None
        rows, cols = slice(r0, r1), slice(c0, c1)
    if len(range(*rows.indices(shape[0]))) == 0 or len(range(*cols.indices(shape[1]))) == 0:
        raise ValueError(f"region {region!r} selects no pixels of the {shape} objects")
    return rows, cols


def _scores(image: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    rng = data_range(reference)
    out = {"mae": mae(image, reference), "mse": mse(image, reference)}
    if rng > 1e-12 * max(1.0, float(np.abs(reference).max())):
        out["psnr"] = psnr(image, reference)
        out["ssim"] = ssim(image, reference)
    else:  # a constant reference has no data range: PSNR / SSIM are undefined
        same = bool(np.array_equal(image, reference))
        out["psnr"] = math.inf if same else math.nan
        out["ssim"] = 1.0 if same else math.nan
    freq, curve = frc(image, reference)
    for name, thr in FRC_THRESHOLDS.items():
        f = frc_resolution(freq, curve, thr)
        # not resolved: 0 cycles/px and inf px (plain numbers, so JSON and parity keep working)
        out[f"{name}_cycles_per_px"] = 0.0 if f is None else f
        out[f"{name}_px"] = math.inf if f is None else 1.0 / f
    return out


def compare_objects(reconstruction: np.ndarray, ground_truth: np.ndarray,
                    region: RegionLike = None, phase_plane: bool = False,
                    scale_amplitude: bool = True) -> dict[str, Any]:
    """Every metric of a complex reconstruction against the ground truth, after alignment.

    ``region``: a pair of slices or ``(row0, row1, col0, col1)`` (e.g. the scanned area),
    at least 11 x 11 pixels; default the whole object. Within it the amplitude is scaled by
    its least-squares factor (``scale_amplitude``) and the phase is shifted by the fitted
    offset (and plane with ``phase_plane``); then for ``"amplitude"`` and ``"phase"`` each:
    ``mae``, ``mse``, ``psnr`` (dB, peak = the ground truth's data range), ``ssim``, and the
    FRC crossings ``frc50_cycles_per_px``, ``frc50_px`` (resolution = 1 / frequency, pixels)
    and likewise ``frc17_*`` (threshold 1/7); "not resolved" (the FRC below the threshold
    from the first ring on, :func:`frc_resolution`) is ``0.0`` cycles/px and ``inf`` px. Also ``amplitude_scale``, ``phase_offset``
    (radians at the region's pixel (0, 0)) and ``phase_ramp`` (gx, gy) radians per pixel.

    >>> t = np.linspace(0, 1, 256).reshape(16, 16)
    >>> gt = (0.5 + 0.5 * t) * np.exp(1j * t)
    >>> m = compare_objects(2.0 * gt * np.exp(0.4j), gt)
    >>> m["amplitude"]["psnr"] > 200, round(m["amplitude_scale"], 6), round(m["phase_offset"], 6)
    (True, 0.5, 0.4)
    """
    rec, gt = _pair(reconstruction, ground_truth, "reconstruction and ground truth",
                    real=False)
    if rec.ndim != 2:
        raise ValueError(f"objects must be 2-D, got shape {rec.shape}")
    rows, cols = _region(region, rec.shape)
    rec, gt = rec[rows, cols], gt[rows, cols]
    amp, amp_gt = np.abs(rec), np.abs(gt)
    scale = amplitude_scale(amp, amp_gt) if scale_amplitude else 1.0
    ph_gt = np.angle(gt)
    c, gx, gy = fit_phase_ramp(np.angle(rec), ph_gt, plane=phase_plane)
    yy, xx = np.mgrid[0:rec.shape[0], 0:rec.shape[1]]
    phase = ph_gt + _wrap(np.angle(rec) - (c + gx * xx + gy * yy) - ph_gt)
    return {
        "amplitude": _scores(scale * amp, amp_gt),
        "phase": _scores(phase, ph_gt),
        "amplitude_scale": scale,
        "phase_offset": c,
        "phase_ramp": (gx, gy),
    }
