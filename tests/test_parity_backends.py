"""TensorFlow vs PyTorch parity on the real backends (marker ``parity``: needs both frameworks).

Op-level properties draw inputs from :mod:`parity.strategies` under the ``ci`` / ``dev``
hypothesis profiles; whole-pipeline properties draw configs under :func:`parity_settings`.
Every comparison uses the harness's own compare functions and tolerance table, and on failure
prints the harness's report.
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import parity
import ptycho.physics as P
from parity.compare import compare_arrays
from parity.strategies import (complex_arrays, group_offsets, model_configs, nphotons, offsets,
                               parity_settings, probes, real_arrays, training_configs)
from parity.tolerances import tolerance

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def pair():
    from backends import get_backend
    return get_backend("tensorflow"), get_backend("torch")


def assert_parity(key, fn, ref, pair, scale=None):
    """Both backends against the float64 reference and against each other, under ``key``."""
    tol = tolerance(key)
    outs = [fn(b) for b in pair]
    diffs = [compare_arrays(o, ref, tol, name=f"{b.name}~ref", dtype="kind", reference=True,
                            scale=scale) for o, b in zip(outs, pair)]
    diffs.append(compare_arrays(outs[0], outs[1], tol, name="tensorflow~torch", scale=scale))
    for d in diffs:
        note(d.summary())
    assert all(d.ok for d in diffs), "; ".join(d.summary() for d in diffs if not d.ok)


# -- the acceptance run -----------------------------------------------------------------------
@pytest.mark.slow
def test_default_run_passes_every_stage_with_real_errors(tmp_path):
    report = parity.run()
    text = report.to_text()
    print(text)
    assert report.passed, text
    assert [s.name for s in report.stages] == list(parity.STAGE_NAMES)
    # real, non-zero errors: in every stage with float arithmetic, some comparison (A~B or
    # either side against the reference) has a non-zero error below its tolerance
    for s in report.stages:
        errors = [d.max_abs for c in s.checks for d in c.ab + (c.a_ref or []) + (c.b_ref or [])]
        assert max(errors) > 0, f"stage {s.name}: every error is exactly zero (self-comparison?)"
    for s in report.stages:
        for c in s.checks:
            assert c.ok
    report.write_json(tmp_path / "parity.json")


# -- op-level properties ----------------------------------------------------------------------
@given(data=st.data(), n=st.sampled_from([16, 32]), c=st.integers(1, 4))
def test_illumination_and_far_field(pair, data, n, c):
    probe = data.draw(probes(n))
    obj = data.draw(complex_arrays((2, c, n, n), max_amplitude=data.draw(st.sampled_from([1.0, 100.0]))))
    assert_parity("physics.illuminate", lambda b: b.illuminate(probe, obj), P.illuminate(probe, obj), pair)
    psi = P.illuminate(probe, obj).astype(np.complex64)
    assert_parity("physics.far_field", lambda b: b.far_field_amplitude(psi),
                  P.far_field_amplitude(psi), pair)


@given(data=st.data(), n=st.sampled_from([16, 32]), complex_=st.booleans())
def test_translation_with_subpixel_integer_and_negative_offsets(pair, data, n, complex_):
    shape = (2, 3, n, n)
    images = data.draw(complex_arrays(shape) if complex_ else real_arrays(shape, 0.0, 1.0))
    off = data.draw(offsets((2, 3), max_shift=n / 2))
    assert_parity("translate.translate", lambda b: b.translate(images, off),
                  P.translate(images, off), pair)


@given(data=st.data(), n=st.sampled_from([16, 32]), g=st.integers(1, 3), pad=st.booleans(),
       big=st.booleans())
def test_reassembly_extraction_and_overlap(pair, data, n, g, pad, big):
    rel = data.draw(group_offsets(2, g, n))
    m = P.canvas_size(n, rel)
    support = P.object_support(n, pad, big).astype(np.float32)
    patches = data.draw(complex_arrays((2, g * g, n, n)))
    assert_parity("translate.reassemble", lambda b: b.reassemble_patches(patches, rel, m, support),
                  P.reassemble_patches(patches, rel, m, support), pair)
    canvas = data.draw(complex_arrays((2, m, m)))
    assert_parity("translate.extract", lambda b: b.extract_patches(canvas, rel, n),
                  P.extract_patches(canvas, rel, n), pair)
    assert_parity("translate.overlap",
                  lambda b: b.extract_patches(b.reassemble_patches(patches, rel, m, support), rel, n),
                  P.overlap_constraint(patches, rel, m, support), pair)


@given(data=st.data(), photons=nphotons(), eps=st.sampled_from([1e-6, 1e-3]))
def test_loss_ops_over_many_decades_of_photons(pair, data, photons, eps):
    seed = data.draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    lam = rng.exponential(photons / 256.0, size=(3, 16, 16))
    obs = np.sqrt(rng.poisson(lam)).astype(np.float32)
    pred = (np.sqrt(lam) * np.exp(rng.normal(0, 0.3, lam.shape)) + 1e-3).astype(np.float32)
    p64, o64 = pred.astype(np.float64), obs.astype(np.float64)
    assert_parity("loss.ops", lambda b: np.float64(b.poisson_nll(pred, obs, eps)),
                  np.float64(P.poisson_nll(pred, obs, eps)), pair,
                  scale=float(np.mean(p64 ** 2 + o64 ** 2)))
    assert_parity("loss.ops", lambda b: np.float64(b.mae(pred, obs)), np.float64(P.mae(pred, obs)),
                  pair, scale=float(np.mean(p64 + o64)))


# -- whole-pipeline properties ----------------------------------------------------------------
@parity_settings(max_examples=3)
@given(config=training_configs(models=model_configs(max_width=4)))
def test_network_losses_gradients_and_steps_on_drawn_configs(pair, config):
    report = parity.run(config, stages="network,loss,gradients,optimizer", backends=pair,
                        steps=2, seed=config.seed)
    assert report.passed, report.to_text()


@pytest.mark.slow
@parity_settings(max_examples=2)
@given(model=model_configs(sizes=(16,), max_width=4))
def test_bundles_cross_backends_on_drawn_configs(pair, model):
    report = parity.run(model, stages="bundle", backends=("tensorflow", "torch"))
    assert report.passed, report.to_text()


@pytest.mark.parametrize("gridsize, central", [(1, False), (2, True)])
def test_skip_connections_pass_every_stage(pair, gridsize, central):
    """``skip_connections``: each decoder level's first conv also takes the encoder's features
    of its size, in both models and the reference; every stage, bundles and training
    included, with the full and the central decoder (drawn configs may not hold it)."""
    from ptycho.config import ModelConfig, TrainingConfig

    model = ModelConfig(N=16, gridsize=gridsize, base_filters=2, n_filters_scale=1,
                        central_decoder=central, skip_connections=True)
    report = parity.run(TrainingConfig(model=model, batch_size=4, nphotons=1e5), backends=pair)
    assert report.passed, report.to_text()
    assert [s.name for s in report.stages] == list(parity.STAGE_NAMES)


@pytest.mark.parametrize("gridsize, amplitude", [(1, "input"), (2, "scale")])
def test_the_scan_estimate_input_passes_every_stage(pair, gridsize, amplitude):
    """``estimate_scope="scan"``: the estimate is an input of both models (packed beside the
    diffraction) and of the reference; every stage, bundles and training included, with
    either amplitude head (``estimate_amplitude``)."""
    from ptycho.config import ModelConfig, TrainingConfig

    model = ModelConfig(N=16, gridsize=gridsize, base_filters=2, n_filters_scale=1,
                        backprop_estimate=True, estimate_scope="scan",
                        estimate_amplitude=amplitude)
    report = parity.run(TrainingConfig(model=model, batch_size=4, nphotons=1e5), backends=pair)
    assert report.passed, report.to_text()
    assert [s.name for s in report.stages] == list(parity.STAGE_NAMES)
