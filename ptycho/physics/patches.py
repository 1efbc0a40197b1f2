"""Per-sample patch reassembly and extraction for gridsize > 1 (the reference).

A group holds ``C = gridsize**2`` patches of side N whose centres sit at ``rel_offsets``
(B, C, 2) = (x, y) object pixels relative to the group centre (:func:`group_centres`). Each
group gets its own canvas of side M (from :func:`canvas_size`); a batch of B groups keeps B
canvases.
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


def group_centres(positions: np.ndarray) -> np.ndarray:
    """Each group's centre (B, 2) for its positions (B, C, 2) = (x, y): the members' mean, or,
    where the members differ by whole pixels (to 1e-6 px), the point on their pixel grid
    nearest the mean (within half a pixel per axis, halves up).

    Every member's offset from such a centre is whole, and :func:`overlap_constraint` passes
    patches cut from one object through unchanged. From the mean itself (a half pixel off
    the grid for most groups of four on a raster) the constraint shifts the canvas there and
    back by bilinear interpolation, a [1/4, 1/2, 1/4] filter along each axis at a half pixel:
    the physics model blurs every such group's object, and a network trained through it
    cannot give the object's finest detail. Members at arbitrary sub-pixel positions are
    interpolated whatever the centre; theirs stays the mean.

    >>> group_centres(np.array([[[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [0.0, 12.0]],
    ...                         [[0.0, 0.0], [6.5, 0.0], [0.0, 6.0], [0.0, 12.0]]])).tolist()
    [[2.0, 5.0], [1.625, 4.5]]
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[-1] != 2 or pos.shape[1] == 0:
        raise ValueError(f"positions must be (B, C, 2) with C >= 1, got shape {pos.shape}")
    mean = pos.mean(axis=1)
    first = pos[:, 0]
    on_grid = first + np.floor(mean - first + 0.5)
    offsets = pos - on_grid[:, None, :]
    whole = np.all(np.abs(offsets - np.round(offsets)) <= 1e-6, axis=(1, 2))
    return np.where(whole[:, None], on_grid, mean)


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


def grid_layout(rel_offsets: np.ndarray, n: int, m: int
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """Each group's patches as whole-pixel ``corners`` (B, C, 2) int (row, column) on its M
    canvas plus one sub-pixel ``fractions`` (B, 2) (rows, columns) in [0, 1) the whole group
    shares, when its offsets have that form (scan positions on whole pixels: a group's
    offsets from its mean then differ by whole pixels) and every patch lies on the canvas;
    else None. Offset ``rel = corner - (M//2 - N//2) + fraction`` per axis.

    >>> corners, fractions = grid_layout(np.array([[[-3.0, 1.5], [3.0, -1.5]]]), 8, 14)
    >>> corners.tolist(), fractions.tolist()
    ([[[4, 0], [1, 6]]], [[0.5, 0.0]])
    >>> grid_layout(np.array([[[-2.5, 0.0], [2.0, 0.0]]]), 8, 14) is None
    True
    """
    rel = np.asarray(rel_offsets, dtype=np.float64)[..., ::-1]          # (row, column)
    if rel.ndim != 3 or not rel.size or not np.all(np.isfinite(rel)):
        return None
    fractions = rel[:, 0] - np.floor(rel[:, 0])
    whole = rel - fractions[:, None]
    # float64 offsets of whole-pixel positions from a mean over C members: exact for C a
    # power of two, within rounding otherwise
    nearest = np.round(whole)
    if np.max(np.abs(whole - nearest)) > 1e-9 * max(1.0, float(np.max(np.abs(rel)))):
        return None
    corners = (m // 2 - n // 2) + nearest.astype(np.intp)
    # the interpolation reaches one pixel past the corner when the fraction is not 0
    reach = corners + n + (fractions[:, None] > 0)
    if corners.min() < 0 or reach.max() > m:
        return None
    return corners, fractions


def _interpolate(canvas: np.ndarray, fraction: float, axis: int, ahead: bool) -> np.ndarray:
    """Two-tap bilinear shift of ``canvas`` along ``axis`` (-2 rows, -1 columns), zero fill:
    ``(1 - f) x[r] + f x[r - 1]`` (by ``f``: a patch placed on a canvas), or ``x[r + 1]`` for
    the second tap with ``ahead`` (by ``-f``: a patch cut out)."""
    if fraction == 0:
        return canvas
    real = canvas.real.dtype.type
    out = canvas * real(1 - fraction)
    move = [slice(None)] * canvas.ndim
    take = [slice(None)] * canvas.ndim
    move[axis], take[axis] = (slice(None, -1), slice(1, None)) if ahead else \
        (slice(1, None), slice(None, -1))
    out[tuple(move)] += canvas[tuple(take)] * real(fraction)
    return out


def overlap_constraint_on_grid(patches: np.ndarray, corners: np.ndarray,
                               fractions: np.ndarray, m: int,
                               support: np.ndarray | None = None) -> np.ndarray:
    """:func:`overlap_constraint` of groups laid out as :func:`grid_layout` gives them, in the
    patches' own precision (complex64 in, complex64 out, as the backends' float32 graph).

    A group's shifts share their sub-pixel part, so each is a whole-pixel placement (a slice)
    and one interpolation of the summed canvas: ``sum_c T(f + k_c) pad(p_c) = T(f) sum_c
    T(k_c) pad(p_c)``, the same for the coverage, and cutting a patch out is
    ``T(-f)`` of the averaged canvas, then a slice. The same values as the interpolating
    form up to rounding, with two interpolations per group instead of 2C per patch. Groups
    of one layout (on a raster scan, a handful) share a vectorised pass and a coverage.
    """
    patches = np.asarray(patches)
    b, c, n, _ = patches.shape
    if np.shape(corners) != (b, c, 2) or np.shape(fractions) != (b, 2):
        raise ValueError(f"corners must be {(b, c, 2)} and fractions {(b, 2)}, got "
                         f"{np.shape(corners)} and {np.shape(fractions)}")
    real = patches.real.dtype
    support = np.ones((n, n), real) if support is None else np.asarray(support, real)
    out = np.empty_like(patches)
    keys = np.concatenate([np.reshape(corners, (b, -1)).astype(np.float64),
                           np.asarray(fractions, np.float64)], axis=1)
    layouts, which = np.unique(keys, axis=0, return_inverse=True)
    for layout, key in enumerate(layouts):
        members = np.flatnonzero(which.reshape(-1) == layout)
        corner, (f_row, f_col) = key[:-2].astype(np.intp).reshape(c, 2), key[-2:]
        canvas = np.zeros((len(members), m, m), patches.dtype)
        coverage = np.zeros((m, m), real)
        for k, (r, q) in enumerate(corner):
            canvas[:, r:r + n, q:q + n] += patches[members, k]
            coverage[r:r + n, q:q + n] += support
        for axis, f in ((-2, f_row), (-1, f_col)):
            canvas = _interpolate(canvas, f, axis, ahead=False)
            coverage = _interpolate(coverage, f, axis, ahead=False)
        canvas /= np.maximum(coverage, real.type(COVERAGE_FLOOR))
        for axis, f in ((-2, f_row), (-1, f_col)):
            canvas = _interpolate(canvas, f, axis, ahead=True)
        for k, (r, q) in enumerate(corner):
            out[members, k] = canvas[:, r:r + n, q:q + n]
    return out
