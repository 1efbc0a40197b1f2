"""``run_cdi_example``: train, reconstruct, and (with an output folder) save everything."""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from ptycho.atomic import atomic_save_npz
from ptycho.config.schema import TrainingConfig
from ptycho.figures import save_comparison_figure, save_loss_figure, save_object_figure
from ptycho.metrics import compare_objects
from ptycho.workflows.reconstruct import Reconstruction, reconstruct
from ptycho.workflows.train import DataLike, train

RECONSTRUCTION_NAME = "reconstruction.npz"
FIGURE_NAMES = {"object": "reconstruction.png", "loss": "loss.png", "comparison": "comparison.png"}


def save_reconstruction(path: str, recon: Reconstruction) -> None:
    """The stitched object, its amplitude, phase, coverage and positions as one NPZ (atomic)."""
    atomic_save_npz(path, obj=recon.obj, amplitude=recon.amplitude.astype(np.float32),
                    phase=recon.phase.astype(np.float32), coverage=recon.coverage.astype(np.float32),
                    positions=recon.positions)


#: Smallest covered box (pixels per side) that metrics are computed on (the SSIM window).
MIN_METRIC_REGION = 11


def covered_region(coverage: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """``(row0, row1, col0, col1)``: the bounding box of the pixels some patch reached.

    None when nothing is covered.

    >>> cov = np.zeros((6, 8)); cov[1:4, 2:7] = 1.0
    >>> covered_region(cov)
    (1, 4, 2, 7)
    """
    rows = np.flatnonzero((coverage > 0).any(axis=1))
    cols = np.flatnonzero((coverage > 0).any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def evaluate_against_truth(recon: Reconstruction, truth: Optional[np.ndarray]) -> Optional[dict]:
    """Metrics of the covered region against ``truth``.

    None when there is no ground truth, its shape differs from the reconstruction's, or the
    covered box is smaller than :data:`MIN_METRIC_REGION` pixels on a side.
    """
    if truth is None or truth.shape != recon.obj.shape:
        return None
    box = covered_region(recon.coverage)
    if box is None or min(box[1] - box[0], box[3] - box[2]) < MIN_METRIC_REGION:
        return None
    return compare_objects(recon.obj, truth, region=box)


def write_outputs(output_dir: str, recon: Reconstruction, history=None,
                  truth: Optional[np.ndarray] = None) -> dict[str, str]:
    """Reconstruction NPZ and PNG figures into ``output_dir``; returns their paths by kind."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"reconstruction": os.path.join(output_dir, RECONSTRUCTION_NAME)}
    save_reconstruction(paths["reconstruction"], recon)
    covered = recon.coverage > 0
    paths["object_figure"] = os.path.join(output_dir, FIGURE_NAMES["object"])
    save_object_figure(paths["object_figure"], recon.obj, mask=covered)
    if history is not None and history.epochs:
        paths["loss_figure"] = os.path.join(output_dir, FIGURE_NAMES["loss"])
        save_loss_figure(paths["loss_figure"], history)
    if truth is not None and truth.shape == recon.obj.shape:
        paths["comparison_figure"] = os.path.join(output_dir, FIGURE_NAMES["comparison"])
        save_comparison_figure(paths["comparison_figure"], recon.obj, truth, mask=covered)
    return paths


def run_cdi_example(train_data: DataLike, test_data: Optional[DataLike], config: TrainingConfig,
                    backend: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train on ``train_data``, reconstruct ``test_data`` (or the training scan when None).

    Returns ``(amplitude, phase, results)`` with results holding ``train_result``,
    ``reconstruction``, ``metrics`` (None without ground truth) and ``paths``. When
    ``config.output_dir`` is set, the bundle (``model.zip``), ``reconstruction.npz`` and the
    figures are written there, and nowhere else.
    """
    result = train(config, train_data, test_data, backend=backend)
    target = test_data if test_data is not None else train_data
    recon = reconstruct(result.model, target)
    truth = getattr(target, "object_guess", None)
    metrics = evaluate_against_truth(recon, truth)
    paths: dict[str, str] = {}
    if config.output_dir:
        paths = write_outputs(config.output_dir, recon, result.history, truth)
        paths["bundle"] = result.bundle_path
    results = {"train_result": result, "reconstruction": recon, "metrics": metrics, "paths": paths}
    return recon.amplitude, recon.phase, results
