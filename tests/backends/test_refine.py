"""Physics refinement in every backend: its loss and gradients against the float64 reference,
its fixed point at the truth, convergence from a flat start, bad pixels, the probe."""

from __future__ import annotations

import numpy as np
import pytest

from backend_testing import assert_close
from backends.common import refine
from parity import reference as R
from ptycho.config import ModelConfig
from ptycho.data.scaling import intensity_scale, normalisation_factor, normalise_probe
from ptycho.metrics import compare_objects
from ptycho.physics import far_field_amplitude
from ptycho.simulate import simulate_dataset
from ptycho.simulate.dataset import object_patches
from ptycho.weights import init_weights

N = 16


def _problem(noise=True, nphotons=1e6, n_patterns=100, seed=4):
    """A simulated scan in the model's units: (positions, photon-unit amplitudes, truth,
    normalised probe, log intensity scale). A disk probe: at N=16 a defocused one spills
    out of the patch and stalls any engine."""
    raw, truth = simulate_dataset(n_patterns, N, object="grf", probe="disk", scan="grid",
                                  step=4, nphotons=nphotons, seed=seed, noise=noise)
    s = normalisation_factor(raw.diffraction) * intensity_scale(nphotons, N)
    d = (raw.diffraction * s).astype(np.float32)
    pos = np.stack([raw.xcoords, raw.ycoords], 1)
    return pos, d, truth, normalise_probe(raw.probe, 4.0), float(np.log(intensity_scale(nphotons, N)))


def _model(backend, probe, log_scale, **opts):
    cfg = ModelConfig(N=N, base_filters=1, n_filters_scale=1, **opts)
    return backend.build_model(cfg, init_weights(cfg, 0, probe, log_scale))


@pytest.mark.parametrize("subpixel", [False, True], ids=["grid", "sub-pixel"])
@pytest.mark.parametrize("masked", [False, True], ids=["all pixels", "bad pixels"])
def test_loss_and_gradients_match_the_float64_reference(backend, masked, subpixel):
    """On the scan's integer grid (the patch is a window of the object) and off it (an
    interpolated one)."""
    pos, d, truth, probe, log_scale = _problem(n_patterns=25)
    rng = np.random.default_rng(0)
    if subpixel:
        pos = pos + rng.uniform(-0.5, 0.5, pos.shape)
    obj = (0.3 * np.exp(0.4j * rng.normal(size=truth.shape))).astype(np.complex64)
    mask = (rng.uniform(size=(N, N)) > 0.1) if masked else None
    if masked:      # garbage in bad pixels must not matter
        d = d.copy()
        d[:, ~mask] = np.nan
    refiner = _model(backend, probe, log_scale, probe_mask=True).refiner(obj, refine_probe=True)
    got = refiner.gradients(pos, d, mask)
    want = R.refine_gradients(obj, probe, log_scale, pos, np.nan_to_num(d), 1e-6, mask,
                              probe_mask=True)
    assert_close(got["nll"], want["nll"], "loss.terms", scale=np.mean(2 * np.nan_to_num(d) ** 2))
    top = max(np.abs(want["object"]).max(), np.abs(want["probe"]).max())
    for name in ("object", "probe"):
        assert got[name].dtype == np.complex64
        assert_close(got[name], want[name], "gradients.entry",
                     scale=np.abs(want[name]).max() + 2.0 ** -24 * top / 2e-5)


def test_the_truth_is_a_fixed_point(backend):
    """Noise-free data from the truth: the NLL there is ~0 (float32) and its gradient ~0, so a
    refinement started at the truth stays there."""
    pos, d, truth, probe, log_scale = _problem(noise=False, n_patterns=36)
    # the truth in the model's units: the data were normalised, so the object scales with it
    start = truth * _object_scale(truth, probe, log_scale, pos, d)
    refiner = _model(backend, probe, log_scale).refiner(start)
    g = refiner.gradients(pos, d)
    counts = float(np.mean(d.astype(np.float64) ** 2))
    assert g["nll"] <= 1e-4 * counts
    history = refine.run(refiner, pos, d, 3, batch_size=16)
    obj, _ = refiner.result()
    assert max(history) <= 1e-3 * counts
    assert np.abs(obj - start).max() <= 0.05 * np.abs(start).max()


def _object_scale(truth, probe, log_scale, pos, d):
    """The factor that maps the simulated object into the model's units (the data were
    normalised): least squares of the predicted against the measured total counts."""
    a = far_field_amplitude(probe * object_patches(truth, pos, N)) * np.exp(log_scale)
    return float(np.sqrt(np.sum(d.astype(np.float64) ** 2) / np.sum(a ** 2)))


def test_refinement_from_a_flat_object_recovers_the_truth(backend):
    pos, d, truth, probe, log_scale = _problem(nphotons=1e7, n_patterns=100)
    # a flat object of the right mean amplitude (the network's start is about that scale)
    level = np.abs(truth).mean() * _object_scale(truth, probe, log_scale, pos, d)
    flat = np.full(truth.shape, level, np.complex64)
    refiner = _model(backend, probe, log_scale).refiner(flat)
    history = refine.run(refiner, pos, d, 25, batch_size=32, seed=1)
    obj, probe_out = refiner.result()
    h, w = truth.shape
    region = (N // 2, h - N // 2, N // 2, w - N // 2)
    m = compare_objects(obj, truth, region=region)
    assert history[-1] < 0.05 * history[0]
    assert m["amplitude"]["ssim"] >= 0.9 and m["phase"]["ssim"] >= 0.9, m
    np.testing.assert_array_equal(probe_out, probe)      # not refined unless asked


def test_probe_refinement_moves_the_probe_and_lowers_the_loss(backend):
    pos, d, truth, probe, log_scale = _problem(nphotons=1e7, n_patterns=64)
    start = (truth * _object_scale(truth, probe, log_scale, pos, d)).astype(np.complex64)
    blurred = (probe * np.exp(0.3j)).astype(np.complex64) * 0.9
    model = _model(backend, blurred, log_scale)
    frozen = model.refiner(start)
    free = model.refiner(start, refine_probe=True)
    h_frozen = refine.run(frozen, pos, d, 8, batch_size=16)
    h_free = refine.run(free, pos, d, 8, batch_size=16)
    assert np.abs(free.result()[1] - blurred).max() > 1e-3 * np.abs(blurred).max()
    assert h_free[-1] < h_frozen[-1]


def test_bad_input_is_refused(backend):
    pos, d, truth, probe, log_scale = _problem(n_patterns=16)
    model = _model(backend, probe, log_scale)
    with pytest.raises(ValueError, match="smaller than a patch"):
        model.refiner(np.ones((8, 40), np.complex64))
    with pytest.raises(ValueError, match="finite"):
        model.refiner(np.full(truth.shape, np.nan, np.complex64))
    refiner = model.refiner(np.ones(truth.shape, np.complex64))
    with pytest.raises(ValueError, match="one position per pattern"):
        refiner.step(pos[:3], d[:4])
    with pytest.raises(ValueError, match="iterations"):
        refine.run(refiner, pos, d, -1)
    with pytest.raises(ValueError, match="batch_size"):
        refine.run(refiner, pos, d, 1, batch_size=0)
    with pytest.raises(ValueError, match="momentum"):
        refine.run(refiner, pos, d, 1, momentum=1.0)
    with pytest.raises(ValueError, match="finite"):
        refiner.set_object(np.ones((8, 40), np.complex64))


def test_momentum_converges_faster(backend):
    """run's default momentum against none, from the same flat start: a lower NLL and a
    better object after 8 passes (measured: NLL 25 against 52, amplitude SSIM 0.97 against
    0.96)."""
    pos, d, truth, probe, log_scale = _problem(nphotons=1e7, n_patterns=100)
    level = np.abs(truth).mean() * _object_scale(truth, probe, log_scale, pos, d)
    flat = np.full(truth.shape, level, np.complex64)
    h, w = truth.shape
    region = (N // 2, h - N // 2, N // 2, w - N // 2)
    runs = {}
    for momentum in (0.0, refine.MOMENTUM):
        refiner = _model(backend, probe, log_scale).refiner(flat)
        history = refine.run(refiner, pos, d, 8, batch_size=32, seed=1, momentum=momentum)
        runs[momentum] = history[-1], compare_objects(refiner.result()[0], truth, region=region)
    (nll_plain, plain), (nll, pushed) = runs[0.0], runs[refine.MOMENTUM]
    assert nll < 0.7 * nll_plain, (nll, nll_plain)
    for part in ("amplitude", "phase"):
        assert pushed[part]["ssim"] > plain[part]["ssim"], (part, pushed, plain)


def test_a_repeat_refiner_restarts_the_last_one(backend):
    """model.refiner with the previous call's settings and object shape reuses its variables
    and compiled step: the same result as a refiner of a fresh model, the old one retired."""
    pos, d, truth, probe, log_scale = _problem(nphotons=1e7, n_patterns=36)
    level = np.abs(truth).mean() * _object_scale(truth, probe, log_scale, pos, d)
    model = _model(backend, probe, log_scale)
    first = model.refiner(np.full(truth.shape, 2 * level, np.complex64))
    refine.run(first, pos, d, 2, batch_size=16)
    start = np.full(truth.shape, level, np.complex64)
    again = model.refiner(start)
    assert again is not first
    with pytest.raises(RuntimeError, match="restarted"):
        first.step(pos[:4], d[:4])
    with pytest.raises(RuntimeError, match="restarted"):
        first.result()
    h_again = refine.run(again, pos, d, 3, batch_size=16)
    new = _model(backend, probe, log_scale).refiner(start)
    h_new = refine.run(new, pos, d, 3, batch_size=16)
    np.testing.assert_allclose(h_again, h_new, rtol=1e-5)
    np.testing.assert_allclose(again.result()[0], new.result()[0], rtol=0, atol=1e-6)
    # another shape: a refiner of its own (the last one stays usable)
    other = model.refiner(np.full((truth.shape[0], truth.shape[1] + 2), level, np.complex64))
    assert other is not again
    again.result()
