"""Forward optics in float64 numpy: illumination and far-field amplitude (the reference)."""

from __future__ import annotations

import numpy as np


def illuminate(probe: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """Exit wave ``probe * obj``; ``probe`` (N, N) broadcasts over the leading axes of ``obj``.

    >>> illuminate(np.full((2, 2), 2.0), np.ones((3, 2, 2))).shape
    (3, 2, 2)
    """
    return np.asarray(probe, dtype=np.complex128) * np.asarray(obj, dtype=np.complex128)


def far_field_amplitude(psi: np.ndarray) -> np.ndarray:
    """Far-field amplitude ``|fftshift(fft2(psi))| / N`` over the last two axes.

    The FFT is orthonormal (``sum |A|^2 == sum |psi|^2``, Parseval) and the zero
    frequency sits at pixel ``(N // 2, N // 2)``. Units: same as ``psi``.

    >>> a = far_field_amplitude(np.ones((4, 4)))
    >>> float(a[2, 2]), float(a.sum() - a[2, 2])
    (4.0, 0.0)
    """
    psi = np.asarray(psi, dtype=np.complex128)
    h, w = psi.shape[-2:]
    f = np.fft.fftshift(np.fft.fft2(psi, axes=(-2, -1)), axes=(-2, -1))
    return np.abs(f) / np.sqrt(h * w)
