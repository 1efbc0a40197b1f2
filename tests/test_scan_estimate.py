"""The scan's stitched back-propagated estimate (ptycho.scan_estimate) and how the data,
the model and the workflows carry it (ModelConfig.estimate_scope="scan")."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from ptycho.batch import Batch
from ptycho.data.scaling import normalisation_factor
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.errors import ConfigError
from ptycho.physics.model import backprop_estimate
from ptycho.scan_estimate import ScanEstimate, scan_estimate_patches
from ptycho.simulate import simulate_dataset
from ptycho.simulate.objects import gaussian_random_field
from ptycho.simulate.probes import defocused_probe

N = 32


def _weak_object_scan(seed: int = 0, step: float = 4.0):
    """A weak phase object (an in-line hologram with the defocused probe: object plus twin
    per pattern) scanned on a jittered raster, noise-free."""
    rng = np.random.default_rng(seed)
    side = 96
    phase = gaussian_random_field((side, side), rng, correlation_length=3.0)
    obj = np.exp(0.4j * (phase - phase.mean()) / phase.std()).astype(np.complex64)
    g = np.arange(N // 2 + 2, side - N // 2 - 2, step)
    pos = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + rng.uniform(-0.5, 0.5, (len(g) ** 2, 2))
    raw, _ = simulate_dataset(N=N, object=obj, probe=defocused_probe(N), scan=pos,
                              noise=False, nphotons=1e6)
    return raw, obj, pos


def _crop(obj, pos):
    return np.stack([obj[int(y) - N // 2:int(y) + N // 2, int(x) - N // 2:int(x) + N // 2]
                     for x, y in np.rint(pos)])


def test_the_stitched_estimate_is_closer_to_the_object_than_each_patterns_own():
    raw, obj, pos = _weak_object_scan()
    pos = np.rint(pos)          # whole pixels: the truth's crops are exact
    raw = type(raw)(raw.diffraction, raw.probe, pos[:, 0], pos[:, 1])
    truth = _crop(obj, pos)
    centre = slice(N // 4, 3 * N // 4)       # where each pattern's probe is
    scan = scan_estimate_patches(raw.diffraction, pos, raw.probe)
    own = backprop_estimate(raw.diffraction, raw.probe)

    def phase_error(est):
        # the phase's deviation from the truth, the common offset of each patch removed
        d = np.angle(est[:, centre, centre] * np.conj(truth[:, centre, centre]))
        return float(np.mean(np.abs(d - np.median(d, axis=(1, 2), keepdims=True))))

    assert phase_error(scan) < 0.8 * phase_error(own), (phase_error(scan), phase_error(own))


def test_the_estimate_is_linear_in_the_amplitudes_and_reads_a_reader_like_an_array():
    raw, _, pos = _weak_object_scan(1)
    a = raw.diffraction
    base = scan_estimate_patches(a, pos, raw.probe)
    np.testing.assert_allclose(scan_estimate_patches(3.0 * a, pos, raw.probe), 3.0 * base,
                               rtol=1e-5, atol=1e-6 * np.abs(base).max())
    read = ScanEstimate.from_patterns(lambda rows: a[rows], pos, raw.probe).patches(pos)
    np.testing.assert_array_equal(read, base)


def test_bad_pixels_are_read_as_zero():
    raw, _, pos = _weak_object_scan(2)
    mask = np.ones((N, N), bool)
    mask[3, 5] = mask[N // 2, N // 2 + 1] = False
    garbage = raw.diffraction.copy()
    garbage[:, ~mask] = 1e6
    clean = raw.diffraction * mask
    np.testing.assert_array_equal(scan_estimate_patches(garbage, pos, raw.probe, mask=mask),
                                  scan_estimate_patches(clean, pos, raw.probe))


def test_patches_interpolate_the_canvas_bilinearly_at_sub_pixel_positions():
    rows, cols = np.mgrid[0:40, 0:50]
    canvas = (2.0 * cols + 0.5j * rows).astype(np.complex128)   # linear: bilinear is exact
    est = ScanEstimate(canvas, (-3.0, 4.0), 8)
    pos = np.array([[[10.25, 20.5], [17.0, 14.75]]])            # (1, 2, 2): any leading shape
    out = est.patches(pos)
    assert out.shape == (1, 2, 8, 8) and out.dtype == np.complex64
    for k, (x, y) in enumerate(pos[0]):
        c0, r0 = x - (-3.0) - 4, y - 4.0 - 4            # canvas (column, row) of patch pixel 0
        want = 2.0 * (c0 + np.arange(8))[None, :] + 0.5j * (r0 + np.arange(8))[:, None]
        np.testing.assert_allclose(out[0, k], want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"1 of 2 positions put the 8 x 8 patch off the "
                       r"stitched scan; first: index 1 \(x=200, y=20\); allowed x in \[1, 43\]"):
        est.patches(np.array([[10.0, 20.0], [200.0, 20.0]]))


def test_bad_arguments_are_named():
    p = np.ones((8, 8), complex)
    a = np.ones((3, 8, 8), np.float32)
    pos = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"amplitude must be \(3, 8, 8\)"):
        ScanEstimate.from_patterns(a[:, :4], pos, p)
    with pytest.raises(ValueError, match="positions must be"):
        ScanEstimate.from_patterns(a, pos[:, :1], p)
    with pytest.raises(ValueError, match="probe must be a square"):
        ScanEstimate.from_patterns(a, pos, p[:4])
    with pytest.raises(ValueError, match=r"mask must be \(8, 8\) or \(3, 8, 8\)"):
        ScanEstimate.from_patterns(a, pos, p, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"the reader gave shape \(2, 8, 8\)"):
        ScanEstimate.from_patterns(lambda rows: a[:2], pos, p)
    with pytest.raises(ValueError, match="finite"):
        ScanEstimate(np.zeros((4, 4)), (0, 0), 2).patches(np.array([[np.nan, 0.0]]))


def test_config_checks_the_scope():
    with pytest.raises(ConfigError, match="estimate_scope='scan' needs backprop_estimate=True"):
        ModelConfig(estimate_scope="scan")
    with pytest.raises(ConfigError, match="estimate_scope"):
        ModelConfig(backprop_estimate=True, estimate_scope="scans")
    assert ModelConfig(backprop_estimate=True, estimate_scope="scan").input_channels == 3


def test_batch_checks_the_estimate():
    d = np.ones((2, 1, 8, 8), np.float32)
    rel = np.zeros((2, 1, 2), np.float32)
    with pytest.raises(ValueError, match=r"Batch.estimate must be \(2, 1, 8, 8\)"):
        Batch(d, rel, 8, estimate=np.ones((2, 1, 8, 4), np.complex64))
    with pytest.raises(ValueError, match="Batch.estimate must be complex"):
        Batch(d, rel, 8, estimate=np.ones((2, 1, 8, 8), np.float32))
    b = Batch(d, rel, 8, estimate=np.arange(2.0)[:, None, None, None] * np.ones((2, 1, 8, 8)) + 0j)
    assert b.take(slice(1, 2)).estimate[0, 0, 0, 0] == 1.0


def test_grouped_data_carries_the_scan_estimate_in_photon_units():
    from ptycho.data.grouping import group_data

    raw, _, pos = _weak_object_scan(3)
    cfg = ModelConfig(N=N, gridsize=2, backprop_estimate=True, estimate_scope="scan")
    gd = group_data(raw, cfg, nphotons=1e6)
    assert gd.estimate.shape == gd.diffraction.shape and gd.estimate.dtype == np.complex64
    # the estimate of the grouped (scaled) amplitudes: linear, so the scale carries over
    from ptycho.data.scaling import normalise_probe

    est = ScanEstimate.from_patterns(raw.diffraction, pos, normalise_probe(raw.probe, 4.0))
    scale = gd.normalisation * gd.intensity_scale
    np.testing.assert_allclose(gd.estimate, est.patches(pos[gd.indices]) * scale, rtol=1e-4,
                               atol=1e-5 * np.abs(gd.estimate).max())
    assert gd.batch(slice(1, 3)).estimate.shape == (2, 4, N, N)
    assert group_data(raw, ModelConfig(N=N, backprop_estimate=True), 1e6).estimate is None


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_a_scan_model_needs_its_estimate_and_uses_it(backend):
    pytest.importorskip(backend)
    from backends import get_backend
    from ptycho.data.grouping import group_data
    from ptycho.weights import init_weights

    raw, _, _ = _weak_object_scan(4)
    cfg = ModelConfig(N=N, base_filters=2, n_filters_scale=1, backprop_estimate=True,
                      estimate_scope="scan")
    gd = group_data(raw, cfg, nphotons=1e6)
    model = get_backend(backend).build_model(
        cfg, init_weights(cfg, 0, gd.probe, float(np.log(gd.intensity_scale))))
    d, e = gd.diffraction[:4], gd.estimate[:4]
    with pytest.raises(ValueError, match="estimate is required"):
        model.predict(d)
    with pytest.raises(ValueError, match=r"estimate must be complex \(4, 1, 32, 32\)"):
        model.predict(d, estimate=e[:, :, :16])
    with pytest.raises(ValueError, match="Batch.estimate is required"):
        model.forward(Batch(d, gd.rel_offsets[:4], gd.canvas_size))
    patches = model.predict(d, estimate=e)
    assert np.all(np.isfinite(patches))
    # the phase starts from the estimate's: another estimate, another object
    assert not np.allclose(model.predict(d, estimate=e * 1j), patches, atol=1e-3)
    plain = get_backend(backend).build_model(ModelConfig(N=N, base_filters=2, n_filters_scale=1),
                                             init_weights(ModelConfig(N=N, base_filters=2,
                                                                      n_filters_scale=1), 0,
                                                          gd.probe, 0.0))
    with pytest.raises(ValueError, match="estimate was given, but this model takes none"):
        plain.predict(d, estimate=e)


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_train_and_reconstruct_with_the_scan_estimate(backend, tmp_path, monkeypatch):
    pytest.importorskip(backend)
    from ptycho.workflows import load_inference_bundle, reconstruct, train
    from ptycho.workflows.reconstruct import scan_estimate

    raw, _, _ = _weak_object_scan(5, step=6.0)
    cfg = TrainingConfig(model=ModelConfig(N=N, base_filters=2, n_filters_scale=1,
                                           backprop_estimate=True, estimate_scope="scan"),
                         nepochs=1, batch_size=8, nphotons=1e6)
    result = train(cfg, raw, backend=backend)
    rec = reconstruct(result.model, raw)
    assert np.all(np.isfinite(rec.obj)) and np.any(rec.obj)
    assert scan_estimate(result.model, raw).canvas.shape[0] > N
    # the scan's scale is one pass over the patterns, shared by the network's input, the
    # estimate and refinement, with the values each computing its own gave
    module = importlib.import_module("ptycho.workflows.reconstruct")
    counted = []
    monkeypatch.setattr(module, "normalisation_factor",
                        lambda *a: counted.append(1) or normalisation_factor(*a))
    refined = reconstruct(result.model, raw, refine=1)
    assert len(counted) == 1
    np.testing.assert_array_equal(refined.network_obj, rec.obj)
    alone = module.refine_object(result.model, rec.obj, raw, 1)
    np.testing.assert_array_equal(refined.obj, alone["obj"])
    monkeypatch.undo()
    # from grouped data (gridsize 2: each pattern in about four groups) each pattern counts
    # once, so the estimate is the one group_data gave the groups
    from ptycho.data.grouping import group_data

    grouped_cfg = ModelConfig(N=N, gridsize=2, backprop_estimate=True, estimate_scope="scan")
    gd = group_data(raw, grouped_cfg, nphotons=1e6)
    est = scan_estimate(result.model, gd).patches(
        gd.global_offsets[:, None, :] + gd.rel_offsets.astype(np.float64))
    np.testing.assert_allclose(est, gd.estimate, rtol=1e-4, atol=1e-4 * np.abs(gd.estimate).max())
    path = tmp_path / "model.zip"
    result.model.save(path)
    loaded, config = load_inference_bundle(path, backend=backend)
    assert config.model.estimate_scope == "scan"
    np.testing.assert_array_equal(reconstruct(loaded, raw).obj, rec.obj)

