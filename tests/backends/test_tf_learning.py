"""The TensorFlow PINN learns: on a small simulated scan, training through the core's driver
(ptycho.training.fit) lowers the Poisson NLL by more than half and the stitched
reconstruction beats the untrained one on SSIM against the ground truth.

Setup (N = 32, 256 patterns, a Gaussian-random-field object with correlation length 4 px, a
defocused probe, whose curved phase removes the twin-image ambiguity of a flat disk, and
widths 8/16/32): gridsize 1 with 256 groups, batch 16, 20 epochs (320 steps); gridsize 2
with 96 groups, batch 4, 30 epochs (720 steps). Gridsize 2 gets more, smaller steps: its
network has to carry four patterns through the same bottleneck. Measured on the 2-core
development CPU (see the report): NLL 160 -> 0.8 (g=1) and 160 -> 3.1 (g=2); SSIM
amplitude/phase 0.33/0.36 -> 0.40/0.50 (g=1) and 0.31/0.33 -> 0.36/0.40 (g=2).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

#: Training must at least halve the Poisson NLL (the issue's criterion).
NLL_RATIO_MAX = 0.5
#: Mean SSIM gain over amplitude and phase that counts as a clear margin (measured 0.056 at
#: gridsize 2, 0.11 at gridsize 1); each of the two must improve as well.
SSIM_MARGIN = 0.04

N = 32
NPHOTONS = 1e5


def _scan():
    from ptycho.simulate import grf_object, simulate_dataset
    obj = grf_object((152, 152), np.random.default_rng(0), correlation_length=4.0)
    return simulate_dataset(256, N, object=obj, probe="defocus", nphotons=NPHOTONS, seed=0)


def _region(raw):
    """The scanned interior: where the stitched central N/2 windows cover the object."""
    x, y = raw.xcoords, raw.ycoords
    q = N // 4
    return (int(np.ceil(y.min())) - q + 1, int(np.floor(y.max())) + q - 1,
            int(np.ceil(x.min())) - q + 1, int(np.floor(x.max())) + q - 1)


@pytest.mark.parametrize("gridsize, n_groups, batch_size, nepochs, lr", [
    (1, None, 16, 20, 2e-3),
    (2, 96, 4, 30, 1e-3),
])
def test_training_lowers_nll_and_improves_the_reconstruction(gridsize, n_groups, batch_size,
                                                              nepochs, lr):
    from backends.registry import get_backend
    from ptycho.config.schema import ModelConfig, TrainingConfig
    from ptycho.data.grouping import group_data_for_training
    from ptycho.data.scaling import initial_log_intensity_scale
    from ptycho.metrics import compare_objects
    from ptycho.physics.losses import LossSettings
    from ptycho.stitching import stitch_patches
    from ptycho.training import evaluate, fit
    from ptycho.weights import init_weights

    raw, truth = _scan()
    cfg = ModelConfig(N=N, gridsize=gridsize, base_filters=8, n_filters_scale=1,
                      probe_big=False)
    tcfg = TrainingConfig(model=cfg, batch_size=batch_size, nepochs=nepochs, learning_rate=lr,
                          nphotons=NPHOTONS, n_groups=n_groups, neighbor_count=4, seed=0)
    data = group_data_for_training(raw, tcfg)
    weights = init_weights(cfg, 0, data.probe, initial_log_intensity_scale(NPHOTONS, N))
    model = get_backend("tensorflow").build_model(cfg, weights)
    settings = LossSettings.from_config(tcfg)
    region = _region(raw)

    def ssim():
        patches = model.predict(data.diffraction, batch_size=64)
        obj = stitch_patches(patches, data.global_offsets, data.rel_offsets, shape=truth.shape)
        scores = compare_objects(obj, truth, region=region)
        return scores["amplitude"]["ssim"], scores["phase"]["ssim"]

    nll0 = evaluate(model, data, settings, 64)["nll"]
    ssim0 = ssim()
    history = fit(model, data, tcfg)
    nll1 = evaluate(model, data, settings, 64)["nll"]
    ssim1 = ssim()
    report = (f"gridsize {gridsize}: NLL {nll0:.3f} -> {nll1:.3f} (ratio {nll1 / nll0:.4f}); "
              f"SSIM amplitude {ssim0[0]:.3f} -> {ssim1[0]:.3f}, phase {ssim0[1]:.3f} -> "
              f"{ssim1[1]:.3f}; {len(history.epochs)} epochs")
    print(report)
    assert len(history.epochs) == nepochs, report
    assert nll1 <= NLL_RATIO_MAX * nll0, report
    gains = (ssim1[0] - ssim0[0], ssim1[1] - ssim0[1])
    assert min(gains) > 0 and sum(gains) / 2 >= SSIM_MARGIN, report
