"""The unit of work handed to a backend's loss, gradient and training-step functions."""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    diffraction: np.ndarray
    rel_offsets: np.ndarray
    canvas_size: int

    def __post_init__(self) -> None:
        d, r = self.diffraction, self.rel_offsets
        if d.ndim != 4 or d.shape[-1] != d.shape[-2]:
            raise ValueError(f"Batch.diffraction must be (B, C, N, N), got shape {d.shape}")
        if r.shape != d.shape[:2] + (2,):
            raise ValueError(f"Batch.rel_offsets must be {d.shape[:2] + (2,)}, got {r.shape}")
        if self.canvas_size < d.shape[-1]:
            raise ValueError(f"Batch.canvas_size {self.canvas_size} < N = {d.shape[-1]}")

    @property
    def size(self) -> int:
        return int(self.diffraction.shape[0])
