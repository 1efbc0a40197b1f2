"""The unit of work handed to a backend's loss, gradient and training-step functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Batch:
    """One batch of groups, as numpy arrays in the public layout.

    diffraction: (B, C, N, N) float32, observed amplitudes in photon units (sqrt of counts);
        the network input is ``diffraction / exp(log_intensity_scale)``.
    rel_offsets: (B, C, 2) float32, (x, y) object pixels of each pattern relative to its
        group centre (zeros for gridsize 1).
    canvas_size: side M of each group's canvas for the overlap constraint
        (:func:`ptycho.physics.canvas_size` over the whole dataset, so that it is static).
    mask: which detector pixels take part in the losses: ``None`` (all of them), one shared
        (N, N) mask, or one per pattern (B, C, N, N); 1/True = measured, 0/False = bad pixel.
        Bad pixels add nothing to a loss and its mean runs over the measured pixels only.
    estimate: (B, C, N, N) complex, the scan's stitched estimate cut out at each pattern
        (:mod:`ptycho.scan_estimate`) in the units of ``diffraction``; required by a model
        with ``estimate_scope="scan"``, refused by any other.
    """

    diffraction: np.ndarray
    rel_offsets: np.ndarray
    canvas_size: int
    mask: Optional[np.ndarray] = None
    estimate: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        d, r = self.diffraction, self.rel_offsets
        if d.ndim != 4 or d.shape[-1] != d.shape[-2]:
            raise ValueError(f"Batch.diffraction must be (B, C, N, N), got shape {d.shape}")
        if r.shape != d.shape[:2] + (2,):
            raise ValueError(f"Batch.rel_offsets must be {d.shape[:2] + (2,)}, got {r.shape}")
        if self.canvas_size < d.shape[-1]:
            raise ValueError(f"Batch.canvas_size {self.canvas_size} < N = {d.shape[-1]}")
        m = self.mask
        if m is not None:
            if m.shape not in (d.shape[-2:], d.shape):
                raise ValueError(f"Batch.mask must be {d.shape[-2:]} (shared) or {d.shape} "
                                 f"(per pattern), got {m.shape}")
            if m.dtype != np.bool_ and not np.all((m == 0) | (m == 1)):
                raise ValueError("Batch.mask must hold only 0/1 (or bool) values")
            if m.size and not np.any(m):    # (an empty batch: one rank's part of a short one)
                raise ValueError("Batch.mask excludes every pixel; nothing is left to fit")
        e = self.estimate
        if e is not None:
            if e.shape != d.shape:
                raise ValueError(f"Batch.estimate must be {d.shape} like diffraction, got {e.shape}")
            if e.dtype.kind != "c":
                raise ValueError(f"Batch.estimate must be complex, got dtype {e.dtype}")

    @property
    def size(self) -> int:
        return int(self.diffraction.shape[0])

    def take(self, rows: slice) -> "Batch":
        """The groups ``rows`` of this batch (a shared mask is kept, a per-pattern one sliced)."""
        m = self.mask
        if m is not None and m.ndim == 4:
            m = m[rows]
        e = None if self.estimate is None else self.estimate[rows]
        return Batch(self.diffraction[rows], self.rel_offsets[rows], self.canvas_size, m, e)
