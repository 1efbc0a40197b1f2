"""Synthetic complex objects for simulation: random lines, Gaussian random fields, any image.

Every generator first builds a real "pattern" in [0, 1] and then maps it to a complex
transmission ``amp * exp(1j * phase)`` with :func:`complex_object`, where
``amp = amp_lo + (amp_hi - amp_lo) * a`` and ``phase = ph_lo + (ph_hi - ph_lo) * p`` for the
amplitude pattern ``a`` and the phase pattern ``p``. Amplitude is dimensionless transmission,
phase is in radians. Objects are (H, W) complex64; positions index them as (row, col).

Random generators take a :class:`numpy.random.Generator` (``np.random.default_rng(seed)``),
never the global numpy state.
"""

from __future__ import annotations

import math
import os
import tokenize
from typing import Sequence, Union

import numpy as np
import scipy.fft
import scipy.ndimage

from ptycho.limits import check_bytes
from ptycho.untrusted import open_regular, read_npy_header

PathLike = Union[str, "os.PathLike[str]"]

#: Default amplitude (transmission) range of a simulated object, dimensionless.
AMPLITUDE_RANGE = (0.5, 1.0)
#: Default phase range of a simulated object, radians.
PHASE_RANGE = (0.0, math.pi / 2)


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"object shape must be a pair (H, W) of ints, got {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"object shape must be positive, got {(h, w)}")
    return h, w


def _check_range(name: str, rng: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {rng!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"{name} must be finite with low <= high, got {(lo, hi)}")
    return lo, hi


def normalise_unit(field: np.ndarray) -> np.ndarray:
    """Rescale a real array linearly onto [0, 1] (min -> 0, max -> 1; constant -> zeros).

    >>> normalise_unit(np.array([2.0, 3.0, 4.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    field = np.asarray(field, dtype=np.float64)
    if field.size == 0:
        raise ValueError("cannot normalise an empty array")
    if not np.all(np.isfinite(field)):
        raise ValueError("the pattern holds non-finite values (NaN or Inf)")
    lo, hi = float(field.min()), float(field.max())
    if hi == lo:
        return np.zeros_like(field)
    return (field - lo) / (hi - lo)


def complex_object(amplitude_pattern: np.ndarray, phase_pattern: np.ndarray | None = None,
                   amplitude_range: Sequence[float] = AMPLITUDE_RANGE,
                   phase_range: Sequence[float] = PHASE_RANGE) -> np.ndarray:
    """Map real patterns in [0, 1] to a complex64 object ``amp * exp(1j * phase)``.

    ``amp = lo + (hi - lo) * amplitude_pattern`` lies in ``amplitude_range`` (transmission,
    dimensionless) and ``phase = lo + (hi - lo) * phase_pattern`` in ``phase_range`` (radians).
    ``phase_pattern`` defaults to ``amplitude_pattern``. Patterns outside [0, 1] are an error.

    >>> o = complex_object(np.array([[0.0, 1.0]]), amplitude_range=(0.5, 1.0), phase_range=(0, 1))
    >>> np.round(np.abs(o), 3).tolist(), np.round(np.angle(o), 3).tolist()
    ([[0.5, 1.0]], [[0.0, 1.0]])
    """
    a = np.asarray(amplitude_pattern, dtype=np.float64)
    p = a if phase_pattern is None else np.asarray(phase_pattern, dtype=np.float64)
    if a.ndim != 2 or p.shape != a.shape:
        raise ValueError(f"patterns must be 2-D and of equal shape, got {a.shape} and {p.shape}")
    for name, arr in (("amplitude_pattern", a), ("phase_pattern", p)):
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{name} must hold finite values in [0, 1]")
    alo, ahi = _check_range("amplitude_range", amplitude_range)
    if alo < 0:
        raise ValueError(f"amplitude_range must be non-negative, got {(alo, ahi)}")
    plo, phi = _check_range("phase_range", phase_range)
    amp = alo + (ahi - alo) * a
    phase = plo + (phi - plo) * p
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def lines_pattern(shape: Sequence[int], rng: np.random.Generator, n_lines: int | None = None,
                  blur: float = 1.0, max_length: float = 64.0) -> np.ndarray:
    """Random straight line segments, blurred by a Gaussian of ``blur`` pixels, scaled to [0, 1].

    Segments have uniform random centres and orientations, lengths uniform in
    ``[2, max_length]`` pixels (capped at the longer side) and weights in [0.5, 1]; crossings
    add up. ``n_lines`` defaults to the number whose total length is 5 % of the area (at
    least 4), so the line density does not depend on the object size.

    >>> p = lines_pattern((32, 48), np.random.default_rng(0))
    >>> p.shape, float(p.min()), float(p.max())
    ((32, 48), 0.0, 1.0)
    """
    h, w = _check_shape(shape)
    if not (max_length >= 2 and math.isfinite(max_length)):
        raise ValueError(f"max_length must be a finite number >= 2 pixels, got {max_length}")
    max_length = max(2.0, min(float(max_length), float(max(h, w))))
    if n_lines is None:
        n_lines = max(4, int(round(0.05 * h * w / ((2.0 + max_length) / 2))))
    if isinstance(n_lines, bool) or not isinstance(n_lines, (int, np.integer)) or n_lines < 1:
        raise ValueError(f"n_lines must be an int >= 1, got {n_lines!r}")
    if not (blur >= 0 and math.isfinite(blur)):
        raise ValueError(f"blur must be a finite number >= 0 pixels, got {blur}")
    cy = rng.uniform(0, h, n_lines)
    cx = rng.uniform(0, w, n_lines)
    theta = rng.uniform(0, math.pi, n_lines)
    length = rng.uniform(2.0, max_length, n_lines)
    weight = rng.uniform(0.5, 1.0, n_lines)
    # rasterise (DDA): one sample per pixel along the major axis, so a segment marks each
    # pixel once and only crossings of different segments add up
    dy, dx = length * np.sin(theta), length * np.cos(theta)
    n_samp = np.ceil(np.maximum(np.abs(dx), np.abs(dy))).astype(np.int64) + 1
    seg = np.repeat(np.arange(n_lines), n_samp)
    start = np.cumsum(n_samp) - n_samp
    t = (np.arange(seg.size) - start[seg]) / (n_samp[seg] - 1) - 0.5      # in [-0.5, 0.5]
    rows = np.rint(cy[seg] + t * dy[seg]).astype(np.int64)
    cols = np.rint(cx[seg] + t * dx[seg]).astype(np.int64)
    pix = rows * w + cols
    # samples run monotonically along the major axis: a repeated pixel can only follow itself
    fresh = np.ones(pix.size, dtype=bool)
    fresh[1:] = (pix[1:] != pix[:-1]) | (seg[1:] != seg[:-1])
    keep = fresh & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    img = np.bincount(pix[keep], weights=weight[seg[keep]],
                      minlength=h * w).reshape(h, w)
    if blur > 0:
        img = scipy.ndimage.gaussian_filter(img, blur, mode="constant")
    return normalise_unit(img)


def gaussian_random_field(shape: Sequence[int], rng: np.random.Generator,
                          correlation_length: float = 4.0) -> np.ndarray:
    """A smooth random field: white noise filtered by a Gaussian of ``correlation_length`` px.

    Computed with one real FFT (fast for large objects), periodic, scaled to [0, 1].

    >>> f = gaussian_random_field((16, 20), np.random.default_rng(1), correlation_length=2.0)
    >>> f.shape, float(f.min()), float(f.max())
    ((16, 20), 0.0, 1.0)
    """
    h, w = _check_shape(shape)
    if not (correlation_length > 0 and math.isfinite(correlation_length)):
        raise ValueError(f"correlation_length must be a finite number > 0 pixels, "
                         f"got {correlation_length}")
    noise = rng.standard_normal((h, w))
    ky = scipy.fft.fftfreq(h)[:, None]
    kx = scipy.fft.rfftfreq(w)[None, :]
    # Fourier transform of a Gaussian of std sigma: exp(-2 pi^2 sigma^2 k^2)
    filt = np.exp(-2.0 * math.pi ** 2 * correlation_length ** 2 * (ky ** 2 + kx ** 2))
    field = scipy.fft.irfft2(scipy.fft.rfft2(noise) * filt, s=(h, w))
    return normalise_unit(field)


def lines_object(shape: Sequence[int], rng: np.random.Generator, n_lines: int | None = None,
                 blur: float = 1.0, amplitude_range: Sequence[float] = AMPLITUDE_RANGE,
                 phase_range: Sequence[float] = PHASE_RANGE) -> np.ndarray:
    """A complex64 object of random lines; amplitude and phase share the line pattern.

    >>> o = lines_object((32, 32), np.random.default_rng(0), amplitude_range=(0.5, 1.0))
    >>> o.dtype, bool(np.abs(o).min() >= 0.5 - 1e-6)
    (dtype('complex64'), True)
    """
    pattern = lines_pattern(shape, rng, n_lines=n_lines, blur=blur)
    return complex_object(pattern, None, amplitude_range, phase_range)


def grf_object(shape: Sequence[int], rng: np.random.Generator, correlation_length: float = 4.0,
               amplitude_range: Sequence[float] = AMPLITUDE_RANGE,
               phase_range: Sequence[float] = PHASE_RANGE) -> np.ndarray:
    """A complex64 object whose amplitude and phase are two independent Gaussian random fields.

    >>> o = grf_object((32, 32), np.random.default_rng(0), phase_range=(-1.0, 1.0))
    >>> bool(np.angle(o).min() >= -1.0 - 1e-6 and np.angle(o).max() <= 1.0 + 1e-6)
    True
    """
    amp = gaussian_random_field(shape, rng, correlation_length)
    phase = gaussian_random_field(shape, rng, correlation_length)
    return complex_object(amp, phase, amplitude_range, phase_range)


def _luminance(img: np.ndarray) -> np.ndarray:
    """An RGB(A) image (H, W, 3|4) as luminance; anything else unchanged."""
    if img.ndim == 3 and img.shape[-1] in (3, 4) and img.dtype.kind != "c":
        return img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return img


def _image_array(image: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype.hasobject or img.dtype.kind not in "biufc":
        raise ValueError(f"{name} must be a numeric array, got dtype {img.dtype}")
    img = _luminance(img)
    if img.ndim != 2 or 0 in img.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array (or RGB), got shape {img.shape}")
    return img


def image_object(image: np.ndarray, amplitude_range: Sequence[float] = AMPLITUDE_RANGE,
                 phase_range: Sequence[float] = PHASE_RANGE, *,
                 phase_image: np.ndarray | None = None) -> np.ndarray:
    """An object from any 2-D image, or from one image for the amplitude and one for the phase.

    A complex image is returned as complex64 unchanged (it already is an object). A real
    image is rescaled to [0, 1] and drives both amplitude and phase (:func:`complex_object`),
    unless ``phase_image`` (real, the same shape) is given: then ``image`` drives the
    amplitude and ``phase_image``, rescaled to [0, 1] on its own, the phase. An RGB(A)
    image (H, W, 3|4) is first converted to luminance.

    >>> o = image_object(np.array([[0.0, 2.0], [4.0, 4.0]]), phase_range=(0.0, 0.0))
    >>> np.round(np.abs(o), 2).tolist()
    [[0.5, 0.75], [1.0, 1.0]]
    >>> o = image_object(np.array([[0.0, 1.0]]), (0.5, 1.0), (0.0, 1.0),
    ...                  phase_image=np.array([[3.0, 1.0]]))
    >>> np.round(np.abs(o), 2).tolist(), np.round(np.angle(o), 2).tolist()
    ([[0.5, 1.0]], [[1.0, 0.0]])
    """
    img = _image_array(image, "image" if phase_image is None else "amplitude image")
    if np.iscomplexobj(img):
        if phase_image is not None:
            raise ValueError("a complex image already is an object: pass a real amplitude "
                             "image with phase_image, or the complex image alone")
        if not np.all(np.isfinite(img)):
            raise ValueError("complex image holds non-finite values (NaN or Inf)")
        return img.astype(np.complex64)
    if phase_image is None:
        return complex_object(normalise_unit(img), None, amplitude_range, phase_range)
    ph = _image_array(phase_image, "phase image")
    if np.iscomplexobj(ph):
        raise ValueError("phase image must be real, got a complex array")
    if ph.shape != img.shape:
        raise ValueError(f"amplitude image {img.shape} and phase image {ph.shape} must have the "
                         "same shape (crop or resize one of them)")
    return complex_object(normalise_unit(img), normalise_unit(ph), amplitude_range, phase_range)


#: Bytes per pixel an image takes while it is read and converted (float64 RGB(A) and luminance).
IMAGE_BYTES_PER_PIXEL = 48


def _read_npy_image(f, name: str) -> np.ndarray:
    """A numeric .npy array, its header checked (object arrays, the memory budget) first."""
    try:
        shape, _, dtype = read_npy_header(f)
    except (ValueError, OSError, SyntaxError, EOFError, tokenize.TokenError) as exc:
        raise ValueError(f"cannot read {name!r} as a numeric .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in "biufc":
        raise ValueError(f"{name!r}: expected a numeric .npy array, got dtype {dtype}")
    count = math.prod(shape)
    check_bytes(count * max(dtype.itemsize, 8) * 2, f"object image {name!r} (shape {shape})")
    f.seek(0)
    try:
        return np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read {name!r} as a numeric .npy array ({exc})") from None


def _read_picture(f, name: str) -> np.ndarray:
    """An image file read with matplotlib (Pillow), its size checked against the budget first."""
    import matplotlib.image  # local: only when an image file is actually read
    from PIL import Image

    try:
        with Image.open(f) as img:
            width, height = img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {name!r} ({exc})") from None
    check_bytes(width * height * IMAGE_BYTES_PER_PIXEL,
                f"object image {name!r} ({width} x {height} pixels)")
    f.seek(0)
    try:
        return matplotlib.image.imread(f, format=os.path.splitext(name)[1].lower()[1:])
    except (ValueError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {name!r} ({exc})") from None


def load_image(path: PathLike) -> np.ndarray:
    """Read a 2-D image from ``.npy`` (numeric, never pickled) or an image file (PNG, ...).

    Image files are read with matplotlib and converted to luminance; returned as float64
    (or complex for a complex ``.npy``).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "obj.npy")
    >>> np.save(path, np.eye(3))
    >>> load_image(path).shape
    (3, 3)
    """
    name = os.fspath(path)
    try:
        f = open_regular(name, ValueError, "an image file")
    except FileNotFoundError:
        raise ValueError(f"object image {name!r} does not exist") from None
    with f:
        if name.lower().endswith(".npy"):
            arr = _read_npy_image(f, name)
        else:
            arr = _read_picture(f, name)
    arr = _luminance(np.asarray(arr))
    if arr.ndim != 2:
        raise ValueError(f"{name!r}: expected a 2-D image (or RGB), got shape {arr.shape}")
    return arr if np.iscomplexobj(arr) else arr.astype(np.float64)
