"""``run_cdi_example``: train, reconstruct, and (with an output folder) save everything."""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from ptycho.atomic import atomic_save_npz
from ptycho.config.schema import TrainingConfig
from ptycho.figures import save_comparison_figure, save_loss_figure, save_object_figure
from ptycho.metrics import (METRIC_COVERAGE_THRESHOLD, compare_objects, metric_region,
                            scanned_area)
from ptycho.physics.losses import LossSettings
from ptycho.workflows.reconstruct import Reconstruction, reconstruct
from ptycho.workflows.train import DataLike, train

RECONSTRUCTION_NAME = "reconstruction.npz"
FIGURE_NAMES = {"object": "reconstruction.png", "loss": "loss.png", "comparison": "comparison.png"}


def save_reconstruction(path: str, recon: Reconstruction) -> None:
    """The stitched object, its amplitude, phase, coverage and positions as one NPZ (atomic);
    after refinement also the network's object (``network_obj``) and the probe it ended with."""
    extra = {} if recon.refinement is None else {"network_obj": recon.network_obj,
                                                  "refined_probe": recon.refinement["probe"]}
    atomic_save_npz(path, obj=recon.obj, amplitude=recon.amplitude.astype(np.float32),
                    phase=recon.phase.astype(np.float32), coverage=recon.coverage.astype(np.float32),
                    positions=recon.positions, **extra)


def evaluate_against_truth(recon: Reconstruction, truth: Optional[np.ndarray]) -> Optional[dict]:
    """Metrics of the scored region against ``truth`` (:func:`ptycho.metrics.compare_objects`).

    The region is :func:`ptycho.metrics.metric_region` of the reconstruction's coverage: the
    box of pixels lit to at least :data:`ptycho.metrics.METRIC_COVERAGE_THRESHOLD` of the
    best-lit pixel; it is returned as ``"region"`` (row0, row1, col0, col1) with the
    threshold as ``"coverage_threshold"``. None when there is no ground truth, its shape
    differs from the reconstruction's, or the box is smaller than the SSIM window.
    """
    if truth is None or truth.shape != recon.obj.shape:
        return None
    box = metric_region(recon.coverage)
    if box is None:
        return None
    metrics = compare_objects(recon.obj, truth, region=box)
    metrics["region"] = box
    metrics["coverage_threshold"] = METRIC_COVERAGE_THRESHOLD
    return metrics


def write_outputs(output_dir: str, recon: Reconstruction, history=None,
                  truth: Optional[np.ndarray] = None,
                  loss_settings: Optional[LossSettings] = None) -> dict[str, str]:
    """Reconstruction NPZ and PNG figures into ``output_dir``; returns their paths by kind.

    With a ``history`` the loss figure is drawn too; it needs the ``loss_settings`` the
    model was trained with (their weights say which terms were part of the loss).
    """
    if history is not None and history.epochs and loss_settings is None:
        raise ValueError("write_outputs: drawing the loss of a history needs its loss_settings "
                         "(LossSettings.from_config(config))")
    os.makedirs(output_dir, exist_ok=True)
    paths = {"reconstruction": os.path.join(output_dir, RECONSTRUCTION_NAME)}
    save_reconstruction(paths["reconstruction"], recon)
    covered = scanned_area(recon.coverage)     # the scan, not the probe's faint tails
    paths["object_figure"] = os.path.join(output_dir, FIGURE_NAMES["object"])
    save_object_figure(paths["object_figure"], recon.obj, mask=covered)
    if history is not None and history.epochs:
        paths["loss_figure"] = os.path.join(output_dir, FIGURE_NAMES["loss"])
        save_loss_figure(paths["loss_figure"], history, loss_settings)
    if truth is not None and truth.shape == recon.obj.shape:
        paths["comparison_figure"] = os.path.join(output_dir, FIGURE_NAMES["comparison"])
        shown = ({"network": recon.network_obj, "refined": recon.obj}
                 if recon.refinement is not None else recon.obj)
        save_comparison_figure(paths["comparison_figure"], shown, truth, mask=covered)
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
        paths = write_outputs(config.output_dir, recon, result.history, truth,
                              LossSettings.from_config(config))
        paths["bundle"] = result.bundle_path
    results = {"train_result": result, "reconstruction": recon, "metrics": metrics, "paths": paths}
    return recon.amplitude, recon.phase, results
