"""Scan positions: grid, jittered grid and random, as (M, 2) float64 arrays of (x, y).

``x`` is the column and ``y`` the row, in object pixels, of the pixel where the centre
(pixel ``N // 2``) of each N x N patch lands: the patch covers object rows
``y - N//2 ... y - N//2 + N - 1`` (plus one more when ``y`` is fractional, for bilinear
interpolation). A position is *inside* an (H, W) object when that whole patch is, i.e.
``N//2 <= x <= W - N + N//2`` and likewise for ``y`` with H (see :func:`position_bounds`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Scan kinds accepted by :func:`make_scan`.
SCAN_KINDS = ("grid", "jitter", "random")


def _int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _finite(name: str, value, lo: float = 0.0, lo_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < lo or (lo_open and v == lo):
        raise ValueError(f"{name} must be a finite number {'>' if lo_open else '>='} {lo}, "
                         f"got {value!r}")
    return v


def position_bounds(object_shape: Sequence[int], n: int) -> tuple[float, float, float, float]:
    """``(xmin, xmax, ymin, ymax)`` of positions whose N-patch lies inside an (H, W) object.

    >>> position_bounds((100, 80), 32)
    (16.0, 64.0, 16.0, 84.0)
    """
    h, w = (int(s) for s in object_shape)
    n = _int("N", n, 1)
    if h < n or w < n:
        raise ValueError(f"object shape {(h, w)} is smaller than one {n} x {n} patch")
    return float(n // 2), float(w - n + n // 2), float(n // 2), float(h - n + n // 2)


def check_inside(positions: np.ndarray, object_shape: Sequence[int], n: int) -> None:
    """Raise ``ValueError`` naming the first position whose N-patch leaves the object.

    >>> check_inside(np.array([[16.0, 16.0]]), (64, 64), 32)   # fine: returns None
    >>> check_inside(np.array([[15.5, 16.0]]), (64, 64), 32)
    Traceback (most recent call last):
    ...
    ValueError: 1 of 1 scan positions put the 32 x 32 patch outside the (64, 64) object; first: index 0 (x=15.5, y=16); allowed x in [16, 48], y in [16, 48]
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must be (M, 2) = (x, y), got shape {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions hold non-finite values (NaN or Inf)")
    xmin, xmax, ymin, ymax = position_bounds(object_shape, n)
    bad = ((pos[:, 0] < xmin) | (pos[:, 0] > xmax) | (pos[:, 1] < ymin) | (pos[:, 1] > ymax))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} of {len(pos)} scan positions put the {n} x {n} patch outside the "
            f"{tuple(int(s) for s in object_shape)} object; first: index {i} "
            f"(x={pos[i, 0]:g}, y={pos[i, 1]:g}); allowed x in [{xmin:g}, {xmax:g}], "
            f"y in [{ymin:g}, {ymax:g}]")


def scan_extent(positions: np.ndarray, n: int) -> tuple[int, int]:
    """Smallest (H, W) object that holds every N-patch of ``positions`` (positions >= N//2).

    >>> scan_extent(np.array([[16.0, 16.0], [40.5, 20.0]]), 32)
    (36, 57)
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions must be a non-empty (M, 2) array, got shape {pos.shape}")
    n = _int("N", n, 1)
    w = int(math.ceil(float(pos[:, 0].max()))) + n - n // 2
    h = int(math.ceil(float(pos[:, 1].max()))) + n - n // 2
    return h, w


def _steps(step) -> tuple[float, float]:
    """``step`` as (step_x, step_y): one number for both axes or a pair."""
    if np.ndim(step) == 0:
        s = _finite("step", step, 0.0, lo_open=True)
        return s, s
    pair = tuple(np.asarray(step, dtype=float).ravel())
    if len(pair) != 2:
        raise ValueError(f"step must be a number or a pair (step_x, step_y), got {step!r}")
    return (_finite("step_x", pair[0], 0.0, lo_open=True),
            _finite("step_y", pair[1], 0.0, lo_open=True))


def grid_scan(n_rows: int, n_cols: int, step, n: int, origin: float | None = None
              ) -> np.ndarray:
    """A raster grid (rows outer, columns inner) of ``n_rows x n_cols`` positions.

    The first position is ``(origin, origin)`` (default ``N // 2``, the smallest inside
    position); neighbours are ``step`` pixels apart (one number, or a pair (step_x, step_y)).

    >>> grid_scan(2, 3, 4.0, 16).tolist()
    [[8.0, 8.0], [12.0, 8.0], [16.0, 8.0], [8.0, 12.0], [12.0, 12.0], [16.0, 12.0]]
    """
    n_rows, n_cols = _int("n_rows", n_rows, 1), _int("n_cols", n_cols, 1)
    sx, sy = _steps(step)
    n = _int("N", n, 1)
    o = float(n // 2) if origin is None else _finite("origin", origin)
    yy, xx = np.meshgrid(o + sy * np.arange(n_rows), o + sx * np.arange(n_cols), indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=-1)


def even_grid_scan(n_positions: int, step, n: int, origin: float | None = None) -> np.ndarray:
    """Exactly ``n_positions`` raster positions that cover one rectangle evenly (no notch).

    The grid has :func:`grid_dims` rows and columns. When ``n_positions`` is not
    ``rows * cols``, the missing points are taken one each from rows spread evenly over the
    grid, and each such short row keeps the full width: its ``cols - 1`` points span the
    same columns as a full row, ``(cols - 1) * step_x / (cols - 2)`` pixels apart (a row
    of one point sits in the middle). So every row reaches both edges of the scanned area,
    where keeping the first points of a full grid left the last row short on one side.

    >>> p = even_grid_scan(5, 4.0, 16)         # 2 rows of 3: the second row has 2 points
    >>> p.tolist()
    [[8.0, 8.0], [12.0, 8.0], [16.0, 8.0], [8.0, 12.0], [16.0, 12.0]]
    """
    m = _int("n_positions", n_positions, 1)
    sx, sy = _steps(step)
    n = _int("N", n, 1)
    o = float(n // 2) if origin is None else _finite("origin", origin)
    rows, cols = grid_dims(m)
    missing = rows * cols - m                          # < cols, so at most one per row
    short = {int((k + 0.5) * rows / missing) for k in range(missing)}
    width = (cols - 1) * sx
    out = []
    for r in range(rows):
        count = cols - 1 if r in short else cols
        if count == 1:
            xs = np.array([o + width / 2]) if r in short else np.array([o])
        else:
            xs = o + np.arange(count) * (width / (count - 1))
        out.append(np.stack([xs, np.full(count, o + r * sy)], axis=-1))
    return np.concatenate(out)


def jittered_grid_scan(n_rows: int, n_cols: int, step, n: int, jitter: float,
                       rng: np.random.Generator) -> np.ndarray:
    """A grid with each position moved by independent uniform ``[-jitter, jitter]`` pixels.

    The grid starts at ``N // 2 + jitter`` so every jittered position stays inside an object
    of :func:`scan_extent` of the un-jittered grid plus ``2 * jitter``.

    >>> p = jittered_grid_scan(3, 3, 8.0, 16, 1.5, np.random.default_rng(0))
    >>> bool(np.all(np.abs(p - grid_scan(3, 3, 8.0, 16, origin=9.5)) <= 1.5))
    True
    """
    jitter = _finite("jitter", jitter)
    base = grid_scan(n_rows, n_cols, step, n, origin=n // 2 + jitter)
    return base + rng.uniform(-jitter, jitter, base.shape)


def random_scan(n_positions: int, object_shape: Sequence[int], n: int,
                rng: np.random.Generator) -> np.ndarray:
    """``n_positions`` positions drawn uniformly over the inside region of the object.

    >>> p = random_scan(100, (64, 48), 16, np.random.default_rng(0))
    >>> bool(p[:, 0].min() >= 8 and p[:, 0].max() <= 40 and p[:, 1].max() <= 56)
    True
    """
    m = _int("n_positions", n_positions, 1)
    xmin, xmax, ymin, ymax = position_bounds(object_shape, n)
    return np.stack([rng.uniform(xmin, xmax, m), rng.uniform(ymin, ymax, m)], axis=-1)


def grid_dims(n_positions: int) -> tuple[int, int]:
    """(rows, cols) of the most square grid with at least ``n_positions`` points.

    >>> grid_dims(10), grid_dims(16)
    ((3, 4), (4, 4))
    """
    m = _int("n_positions", n_positions, 1)
    cols = int(math.ceil(math.sqrt(m)))
    return int(math.ceil(m / cols)), cols


def make_scan(kind: str, n_positions: int, n: int, rng: np.random.Generator,
              step=None, jitter: float | None = None,
              object_shape: Sequence[int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Positions of a scan of ``kind`` (:data:`SCAN_KINDS`) and the object shape it needs.

    ``step`` (pixels between grid neighbours, default N/4; a number or a pair
    (step_x, step_y)) also sets the density of a random scan. ``jitter`` (pixels, default
    min(step)/4) applies to ``"jitter"``. Grids are rasters (rows outer) of
    :func:`even_grid_scan`: exactly ``n_positions`` points that cover the scanned rectangle
    evenly, whatever the count. Without ``object_shape`` the smallest object
    holding every patch is returned; with it, every patch must fit (else ``ValueError``).

    >>> pos, shape = make_scan("grid", 6, 16, np.random.default_rng(0), step=4)
    >>> pos.shape, shape
    ((6, 2), (20, 24))
    """
    if kind not in SCAN_KINDS:
        raise ValueError(f"unknown scan kind {kind!r}; expected one of {list(SCAN_KINDS)}")
    m = _int("n_positions", n_positions, 1)
    n = _int("N", n, 1)
    sx, sy = _steps(n / 4 if step is None else step)
    step = (sx, sy)
    rows, cols = grid_dims(m)
    if kind == "grid":
        pos = even_grid_scan(m, step, n)
        shape = scan_extent(pos, n)
    elif kind == "jitter":
        jitter = _finite("jitter", min(sx, sy) / 4 if jitter is None else jitter)
        pos = even_grid_scan(m, step, n, origin=n // 2 + jitter)
        pos = pos + rng.uniform(-jitter, jitter, pos.shape)
        h, w = scan_extent(grid_scan(rows, cols, step, n, origin=n // 2 + jitter), n)
        shape = (h + int(math.ceil(jitter)), w + int(math.ceil(jitter)))
    else:
        if object_shape is None:
            object_shape = (int(math.ceil((rows - 1) * sy)) + n, int(math.ceil((cols - 1) * sx)) + n)
        pos = random_scan(m, object_shape, n, rng)
        shape = tuple(int(s) for s in object_shape)
    if object_shape is not None:
        shape = tuple(int(s) for s in object_shape)
        check_inside(pos, shape, n)
    return pos, shape
