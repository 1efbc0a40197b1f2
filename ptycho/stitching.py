"""Stitch complex object patches into one object, averaging where they overlap.

Convention: a patch (N, N) at global position ``(x, y)`` (object pixels, x = column) puts its
pixel ``(N//2, N//2)`` on object pixel ``(y, x)``; patch pixel ``(r, c)`` lands on
``(y - N//2 + r, x - N//2 + c)``. This is the inverse of the simulation's patch extraction
(:func:`ptycho.simulate.object_patches`).

Each patch is weighted by a ``window`` (default: the central N/2 x N/2 square,
:func:`ptycho.physics.central_mask`, where the network's object support is), and the object is
``sum_k w * patch_k / sum_k w`` per pixel (the average by coverage). Uncovered pixels get
``fill_value``.

Sub-pixel positions, ``subpixel=``:

* ``"bilinear"`` (default): each patch pixel is splatted onto its four nearest object pixels
  with bilinear weights, numerator and coverage alike. This equals translating the zero-padded
  patch with :func:`ptycho.physics.translate` (bilinear is its own adjoint in this sense), so a
  linear object is stitched exactly from its sub-pixel crops.
* ``"round"``: positions are rounded to the nearest pixel (halves up), no interpolation.

Parts of patches that fall outside the canvas are dropped. Memory is bounded by the canvas
(two accumulators of its size) and one chunk of :data:`CHUNK` patches: a :class:`Stitcher`
streams any number of patches, batch by batch, at a cost per pattern that does not depend on
how many came before.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ptycho.errors import DataLimitError, ResourceLimitError
from ptycho.limits import check_bytes
from ptycho.physics.patches import central_mask

#: Patches processed per internal chunk of :meth:`Stitcher.add` (bounds temporary memory).
CHUNK = 1024
#: Sub-pixel modes.
SUBPIXEL_MODES = ("bilinear", "round")

WindowLike = Union[None, int, str, np.ndarray]

#: Bytes one object-canvas pixel costs a reconstruction: the :class:`Stitcher`'s accumulators
#: (complex128 + float64), its result (complex64) and coverage (float64), and what saving and
#: drawing make of them (amplitude, phase, coverage as float32, masked float64 images).
CANVAS_BYTES_PER_PIXEL = 80
#: Bytes one pixel of one channel of a group's overlap-constraint canvas costs per group:
#: the translated patch (complex64), its share of the canvas and coverage, and temporaries.
GROUP_CANVAS_BYTES_PER_PIXEL = 32
#: Positions named in an error about them.
NAMED_POSITIONS = 5


def make_window(n: int, window: WindowLike = None) -> np.ndarray:
    """The (N, N) float64 patch weight for ``window``.

    ``None``: the central N/2 x N/2 square (rows/cols ``N//4 : N//4 + N//2``, the model's
    object support). An int ``w``: a central ``w x w`` square, rows/cols
    ``N//2 - w//2 : N//2 - w//2 + w`` (``w = N`` or ``"full"``: the whole patch). An (N, N)
    array: non-negative weights used as given.

    >>> float(make_window(8).sum()), make_window(8, 3)[2:7, 4].tolist(), make_window(8, 8).min()
    (16.0, [0.0, 1.0, 1.0, 1.0, 0.0], np.float64(1.0))
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"N must be an int >= 1, got {n!r}")
    n = int(n)
    if window is None:
        return central_mask(n)
    if isinstance(window, str):
        if window != "full":
            raise ValueError(f"window must be None, 'full', an int or an (N, N) array, "
                             f"got {window!r}")
        return np.ones((n, n))
    if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
        w = int(window)
        if not 1 <= w <= n:
            raise ValueError(f"window side must be in [1, N = {n}], got {w}")
        out = np.zeros((n, n))
        lo = n // 2 - w // 2
        out[lo:lo + w, lo:lo + w] = 1.0
        return out
    arr = np.asarray(window)
    if arr.dtype.kind not in "biuf" or arr.shape != (n, n):
        raise ValueError(f"window array must be real with shape ({n}, {n}), got {arr.dtype} "
                         f"{arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() <= 0:
        raise ValueError("window weights must be finite, >= 0 and not all zero")
    return arr


def _shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (H, W) of ints, got {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {(h, w)}")
    return h, w


class Stitcher:
    """Accumulates patches on an (H, W) object canvas; :meth:`result` is the coverage average.

    shape: (H, W) of the object canvas, in pixels.
    N: patch side.
    window: patch weight, see :func:`make_window` (default the central N/2 x N/2 square).
    subpixel: ``"bilinear"`` (splat) or ``"round"`` (nearest pixel), see the module docstring.
    dtype: accumulator precision, ``np.complex128`` (default) or ``np.complex64`` (half the
        memory for very large canvases). The per-patch splat runs in the patches' own
        precision (complex64 / float32 for complex64 or float32 input).

    Cost: about 12 us per 64 x 64 pattern with the default window (bilinear, two cores),
    the same for the first thousand patterns as for the hundred-thousandth.

    >>> obj = np.arange(100.0).reshape(10, 10).astype(complex)
    >>> pos = np.array([[3.0, 3.0], [6.0, 5.0]])
    >>> patches = np.stack([obj[y - 2:y + 2, x - 2:x + 2] for x, y in pos.astype(int)])
    >>> s = Stitcher((10, 10), 4, window="full")
    >>> s.add(patches[:1], pos[:1]); s.add(patches[1:], pos[1:])
    >>> out = s.result()
    >>> bool(np.allclose(out[1:7, 1:8][s.coverage[1:7, 1:8] > 0], obj[1:7, 1:8][s.coverage[1:7, 1:8] > 0]))
    True
    """

    def __init__(self, shape: Sequence[int], N: int, window: WindowLike = None,  # noqa: N803
                 subpixel: str = "bilinear", dtype=np.complex128) -> None:
        self.shape = _shape(shape)
        wdw = make_window(N, window)          # validates N
        self.N = int(N)
        if subpixel not in SUBPIXEL_MODES:
            raise ValueError(f"subpixel must be one of {list(SUBPIXEL_MODES)}, got {subpixel!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.complex64), np.dtype(np.complex128)):
            raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
        # the two accumulators: complex numerator, real coverage
        check_canvas(self.shape, error=ResourceLimitError, bytes_per_pixel=dtype.itemsize * 3 // 2)
        self.subpixel = subpixel
        rows = np.flatnonzero(wdw.any(axis=1))
        cols = np.flatnonzero(wdw.any(axis=0))
        self._box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        r0, r1, c0, c1 = self._box
        real = np.float32 if dtype == np.complex64 else np.float64
        self._wbox = wdw[r0:r1, c0:c1].astype(real)
        self._box_is_ones = bool(np.all(self._wbox == 1))
        self._num = np.zeros(self.shape, dtype=dtype)
        self._den = np.zeros(self.shape, dtype=real)
        self.count = 0

    # -- accumulation ------------------------------------------------------------------------

    def add(self, patches: np.ndarray, positions: np.ndarray) -> None:
        """Add patches (P, N, N) (complex or real) at ``positions`` (P, 2) = (x, y) object px."""
        patches = np.asarray(patches)
        pos = np.asarray(positions, dtype=np.float64)
        n = self.N
        if patches.ndim != 3 or patches.shape[1:] != (n, n):
            raise ValueError(f"patches must be (P, {n}, {n}), got shape {patches.shape}")
        if patches.dtype.kind not in "biufc":
            raise ValueError(f"patches must be numeric, got dtype {patches.dtype}")
        if pos.shape != (len(patches), 2):
            raise ValueError(f"positions must be ({len(patches)}, 2) = (x, y) for "
                             f"{len(patches)} patches, got shape {pos.shape}")
        if not np.all(np.isfinite(pos)):
            raise ValueError("positions hold non-finite values (NaN or Inf)")
        for i in range(0, len(patches), CHUNK):
            self._add_chunk(patches[i:i + CHUNK], pos[i:i + CHUNK])
        self.count += len(patches)

    def overlap_with(self, patches: np.ndarray, positions: np.ndarray) -> complex:
        """``sum w p conj(object)`` of ``patches`` (P, N, N) at ``positions`` (P, 2) = (x, y)
        (rounded to whole pixels) against the object stitched so far, over the pixels it
        already covers: its phase is how far the patches' common phase is from the object's
        (0 when nothing overlaps yet)."""
        r0, r1, c0, c1 = self._box
        pos = np.rint(np.asarray(positions, np.float64)).astype(np.int64)
        rows = pos[:, 1, None] + np.arange(r0 - self.N // 2, r1 - self.N // 2)
        cols = pos[:, 0, None] + np.arange(c0 - self.N // 2, c1 - self.N // 2)
        h, w = self.shape
        inside = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
        rr = np.clip(rows, 0, h - 1)[:, :, None]
        cc = np.clip(cols, 0, w - 1)[:, None, :]
        den = self._den[rr, cc]
        covered = inside & (den > 0)
        if not covered.any():
            return 0j
        current = np.where(covered, self._num[rr, cc] / np.where(covered, den, 1.0), 0)
        vals = np.asarray(patches)[:, r0:r1, c0:c1] * self._wbox
        return complex(np.sum(vals * np.conj(current)))

    def _add_chunk(self, patches: np.ndarray, pos: np.ndarray) -> None:
        r0, r1, c0, c1 = self._box
        hb, wb = r1 - r0, c1 - c0
        wbox = self._wbox
        # work in the patches' precision (complex64 for complex64 input), accumulate in dtype
        work = np.complex64 if patches.dtype in (np.complex64, np.float32, np.float16) else np.complex128
        vals = patches[:, r0:r1, c0:c1].astype(work)
        if not self._box_is_ones:
            vals *= wbox
        # top-left object pixel of the window box: (y - N//2 + r0, x - N//2 + c0)
        top = np.stack([pos[:, 1] + (r0 - self.N // 2), pos[:, 0] + (c0 - self.N // 2)], -1)
        if self.subpixel == "round":
            i0 = np.floor(top + 0.5).astype(np.int64)
            frac = None
        else:
            i0 = np.floor(top).astype(np.int64)
            frac = top - i0
            if not frac.any():
                frac = None
        if frac is None:
            wts = np.broadcast_to(wbox, vals.shape)
        else:
            # bilinear splat onto (hb + 1, wb + 1): the adjoint of bilinear interpolation
            real = np.float32 if work == np.complex64 else np.float64
            fy = frac[:, 0, None, None].astype(real)
            fx = frac[:, 1, None, None].astype(real)
            vals = _splat(vals, fy, fx)
            if self._box_is_ones:
                wts = _splat_ones(len(pos), hb, wb, fy, fx)
            else:
                wts = _splat(np.broadcast_to(wbox, (len(pos), hb, wb)), fy, fx)
            hb, wb = hb + 1, wb + 1
        h, w = self.shape
        rr = i0[:, 0, None, None] + np.arange(hb)[None, :, None]
        cc = i0[:, 1, None, None] + np.arange(wb)[None, None, :]
        if (i0[:, 0].min() < 0 or i0[:, 1].min() < 0 or i0[:, 0].max() + hb > h
                or i0[:, 1].max() + wb > w):
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            flat = (rr * w + cc)[inside]
            vals, wts = vals[inside], np.broadcast_to(wts, inside.shape)[inside]
        else:
            flat = (rr * w + cc).ravel()
            vals, wts = vals.ravel(), np.ascontiguousarray(wts).ravel()
        # matching dtypes keep numpy on the fast path of ufunc.at
        np.add.at(self._num.reshape(-1), flat, vals.astype(self._num.dtype, copy=False))
        np.add.at(self._den.reshape(-1), flat, wts.astype(self._den.dtype, copy=False))

    def sum_over(self, all_reduce_sum: Callable[[list], list]) -> None:
        """Replace the accumulators (and :attr:`count`) by their sums over the processes of a
        group, each of which stitched its own patches onto the same canvas.

        ``all_reduce_sum`` maps a list of arrays to their elementwise sums over the ranks,
        the same on every rank (a process group's ``all_reduce_sum``, see
        :class:`ptycho.distributed.Communicator`). Every rank's stitcher must have the same
        shape, window, sub-pixel mode and dtype; the float64 (or float32) sums are the ones
        one process would have accumulated, up to the order of the additions.

        >>> a, b = Stitcher((4, 4), 2, "full"), Stitcher((4, 4), 2, "full")
        >>> a.add(np.ones((1, 2, 2)), [[1.0, 1.0]]); b.add(3 * np.ones((1, 2, 2)), [[2.0, 2.0]])
        >>> a.sum_over(lambda arrays: [x + y for x, y in zip(arrays, b.accumulators())])
        >>> a.count, complex(a.result()[1, 1]), float(a.coverage[1, 1])
        (2, (2+0j), 2.0)
        """
        num, den, count = all_reduce_sum(self.accumulators())
        if np.shape(num) != self.shape or np.shape(den) != self.shape:
            raise ValueError(f"the summed accumulators have shapes {np.shape(num)} and "
                             f"{np.shape(den)}, this canvas is {self.shape}")
        self._num[...] = num
        self._den[...] = den
        self.count = int(round(float(np.asarray(count).reshape(-1)[0])))

    def accumulators(self) -> list:
        """What :meth:`sum_over` sums: the weighted sum of the patches and the coverage (the
        arrays themselves, not copies: read them, do not write), and the patch count (a
        float64 array of one)."""
        return [self._num, self._den, np.array([float(self.count)])]

    def turn_to(self, num: np.ndarray, den: np.ndarray) -> complex:
        """Turn the patches stitched so far by the one phase factor that best matches the
        object ``num / den`` (another stitcher's accumulators on the same canvas) where both
        cover the object; return the factor (1 when they share no pixel).

        For a group whose ranks each stitched a part of a scan, their patches brought to one
        phase within each part: the parts' phases are unrelated until turned to one another.

        >>> a, b = Stitcher((4, 4), 2, "full"), Stitcher((4, 4), 2, "full")
        >>> a.add(np.full((1, 2, 2), 1j), [[1.0, 1.0]]); b.add(np.ones((1, 2, 2)), [[2.0, 2.0]])
        >>> f = a.turn_to(*b.accumulators()[:2])
        >>> complex(np.round(f, 12)), complex(np.round(a.result()[1, 1], 12))
        (-1j, (1+0j))
        """
        both = (self._den > 0) & (np.asarray(den) > 0)
        z = complex(np.sum(self._num[both] * np.conj(np.asarray(num)[both]
                                                      / np.asarray(den)[both])))
        if z == 0 or not np.isfinite(z):
            return 1.0 + 0j
        factor = np.conj(z) / abs(z)
        self._num *= factor
        return complex(factor)

    # -- results -----------------------------------------------------------------------------

    @property
    def coverage(self) -> np.ndarray:
        """(H, W) sum of window weights per object pixel (0 where no patch reached)."""
        return self._den.copy()

    def result(self, fill_value: complex = 0.0, min_coverage: float = 1e-6) -> np.ndarray:
        """The stitched (H, W) complex64 object: accumulated patches / coverage.

        Pixels with coverage <= ``min_coverage`` (in window-weight units) get ``fill_value``.
        The accumulators are left as they are: more patches may be added afterwards.
        """
        if not (min_coverage >= 0 and math.isfinite(min_coverage)):
            raise ValueError(f"min_coverage must be a finite number >= 0, got {min_coverage!r}")
        covered = self._den > min_coverage
        out = np.full(self.shape, fill_value, dtype=np.complex64)
        out[covered] = self._num[covered] / self._den[covered]
        return out


def _splat(v: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """(P, h, w) values at fractional offsets (fy, fx) in [0, 1) -> (P, h+1, w+1) bilinear.

    Separable: splat along columns, then along rows (four multiplies, two temporaries).
    """
    p, h, w = v.shape
    dt = np.result_type(v.dtype, fy.dtype)
    cols = np.empty((p, h, w + 1), dtype=dt)
    np.multiply(v, 1 - fx, out=cols[:, :, :w])
    cols[:, :, w] = 0
    cols[:, :, 1:] += v * fx
    out = np.empty((p, h + 1, w + 1), dtype=dt)
    np.multiply(cols, 1 - fy, out=out[:, :h])
    out[:, h] = 0
    out[:, 1:] += cols * fy
    return out


def _splat_ones(p: int, h: int, w: int, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """:func:`_splat` of an all-ones (P, h, w) block, as an outer product (fast).

    Along one axis the splat of ones is ``[1 - f, 1, ..., 1, f]`` (length h + 1).
    """
    wy = np.ones((p, h + 1), dtype=fy.dtype)
    wy[:, 0] = 1 - fy[:, 0, 0]
    wy[:, h] = fy[:, 0, 0]
    wx = np.ones((p, w + 1), dtype=fx.dtype)
    wx[:, 0] = 1 - fx[:, 0, 0]
    wx[:, w] = fx[:, 0, 0]
    return wy[:, :, None] * wx[:, None, :]


def outlying_positions(positions: np.ndarray, n: int, indices: Optional[np.ndarray] = None
                       ) -> list[tuple[int, float, float]]:
    """Scan positions far from the others: ``(index, x, y)``, farthest first.

    A position is outlying when it lies outside Tukey's far-out fence on x or on y,
    ``[q1 - 3 iqr - N, q3 + 3 iqr + N]`` (quartiles of that coordinate over all positions,
    widened by one patch side N). ``indices`` (default ``0 .. P-1``) are the scan indices
    reported for the ``positions`` (P, 2) = (x, y).

    >>> pos = np.array([[10.0, 10.0], [14.0, 10.0], [18.0, 10.0], [22.0, 10.0], [12000.0, 10.0]])
    >>> outlying_positions(pos, 16)
    [(4, 12000.0, 10.0)]
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    idx = np.arange(len(pos)) if indices is None else np.asarray(indices).reshape(-1)
    if len(pos) == 0:
        return []
    q1, q3 = np.percentile(pos, [25, 75], axis=0)
    spread = 3 * (q3 - q1) + n
    excess = np.maximum(q1 - spread - pos, pos - q3 - spread).max(axis=1)
    out = np.flatnonzero(excess > 0)
    out = out[np.argsort(-excess[out], kind="stable")]
    return [(int(idx[i]), float(pos[i, 0]), float(pos[i, 1])) for i in out]


def _name_positions(found: list[tuple[int, float, float]], intro: str) -> str:
    named = ", ".join(f"index {i} (x={x:.6g}, y={y:.6g})" for i, x, y in found[:NAMED_POSITIONS])
    more = f" and {len(found) - NAMED_POSITIONS} more" if len(found) > NAMED_POSITIONS else ""
    return f"{intro}: {named}{more}"


def _blame(positions: np.ndarray, n: int, indices: Optional[np.ndarray]) -> str:
    """The positions to name when the canvas they imply is too large."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    idx = np.arange(len(pos)) if indices is None else np.asarray(indices).reshape(-1)
    found = outlying_positions(pos, n, idx)
    if found:
        return _name_positions(found, "outlying positions (far from the others)")
    extremes = sorted({int(np.argmax(pos[:, 0])), int(np.argmax(pos[:, 1])),
                       int(np.argmin(pos[:, 0])), int(np.argmin(pos[:, 1]))})
    return _name_positions([(int(idx[i]), float(pos[i, 0]), float(pos[i, 1])) for i in extremes],
                           "no position stands out; the scan spans from")


def check_canvas(shape: Sequence[int], positions: Optional[np.ndarray] = None, n: int = 1, *,
                 indices: Optional[np.ndarray] = None, error: type = DataLimitError,
                 bytes_per_pixel: int = CANVAS_BYTES_PER_PIXEL) -> tuple[int, int]:
    """Check an (H, W) object canvas against the memory budget before it is allocated.

    ``positions`` (P, 2) = (x, y), with ``indices`` their scan indices, are what implied the
    canvas: when it is too large, the error names the outlying ones (index and value), see
    :func:`outlying_positions`. Returns ``(H, W)``.

    >>> import os
    >>> os.environ["PTYCHO_MAX_BYTES"] = "1GiB"
    >>> pos = np.array([[40.0, 40.0], [44.0, 40.0], [40.0, 44.0], [44.0, 44.0], [9e4, 9e4]])
    >>> check_canvas(extent_of(pos, 64), pos, 64)
    Traceback (most recent call last):
    ...
    ptycho.errors.DataLimitError: the object canvas of 90032 x 90032 pixels needs 604 GiB, more than the memory budget of 1 GiB (PTYCHO_MAX_BYTES=1GiB); outlying positions (far from the others): index 4 (x=90000, y=90000); set PTYCHO_MAX_BYTES to change it
    >>> del os.environ["PTYCHO_MAX_BYTES"]
    """
    h, w = _shape(shape)
    detail = None if positions is None else (lambda: _blame(positions, n, indices))
    check_bytes(h * w * bytes_per_pixel, f"the object canvas of {h} x {w} pixels", error, detail)
    return h, w


def check_group_canvas(canvas: int, groups: int, positions: np.ndarray, n: int, *,
                       indices: Optional[np.ndarray] = None, what: str = "",
                       error: type = DataLimitError,
                       bytes_per_pixel: int = GROUP_CANVAS_BYTES_PER_PIXEL) -> None:
    """Check the overlap constraint's canvases of ``groups`` groups at once against the budget.

    ``canvas`` is the side of each group's canvas (:func:`ptycho.physics.patches.canvas_size`
    of the groups' offsets); ``positions`` (B, C, 2) = (x, y) the group members' positions,
    ``indices`` (B, C) their scan indices, named when the canvas is too large: the outlying
    positions, else the members of the widest group.
    """
    pos = np.asarray(positions, dtype=np.float64)
    channels = pos.shape[1] if pos.ndim == 3 else 1

    def blame() -> str:
        flat = pos.reshape(-1, 2)
        idx = None if indices is None else np.asarray(indices).reshape(-1)
        found = outlying_positions(flat, n, idx)
        if found:
            seen, unique = set(), []
            for item in found:
                if item[0] not in seen:
                    seen.add(item[0])
                    unique.append(item)
            return _name_positions(unique, "outlying positions (far from the others)")
        rel = pos - pos.mean(axis=1, keepdims=True)
        widest = int(np.argmax(np.abs(rel).reshape(len(pos), -1).max(axis=1)))
        gidx = (np.arange(pos.shape[1]) if indices is None else np.asarray(indices)[widest])
        members = [(int(i), float(x), float(y)) for i, (x, y) in zip(gidx, pos[widest])]
        return _name_positions(members, f"the widest group ({widest}) holds")

    label = what or "the overlap constraint"
    check_bytes(groups * channels * canvas * canvas * bytes_per_pixel,
                f"{label} on {groups} groups at once (canvas {canvas} x {canvas} pixels per "
                "group, from the spread of each group's positions)", error, blame)


def extent_of(positions: np.ndarray, n: int) -> tuple[int, int]:
    """(H, W) canvas that holds every N-patch at ``positions`` (P, 2) = (x, y), x, y >= N//2.

    ``H = ceil(max y) + N - N//2`` (one more row than an integer position needs when the
    position is fractional, for the bilinear splat); likewise W.

    >>> extent_of(np.array([[8.0, 8.0], [20.5, 12.0]]), 16)
    (20, 29)
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if len(pos) == 0 or not np.all(np.isfinite(pos)):
        raise ValueError("positions must be a non-empty array of finite (x, y)")
    return (int(math.ceil(float(pos[:, 1].max()))) + n - n // 2,
            int(math.ceil(float(pos[:, 0].max()))) + n - n // 2)


def stitch_patches(patches: np.ndarray, global_offsets: np.ndarray, rel_offsets: np.ndarray,
                   shape: Sequence[int] | None = None, window: WindowLike = None,
                   subpixel: str = "bilinear", fill_value: complex = 0.0) -> np.ndarray:
    """Stitch grouped patches (B, C, N, N) into one (H, W) complex64 object.

    Patch ``(b, c)`` sits at ``global_offsets[b] + rel_offsets[b, c]`` (x, y) object pixels;
    ``global_offsets`` (B, 2), ``rel_offsets`` (B, C, 2). ``shape`` defaults to
    :func:`extent_of` the positions. ``window``, ``subpixel``, ``fill_value``: see
    :class:`Stitcher`.

    >>> obj = (np.arange(144.0) % 7).reshape(12, 12).astype(np.complex64)
    >>> glob = np.array([[5.0, 5.0]]); rel = np.array([[[0.0, 0.0], [2.0, 1.0]]])
    >>> p = np.stack([obj[1:9, 1:9], obj[2:10, 3:11]])[None]   # crops centred at (5,5), (7,6)
    >>> out = stitch_patches(p, glob, rel, window="full")
    >>> out.shape, bool(np.allclose(out[2:9, 3:9], obj[2:9, 3:9])), complex(out[0, 0])
    ((10, 11), True, 0j)
    """
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != patches.shape[-2]:
        raise ValueError(f"patches must be (B, C, N, N), got shape {patches.shape}")
    b, c, n, _ = patches.shape
    glob = np.asarray(global_offsets, dtype=np.float64)
    rel = np.asarray(rel_offsets, dtype=np.float64)
    if glob.shape != (b, 2):
        raise ValueError(f"global_offsets must be ({b}, 2), got shape {glob.shape}")
    if rel.shape != (b, c, 2):
        raise ValueError(f"rel_offsets must be ({b}, {c}, 2), got shape {rel.shape}")
    pos = (glob[:, None, :] + rel).reshape(-1, 2)
    if shape is None:
        shape = extent_of(pos, n)
    st = Stitcher(shape, n, window=window, subpixel=subpixel)
    st.add(patches.reshape(b * c, n, n), pos)
    return st.result(fill_value=fill_value)


def gather_patches(obj_padded: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """(B, N, N) bilinear patches at ``pos`` (B, 2) = (x, y) of an object padded by one zero
    row and column at its far edges: ``patch[r, c] = obj(y - N//2 + r, x - N//2 + c)``, the
    inverse of this module's stitch. Every patch must lie inside the unpadded object
    (:func:`ptycho.simulate.scans.check_inside`); complex64 for complex64 input."""
    top = pos[:, ::-1] - n // 2                      # (y0, x0), the patch's top-left corner
    i0 = np.floor(top).astype(np.int64)
    frac = (top - i0).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(obj_padded, (n + 1, n + 1))
    win = windows[i0[:, 0], i0[:, 1]]                 # (B, N+1, N+1) copy
    if not frac.any():
        return win[:, :n, :n]
    fy = frac[:, 0, None, None]
    fx = frac[:, 1, None, None]
    top_row = win[:, :n, :n] * (1 - fx) + win[:, :n, 1:] * fx
    bottom_row = win[:, 1:, :n] * (1 - fx) + win[:, 1:, 1:] * fx
    return top_row * (1 - fy) + bottom_row * fy


def probe_window(probe: np.ndarray, pad_object: bool = True, smoothing: float = 0.0
                 ) -> np.ndarray:
    """The stitching weight (N, N) of a probe (N, N): ``|P|^2 / max``, times the central N/2
    square with ``pad_object`` (:func:`ptycho.workflows.reconstruct.stitch_window`).

    ``smoothing`` (pixels, >= 0): the intensity is first averaged with a Gaussian of that
    sigma, on the pixels the probe lights (where ``|P|`` is 0 the weight stays 0).

    >>> p = np.zeros((8, 8)); p[2:6, 2:6] = 1.0; p[3, 3] = 3.0
    >>> w = probe_window(p, pad_object=False, smoothing=1.0)
    >>> bool(w[3, 3] == 1.0 and 0.1 < w[4, 4] < 1.0 and not w[0].any())
    True
    """
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float, np.integer,
                                                                 np.floating)) \
            or not math.isfinite(smoothing) or smoothing < 0:
        raise ValueError(f"smoothing must be a number of pixels >= 0, got {smoothing!r}")
    intensity = np.abs(np.asarray(probe)) ** 2
    if smoothing > 0:
        from scipy.ndimage import gaussian_filter

        intensity = np.where(intensity > 0, gaussian_filter(intensity, float(smoothing)), 0.0)
    window = intensity / intensity.max()
    return window * central_mask(intensity.shape[-1]) if pad_object else window


def sparse_scan(positions: np.ndarray, spacing: float, window: np.ndarray) -> np.ndarray:
    """Sorted indices of a subset of the scan ``positions`` (M, 2) = (x, y) about ``spacing``
    object pixels apart whose patches still reach every pixel the whole scan's reach (a
    patch reaches the pixels where ``window`` (N, N), its stitching weight, is above zero).

    A grid of targets no more than ``spacing`` apart along each axis is laid over the scan's
    bounding box, its first and last lines on the extreme positions, and each target takes
    the nearest scan point within ``spacing`` of it; on a raster of step ``s`` with
    ``spacing = k s`` that is about every k-th point of each row and column, the last row and
    column included. Then every point left out, in scan order, whose patch would reach a
    pixel no kept patch reaches is kept too (pixels as the stitch places them, positions
    rounded), so a stitch of the subset has no hole where the whole scan's has none (the
    bilinear splat's one-pixel fractional edge aside).

    >>> xy = np.stack(np.meshgrid(np.arange(0.0, 40, 4), np.arange(0.0, 40, 4)), -1).reshape(-1, 2)
    >>> kept = sparse_scan(xy + 8, 12.0, make_window(16, "full"))
    >>> len(xy), len(kept), sorted(set(xy[kept, 0].tolist()))
    (100, 16, [0.0, 12.0, 24.0, 36.0])
    """
    from scipy.spatial import cKDTree

    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0 or not np.all(np.isfinite(pos)):
        raise ValueError(f"positions must be a non-empty (M, 2) array of finite (x, y), got "
                         f"shape {pos.shape}")
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float, np.integer, np.floating)) \
            or not math.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"spacing must be a positive number of pixels, got {spacing!r}")
    support = np.asarray(window) > 0
    if support.ndim != 2 or support.shape[0] != support.shape[1] or not support.any():
        raise ValueError(f"window must be an (N, N) array with some weight above zero, got "
                         f"shape {support.shape}")
    n = support.shape[0]
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    axes = [np.linspace(lo[a], hi[a], int(math.ceil((hi[a] - lo[a]) / spacing)) + 1)
            for a in (0, 1)]
    targets = np.stack(np.meshgrid(*axes), axis=-1).reshape(-1, 2)
    distance, nearest = cKDTree(pos).query(targets)
    keep = np.zeros(len(pos), bool)
    keep[nearest[distance <= spacing]] = True
    # the stitch's pixels: top-left corner of each patch, rounded, on a canvas holding them all
    corner = np.floor(pos[:, ::-1] + 0.5).astype(np.int64) - n // 2      # halves up, as it does
    corner -= corner.min(axis=0)
    reached = np.zeros(tuple(corner.max(axis=0) + n), bool)
    for r, c in corner[keep]:
        reached[r:r + n, c:c + n] |= support
    for i in np.flatnonzero(~keep):
        r, c = corner[i]
        view = reached[r:r + n, c:c + n]
        if not view[support].all():
            keep[i] = True
            view |= support
    return np.flatnonzero(keep)


def scan_coverage(probe: np.ndarray, positions: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(H, W) coverage of a scan: the probe's intensity ``|P|^2 / max``, summed at every position.

    What :class:`Stitcher` accumulates with the probe's whole intensity as its window
    (:func:`ptycho.workflows.reconstruct` with ``pad_object=False``; with the default
    ``pad_object`` it weighs only each patch's central N/2 square, so its own coverage is that
    part of this). It depends only on the scan, so every reconstruction of that scan (network,
    iterative, a constant) can be scored over one region
    (:func:`ptycho.metrics.metric_region` of it). ``positions`` (M, 2) = (x, y).

    >>> cov = scan_coverage(np.ones((4, 4)), np.array([[2.0, 2.0], [4.0, 2.0]]), (8, 8))
    >>> cov[2].tolist()
    [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0]
    """
    p = np.asarray(probe)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"probe must be a square (N, N) array, got shape {p.shape}")
    n = p.shape[0]
    intensity = np.abs(p.astype(np.complex128)) ** 2
    if not intensity.max() > 0:
        raise ValueError("the probe is zero everywhere")
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    stitcher = Stitcher(shape, n, window=intensity / intensity.max())
    for lo in range(0, len(pos), CHUNK):
        chunk = pos[lo:lo + CHUNK]
        stitcher.add(np.ones((len(chunk), n, n), np.complex64), chunk)
    return stitcher.coverage
