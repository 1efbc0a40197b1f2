"""Per-sample patch reassembly and extraction for gridsize > 1 (the reference).

A group holds ``C = gridsize**2`` patches of side N whose centres sit at ``rel_offsets``
(B, C, 2) = (x, y) object pixels relative to the group centre. Each group gets its own
canvas of side M (from :func:`canvas_size`); a batch of B groups keeps B canvases.
The centre of an N-patch is pixel ``N // 2`` (the fftshift convention); it lands on canvas
pixel ``M // 2`` before translation.
"""

from __future__ import annotations

import math

import numpy as np

from ptycho.physics.translate import translate

#: Coverage below this is treated as this value when averaging overlapping patches, so a
#: canvas pixel touched only by the faint edge of a bilinear kernel does not blow up.
COVERAGE_FLOOR = 1e-3


def canvas_size(n: int, rel_offsets: np.ndarray) -> int:
    """Side M of the per-group canvas: ``N + 2 * ceil(max |offset|)`` (same parity as N).

    >>> canvas_size(32, np.array([[[-3.5, 2.0], [3.0, -1.0]]]))
    40
    """
    rel = np.asarray(rel_offsets, dtype=np.float64)
    margin = int(math.ceil(float(np.max(np.abs(rel))))) if rel.size else 0
    return int(n) + 2 * margin


def object_support(n: int, pad_object: bool, probe_big: bool) -> np.ndarray:
    """Where the network's object patch is defined: (N, N) float64 of ones and zeros.

    With ``pad_object`` and without ``probe_big`` only the central N/2 x N/2 square;
    otherwise the whole patch.
    """
    support = np.zeros((n, n)) if (pad_object and not probe_big) else np.ones((n, n))
    if pad_object and not probe_big:
        lo = n // 4
        support[lo:lo + n // 2, lo:lo + n // 2] = 1.0
    return support


def central_mask(n: int) -> np.ndarray:
    """(N, N) float64: ones on the central N/2 x N/2 square (``N//4 : N//4 + N//2``), else zero."""
    return object_support(n, pad_object=True, probe_big=False)


def probe_disk_mask(n: int) -> np.ndarray:
    """(N, N) float64 disk of radius N/4 centred on pixel (N//2, N//2), used when probe_mask is on."""
    r = np.arange(n) - n // 2
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= (n / 4.0) ** 2).astype(np.float64)


def pad_to_canvas(patches: np.ndarray, m: int) -> np.ndarray:
    """Zero-pad (..., N, N) to (..., M, M) with pixel N//2 landing on M//2 (M - N even)."""
    n = patches.shape[-1]
    p = m // 2 - n // 2
    if m < n or (m - n) % 2:
        raise ValueError(f"canvas side {m} must be >= patch side {n} with the same parity")
    pad = [(0, 0)] * (patches.ndim - 2) + [(p, m - n - p), (p, m - n - p)]
    return np.pad(patches, pad)


def crop_center(canvas: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pad_to_canvas`: the central (..., N, N) of (..., M, M)."""
    m = canvas.shape[-1]
    p = m // 2 - n // 2
    return canvas[..., p:p + n, p:p + n]


def reassemble_patches(patches: np.ndarray, rel_offsets: np.ndarray, m: int,
                       support: np.ndarray | None = None) -> np.ndarray:
    """Place each group's patches on its own canvas and average them by coverage.

    patches (B, C, N, N), rel_offsets (B, C, 2) (x, y) -> canvas (B, M, M), where
    ``canvas = sum_c T(pad(p_c)) / max(sum_c T(pad(support)), COVERAGE_FLOOR)``, ``T`` the
    bilinear translation by that patch's offset. ``support`` (N, N) defaults to ones.
    """
    patches = np.asarray(patches)
    b, c, n, _ = patches.shape
    if support is None:
        support = np.ones((n, n))
    rel = np.asarray(rel_offsets, dtype=np.float64)
    num = translate(pad_to_canvas(patches, m), rel).sum(axis=1)
    sup = np.broadcast_to(pad_to_canvas(np.asarray(support, dtype=np.float64), m), (b, c, m, m))
    cov = translate(sup, rel).sum(axis=1)
    return num / np.maximum(cov, COVERAGE_FLOOR)


def extract_patches(canvas: np.ndarray, rel_offsets: np.ndarray, n: int) -> np.ndarray:
    """Cut the (B, C, N, N) patches centred at ``rel_offsets`` out of canvases (B, M, M)."""
    canvas = np.asarray(canvas)
    rel = np.asarray(rel_offsets, dtype=np.float64)
    c = rel.shape[1]
    tiled = np.repeat(canvas[:, None], c, axis=1)
    return crop_center(translate(tiled, -rel), n)


def overlap_constraint(patches: np.ndarray, rel_offsets: np.ndarray, m: int,
                       support: np.ndarray | None = None) -> np.ndarray:
    """Make a group's patches agree where they overlap: reassemble, then re-extract."""
    n = patches.shape[-1]
    return extract_patches(reassemble_patches(patches, rel_offsets, m, support), rel_offsets, n)
