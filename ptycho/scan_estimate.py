"""The back-propagated estimate stitched over a whole scan (``ModelConfig.estimate_scope="scan"``).

One pattern's estimate (:func:`ptycho.physics.model.backprop_estimate`) holds the object plus a
twin image the pattern alone cannot tell apart. Neighbouring patterns see the same object
pixels through differently placed probes, and their twins do not line up: stitched over the
scan, the object adds up and the twins partly cancel. The network then starts, at each
position, from the stitched estimate cut out there instead of its own pattern's.

Each pattern's estimate is first given the level the intensity match gives a network patch
(``sum |P E|^2`` = the pattern's measured total), so that patterns agree where they overlap;
the stitch weighs them by :func:`ptycho.stitching.probe_window`, the intensity pixel by pixel
(not averaged as in the stitch of the network's patches: an estimate divides by the probe, so
its error at a pixel goes as ``1 / |P|`` there, and trained models saw it weighed so).
Everything is linear in the amplitudes: the estimate of scaled amplitudes is the scaled
estimate.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ptycho.physics.model import backprop_estimate
from ptycho.stitching import CHUNK, Stitcher, gather_patches, probe_window


class ScanEstimate:
    """The stitched estimate of a scan, cut out at any position (:meth:`patches`).

    Build it with :meth:`from_patterns`. ``canvas`` (H, W) complex64 holds the object in the
    amplitudes' units; object pixel ``(r, c)`` of it is at ``(x, y) = (c, r) + origin``.
    """

    def __init__(self, canvas: np.ndarray, origin: tuple[float, float], n: int) -> None:
        self.canvas = np.asarray(canvas, np.complex64)
        self.origin = (float(origin[0]), float(origin[1]))
        self.N = int(n)

    @classmethod
    def from_patterns(cls, amplitude, positions: np.ndarray, probe: np.ndarray, *,
                      mask: Optional[np.ndarray] = None, pad_object: bool = True,
                      shape: Optional[tuple[int, int]] = None) -> "ScanEstimate":
        """The estimate of the patterns ``amplitude`` (M, N, N) (any units; an array, read a
        chunk at a time, so a memory-mapped scan is fine, or a reader ``rows -> (b, N, N)`` of
        index arrays) at ``positions`` (M, 2) = (x, y) object pixels with ``probe`` (N, N).
        ``mask`` (None, (N, N) or (M, N, N); 1 = measured) zeroes bad pixels first, as the
        network's input has them. ``pad_object``: see
        :func:`ptycho.stitching.probe_window`. ``shape``: stitch on an (H, W) canvas whose
        pixel ``(r, c)`` is at ``(x, y) = (c, r)`` (as :class:`ptycho.stitching.Stitcher`'s);
        by default, the smallest that holds every patch."""
        probe = np.asarray(probe, np.complex128)
        if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
            raise ValueError(f"probe must be a square (N, N) array, got shape {probe.shape}")
        n = probe.shape[0]
        pos = np.asarray(positions, np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or not len(pos) or not np.all(np.isfinite(pos)):
            raise ValueError(f"positions must be (M, 2) finite (x, y), got shape {pos.shape}")
        m = len(pos)
        if callable(amplitude):
            read = amplitude
        elif tuple(np.shape(amplitude)) != (m, n, n):
            raise ValueError(f"amplitude must be ({m}, {n}, {n}) for these positions and this "
                             f"probe, got shape {tuple(np.shape(amplitude))}")
        else:
            def read(rows: np.ndarray) -> np.ndarray:
                return amplitude[rows[0]:rows[-1] + 1]
        if mask is not None and np.shape(mask) not in ((n, n), (m, n, n)):
            raise ValueError(f"mask must be ({n}, {n}) or ({m}, {n}, {n}), got shape "
                             f"{np.shape(mask)}")
        if shape is None:   # a pixel of margin round every patch, for the bilinear splat
            origin = np.floor(pos.min(axis=0)) - n // 2 - 1
            far = np.ceil(pos.max(axis=0)) - origin + n - n // 2 + 1
            shape = (int(far[1]), int(far[0]))
        else:
            origin = np.zeros(2)
        # float32 throughout: the canvas is complex64 and the network's input float32
        stitcher = Stitcher(shape, n, window=probe_window(probe, pad_object), dtype=np.complex64)
        intensity = (np.abs(probe) ** 2).astype(np.float32)
        for lo in range(0, m, CHUNK):
            a = np.asarray(read(np.arange(lo, min(lo + CHUNK, m))), np.float32)
            if a.shape != (min(CHUNK, m - lo), n, n):
                raise ValueError(f"the reader gave shape {a.shape} for patterns {lo}.."
                                 f"{min(lo + CHUNK, m) - 1}, expected ({min(CHUNK, m - lo)}, "
                                 f"{n}, {n})")
            if mask is not None:
                a = a * (mask if np.ndim(mask) == 2 else mask[lo:lo + CHUNK])
            est = backprop_estimate(a, probe, dtype=np.complex64)
            sent = np.sum(intensity * np.abs(est) ** 2, axis=(-2, -1), dtype=np.float64)
            level = np.sqrt(np.sum(a ** 2, axis=(-2, -1), dtype=np.float64)
                            / np.maximum(sent, np.finfo(float).tiny))
            est *= level.astype(np.float32)[:, None, None]
            stitcher.add(est, pos[lo:lo + CHUNK] - origin)
        canvas = stitcher.result()
        return cls(canvas, (float(origin[0]), float(origin[1])), n)

    def patches(self, positions: np.ndarray) -> np.ndarray:
        """The estimate's (..., N, N) complex64 patches at ``positions`` (..., 2) = (x, y):
        patch pixel ``(r, c)`` is the object at ``(y - N//2 + r, x - N//2 + c)``, bilinear
        between pixels (:func:`ptycho.stitching.gather_patches`, as the simulation cuts its
        patches; the adjoint of the stitch's splat). Every patch must lie on the canvas: a
        position the scan did not reach is named."""
        pos = np.asarray(positions, np.float64)
        if pos.shape[-1:] != (2,) or not np.all(np.isfinite(pos)):
            raise ValueError(f"positions must be (..., 2) finite (x, y), got shape {pos.shape}")
        flat = pos.reshape(-1, 2) - np.array(self.origin)
        n = self.N
        h, w = self.canvas.shape
        xmin, xmax, ymin, ymax = n // 2, w - n + n // 2, n // 2, h - n + n // 2
        outside = ((flat[:, 0] < xmin) | (flat[:, 0] > xmax) | (flat[:, 1] < ymin)
                   | (flat[:, 1] > ymax))
        if outside.any():
            k = int(np.argmax(outside))
            x0, y0 = self.origin
            raise ValueError(
                f"{int(outside.sum())} of {len(flat)} positions put the {n} x {n} "
                f"patch off the stitched scan; first: index {k} (x={flat[k, 0] + x0:g}, "
                f"y={flat[k, 1] + y0:g}); allowed x in [{xmin + x0:g}, {xmax + x0:g}], "
                f"y in [{ymin + y0:g}, {ymax + y0:g}]")
        padded = np.pad(self.canvas, ((0, 1), (0, 1)))
        return gather_patches(padded, flat, n).reshape(pos.shape[:-1] + (n, n))


def scan_estimate_patches(amplitude, positions: np.ndarray, probe: np.ndarray, *,
                          mask: Optional[np.ndarray] = None, pad_object: bool = True
                          ) -> np.ndarray:
    """:meth:`ScanEstimate.patches` at the scan's own positions: (M, N, N) complex64.

    >>> p = np.ones((8, 8), complex)
    >>> from ptycho.physics.model import far_field_amplitude
    >>> a = np.stack([far_field_amplitude(2.0 * p)] * 4)
    >>> pos = np.array([[4.0, 4.0], [6.0, 4.0], [4.0, 6.0], [6.0, 6.0]])
    >>> bool(np.allclose(scan_estimate_patches(a, pos, p)[0, 2:6, 2:6], 2.0))
    True
    """
    return ScanEstimate.from_patterns(amplitude, positions, probe, mask=mask,
                                      pad_object=pad_object).patches(positions)
