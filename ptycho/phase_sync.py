"""Phase synchronisation of object patches before they are stitched.

A diffraction pattern does not see a constant phase factor on its object patch:
``|F(P O e^{ic})| = |F(P O)|``. A network that predicts each patch from its own pattern (or
each group from its group, at gridsize > 1) is therefore free to give every patch its own
phase offset ``c_k``, and averaging overlapping patches with unrelated offsets blurs the phase
and cancels the amplitude. Overlapping patches show the same object, so their offsets can be
read off their overlaps: ``s_kj = sum_r w w p_k conj(p_j)`` over the pixels two patches share
has the phase ``c_k - c_j``. The offsets that agree best with all the pairs are the phases of
the leading eigenvector of the Hermitian matrix ``H_kj = s_kj`` (angular synchronisation:
Singer, Appl. Comput. Harmon. Anal. 30, 2011), which copes with offsets that wrap around
``+-pi``, unlike least squares on the angles. Each patch is then multiplied by
``exp(-1j c_k)``; one phase for the whole object stays free, as it must.

Scoring (:func:`ptycho.metrics.compare_objects`) removes that global phase anyway; what
synchronisation restores is the agreement between patches, visible as the end of per-patch
tiling in the phase and of the amplitude's cancellation.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import cKDTree

#: Pairs whose weighted overlap is below this fraction of the largest pair's are ignored
#: (a sliver of shared edge carries no reliable phase).
MIN_PAIR_WEIGHT = 1e-3


def _window_box(window: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(window.any(axis=1))
    cols = np.flatnonzero(window.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def pair_overlaps(patches: np.ndarray, positions: np.ndarray, window: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of patches whose windowed areas overlap, and their overlap sums.

    ``patches`` (P, N, N) complex, ``positions`` (P, 2) = (x, y) (rounded to whole pixels:
    the offsets' estimate needs no sub-pixel accuracy), ``window`` (N, N) >= 0. Returns
    ``(k, j, s)``: index arrays and ``s_kj = sum w_k w_j p_k conj(p_j)`` over shared pixels.
    """
    p = len(patches)
    r0, r1, c0, c1 = _window_box(window)
    h, w = r1 - r0, c1 - c0
    weighted = patches[:, r0:r1, c0:c1] * window[r0:r1, c0:c1]
    pos = np.rint(np.asarray(positions, np.float64)).astype(np.int64)
    if p < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.complex128)
    pairs = cKDTree(pos).query_pairs(r=float(np.hypot(h, w)), output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.complex128)
    d = pos[pairs[:, 1]] - pos[pairs[:, 0]]                  # (dx, dy) of j from k
    keep = (np.abs(d[:, 0]) < w) & (np.abs(d[:, 1]) < h)
    pairs, d = pairs[keep], d[keep]
    sums = np.zeros(len(pairs), np.complex128)
    offsets, group = np.unique(d, axis=0, return_inverse=True)
    for g, (dx, dy) in enumerate(offsets):
        sel = np.flatnonzero(group.reshape(-1) == g)
        k, j = pairs[sel, 0], pairs[sel, 1]
        # box pixel (a, b) of k and (a - dy, b - dx) of j are the same object pixel
        ak, aj = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
        bk, bj = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
        sums[sel] = np.einsum("pab,pab->p", weighted[k][:, ak, bk],
                              np.conj(weighted[j][:, aj, bj]))
    return pairs[:, 0], pairs[:, 1], sums


def phase_offsets(patches: np.ndarray, positions: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The phase offset ``c_k`` of each patch (P,) radians, relative to one another.

    Patches that overlap no other one get 0. See the module docstring.

    >>> rng = np.random.default_rng(0)
    >>> obj = np.exp(1j * rng.normal(size=(40, 40)))
    >>> pos = np.array([[12.0, 12.0], [18.0, 12.0], [12.0, 18.0], [18.0, 18.0]])
    >>> patches = np.stack([obj[y - 8:y + 8, x - 8:x + 8] for x, y in pos.astype(int)])
    >>> c = phase_offsets(patches * np.exp(1j * np.array([0.0, 2.0, -2.5, 3.0]))[:, None, None],
    ...                   pos, np.ones((16, 16)))
    >>> np.round(np.angle(np.exp(1j * (c - c[0]))), 6).tolist()
    [0.0, 2.0, -2.5, 3.0]
    """
    p = len(patches)
    k, j, s = pair_overlaps(np.asarray(patches), positions, np.asarray(window, np.float64))
    if len(s):
        strong = np.abs(s) >= MIN_PAIR_WEIGHT * np.abs(s).max()
        k, j, s = k[strong], j[strong], s[strong]
    if len(s) == 0:
        return np.zeros(p)
    h = sp.coo_matrix((np.concatenate([s, np.conj(s)]), (np.concatenate([k, j]),
                                                          np.concatenate([j, k]))),
                      shape=(p, p)).tocsr()
    degree = np.asarray(np.abs(h).sum(axis=1)).reshape(-1)
    if p <= 64:          # small: a dense eigendecomposition is exact and quick
        _, vecs = np.linalg.eigh(h.toarray())
        v = vecs[:, -1]
    else:
        v0 = np.ones(p, np.complex128)          # deterministic start
        _, vecs = spla.eigsh(h + sp.diags(degree), k=1, which="LA", v0=v0)
        v = vecs[:, 0]
    linked = (degree > 0) & (np.abs(v) > 0)
    c = np.angle(v) - np.angle(v[np.argmax(degree)])    # the best-connected patch keeps its phase
    return np.where(linked, c, 0.0)


def synchronize(patches: np.ndarray, positions: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``patches`` (P, N, N) with their relative phase offsets removed (complex64)."""
    c = phase_offsets(patches, positions, window)
    return (np.asarray(patches) * np.exp(-1j * c)[:, None, None]).astype(np.complex64)


def align_phase(z: Optional[complex]) -> complex:
    """The factor ``exp(-1j angle(z))`` that removes the phase of an overlap sum ``z`` (1 when
    there is no overlap)."""
    if z is None or z == 0 or not np.isfinite(z):
        return 1.0 + 0j
    return complex(np.conj(z) / abs(z))
