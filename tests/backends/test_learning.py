"""The PINN learns in every backend: simulated scan -> core driver -> stitched reconstruction.

Uses the core end to end (``ptycho.simulate``, ``ptycho.data.group_data``, ``ptycho.training.fit``,
``ptycho.stitching``, ``ptycho.metrics``); only the model is the backend's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data.grouping import group_data
from ptycho.data.scaling import initial_log_intensity_scale
from ptycho.metrics import compare_objects
from ptycho.physics.losses import LossSettings
from ptycho.simulate import simulate_dataset
from ptycho.simulate.objects import grf_object
from ptycho.stitching import stitch_patches
from ptycho.training import evaluate, fit
from ptycho.weights import init_weights

pytestmark = pytest.mark.slow

#: Training must at least halve the Poisson NLL (the issue's bar; observed: / 100 or more).
NLL_RATIO_MAX = 0.5
#: Stitched SSIM after training, amplitude and phase each (observed: amplitude 0.86-0.88,
#: phase 0.66-0.73 in both backends at gridsize 1 and 2).
SSIM_MIN = 0.6
#: The phase must rise by this much over the untrained model (observed +0.36 .. +0.42). The
#: untrained amplitude is already ~0.87 on this smooth object: the intensity match
#: (ModelConfig.match_intensity) sets each patch's level from its pattern's total, so the
#: amplitude must only not fall by more than SSIM_AMPLITUDE_SLACK (observed -0.013 .. +0.016).
SSIM_GAIN_MIN = 0.15
SSIM_AMPLITUDE_SLACK = 0.03

N = 32
NPHOTONS = 1e6


@pytest.fixture(scope="module")
def scan():
    """256 patterns on a grid over a smooth 96 x 96 object (correlation length 8 px)."""
    obj = grf_object((96, 96), np.random.default_rng(1), correlation_length=8.0)
    raw, truth = simulate_dataset(256, N, nphotons=NPHOTONS, seed=1, scan="grid", object=obj,
                                  probe="disk")
    return raw, truth


def _region(raw):
    """The scanned area (rows and columns between the extreme scan positions)."""
    x, y = raw.xcoords, raw.ycoords
    return (int(math.ceil(y.min())), int(y.max()) + 1, int(math.ceil(x.min())), int(x.max()) + 1)


def _ssim(model, data, truth, region):
    patches = model.predict(data.diffraction, batch_size=64)
    rec = stitch_patches(patches, data.global_offsets, data.rel_offsets, shape=truth.shape,
                         window=np.abs(data.probe) ** 2)
    m = compare_objects(rec, truth, region=region)
    return m["amplitude"]["ssim"], m["phase"]["ssim"]


@pytest.mark.parametrize("gridsize, realspace_weight", [(1, 0.0), (2, 1000.0)])
def test_training_learns_the_object(framework_backend, scan, gridsize, realspace_weight):
    raw, truth = scan
    cfg = ModelConfig(N=N, gridsize=gridsize, base_filters=8, n_filters_scale=1)
    training = TrainingConfig(model=cfg, nepochs=20, batch_size=16, learning_rate=1e-3,
                              realspace_weight=realspace_weight, nphotons=NPHOTONS,
                              neighbor_count=4, seed=0)
    data = group_data(raw, cfg, NPHOTONS, neighbor_count=4, seed=0)
    weights = init_weights(cfg, 0, data.probe, initial_log_intensity_scale(NPHOTONS, N))
    model = framework_backend.build_model(cfg, weights)
    settings = LossSettings.from_config(training)
    region = _region(raw)

    before = evaluate(model, data, settings, 64)
    ssim_before = _ssim(model, data, truth, region)
    history = fit(model, data, training)
    after = evaluate(model, data, settings, 64)
    ssim_after = _ssim(model, data, truth, region)

    print(f"\n{framework_backend.name} gridsize {gridsize}: {len(data)} groups, nll {before['nll']:.2f} -> "
          f"{after['nll']:.2f}; SSIM amplitude {ssim_before[0]:.3f} -> {ssim_after[0]:.3f}, "
          f"phase {ssim_before[1]:.3f} -> {ssim_after[1]:.3f}; "
          f"{sum(r.seconds for r in history.epochs):.1f} s training")
    assert len(history.epochs) == 20 and all(math.isfinite(r.loss["total"])
                                             for r in history.epochs)
    assert after["nll"] <= NLL_RATIO_MAX * before["nll"]
    assert history.epochs[-1].loss["nll"] < history.epochs[0].loss["nll"]
    assert min(ssim_after) >= SSIM_MIN, (ssim_before, ssim_after)
    assert ssim_after[0] >= ssim_before[0] - SSIM_AMPLITUDE_SLACK, ("amplitude", ssim_before,
                                                                   ssim_after)
    assert ssim_after[1] >= ssim_before[1] + SSIM_GAIN_MIN, ("phase", ssim_before, ssim_after)


#: How far above the constant-image floor the natural-image fit must end, in SSIM, amplitude
#: and phase each. Measured (torch): the floor scores 0.21 / 0.02; 12 epochs of a network 8
#: wide ended below it in amplitude (0.15); 40 epochs at width 16 reach 0.32 / 0.20.
NATURAL_MARGIN = 0.05


@pytest.fixture(scope="module")
def natural_scan():
    """A natural-image object (amplitude: the camera picture, phase: the brick texture, from
    scikit-image's bundled data) on a 12 x 12 grid, 4 px step, defocused probe of radius N/4."""
    pytest.importorskip("skimage", reason="natural-image objects need scikit-image: pip install "
                                          "'ptycho-pinn[quality]'")
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:      # benchmarks/ is a folder of the repo, not an installed package
        sys.path.insert(0, root)
    from benchmarks.quality.objects import natural_image
    from ptycho.simulate import image_object
    from ptycho.simulate.probes import defocused_probe

    side = 11 * 4 + N
    obj = image_object(natural_image("camera", side), phase_image=natural_image("brick", side))
    return simulate_dataset(144, N, nphotons=1e9, seed=3, scan="grid", step=4, object=obj,
                            probe=defocused_probe(N, radius=N / 4))


def test_training_on_a_natural_image_ends_above_the_constant_floor(framework_backend,
                                                                    natural_scan):
    """Issue 11: on natural-image objects training once ended at or below a constant image.
    The default model (per-pattern network, intensity match) at gridsize 2 must fit the
    object it trains on clearly above that floor, amplitude and phase."""
    raw, truth = natural_scan
    cfg = ModelConfig(N=N, gridsize=2, base_filters=16, n_filters_scale=1)
    training = TrainingConfig(model=cfg, nepochs=40, batch_size=16, learning_rate=1e-3,
                              nphotons=1e9, neighbor_count=4, seed=0)
    data = group_data(raw, cfg, 1e9, neighbor_count=4, seed=0)
    weights = init_weights(cfg, 0, data.probe, initial_log_intensity_scale(1e9, N))
    model = framework_backend.build_model(cfg, weights)
    region = _region(raw)
    fit(model, data, training)
    ssim = _ssim(model, data, truth, region)
    floor = compare_objects(np.ones_like(truth), truth, region=region)
    floor = floor["amplitude"]["ssim"], floor["phase"]["ssim"]
    print(f"\n{framework_backend.name} natural image: SSIM amplitude {ssim[0]:.3f} (floor "
          f"{floor[0]:.3f}), phase {ssim[1]:.3f} (floor {floor[1]:.3f})")
    assert ssim[0] >= floor[0] + NATURAL_MARGIN, ("amplitude", ssim, floor)
    assert ssim[1] >= floor[1] + NATURAL_MARGIN, ("phase", ssim, floor)
