"""Sub-pixel translation of images: bilinear interpolation with zero fill (the reference).

Convention (fixed by the design, pinned by a delta test in every backend): translating by
``(dx, dy)`` moves the content ``dx`` columns right and ``dy`` rows down,
``out[r, c] = img[r - dy, c - dx]``; samples that fall outside the image read as zero.
"""

from __future__ import annotations

import numpy as np


def _shift_int(img: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
    """``out[..., r, c] = img[..., r - ky, c - kx]`` with zero fill; ky, kx per leading index."""
    h, w = img.shape[-2:]
    lead = img.shape[:-2]
    flat = img.reshape((-1, h, w))
    kyf = np.broadcast_to(ky, lead).reshape(-1)
    kxf = np.broadcast_to(kx, lead).reshape(-1)
    rows = np.arange(h)[None, :] - kyf[:, None]           # (L, h) source rows
    cols = np.arange(w)[None, :] - kxf[:, None]           # (L, w) source cols
    rv = (rows >= 0) & (rows < h)
    cv = (cols >= 0) & (cols < w)
    rc = np.clip(rows, 0, h - 1)
    cc = np.clip(cols, 0, w - 1)
    idx = np.arange(flat.shape[0])[:, None, None]
    out = flat[idx, rc[:, :, None], cc[:, None, :]]
    out = out * (rv[:, :, None] & cv[:, None, :])
    return out.reshape(img.shape)


def translate(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Translate each image of ``images`` (..., H, W) by its ``offsets`` (..., 2) = (dx, dy).

    ``offsets`` broadcasts against the leading axes of ``images``. Real or complex input;
    computed in float64 / complex128.

    >>> img = np.zeros((5, 5)); img[2, 2] = 1.0
    >>> out = translate(img, np.array([1.0, -2.0]))   # one column right, two rows up
    >>> [int(i) for i in np.argwhere(out == 1.0)[0]]
    [0, 3]
    """
    images = np.asarray(images)
    dtype = np.complex128 if np.iscomplexobj(images) else np.float64
    images = images.astype(dtype, copy=False)
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.shape[-1:] != (2,):
        raise ValueError(f"offsets must end in an axis of length 2 (dx, dy), got shape {offsets.shape}")
    lead = images.shape[:-2]
    dx = np.broadcast_to(offsets[..., 0], lead)
    dy = np.broadcast_to(offsets[..., 1], lead)
    kx0 = np.floor(dx)
    ky0 = np.floor(dy)
    fx = (dx - kx0)[..., None, None]
    fy = (dy - ky0)[..., None, None]
    kx0 = kx0.astype(np.int64)
    ky0 = ky0.astype(np.int64)
    # out(r) = (1 - fy) img[r - ky0] + fy img[r - ky0 - 1], likewise along columns.
    return ((1 - fy) * (1 - fx) * _shift_int(images, ky0, kx0)
            + (1 - fy) * fx * _shift_int(images, ky0, kx0 + 1)
            + fy * (1 - fx) * _shift_int(images, ky0 + 1, kx0)
            + fy * fx * _shift_int(images, ky0 + 1, kx0 + 1))
