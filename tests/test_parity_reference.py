"""The float64 reference of the parity harness: layers, forward, exact gradients, Adam.

The reference is the oracle that says which backend drifted, so it is itself checked against
independent computations: direct loops, ``ptycho.physics``, adjoint identities and float64
central finite differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ptycho.physics as P
from parity import reference as R
from parity.inputs import group_offsets, make_probe
from ptycho.batch import Batch
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.physics import LossSettings
from ptycho.weights import init_weights, trainable_names


def test_conv2d_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3))
    k = rng.normal(size=(3, 3, 3, 4))
    b = rng.normal(size=4)
    out = R.conv2d(x, k, b)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for (n, r, c, o) in [(0, 0, 0, 0), (1, 4, 5, 3), (0, 2, 3, 1), (1, 0, 5, 2)]:
        want = b[o] + sum(xp[n, r + i, c + j, ci] * k[i, j, ci, o]
                          for i in range(3) for j in range(3) for ci in range(3))
        assert out[n, r, c, o] == pytest.approx(want, rel=1e-12)


def _dot(a, b):
    return float(np.sum(a * b))


def test_layer_backward_passes_are_adjoints():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 8, 3))
    k = rng.normal(size=(3, 3, 3, 2))
    g = rng.normal(size=(2, 8, 8, 2))
    gx, gk, gb = R.conv2d_backward(x, k, g)
    dx = rng.normal(size=x.shape)
    # conv is linear in x (without bias): <conv(dx), g> == <dx, gx>
    assert _dot(R.conv2d(dx, k, np.zeros(2)), g) == pytest.approx(_dot(dx, gx), rel=1e-10)
    dk = rng.normal(size=k.shape)
    assert _dot(R.conv2d(x, dk, np.zeros(2)), g) == pytest.approx(_dot(dk, gk), rel=1e-10)
    assert gb == pytest.approx(g.sum(axis=(0, 1, 2)))
    up = rng.normal(size=(2, 4, 4, 3))
    gu = rng.normal(size=(2, 8, 8, 3))
    assert _dot(R.upsample2(up), gu) == pytest.approx(_dot(up, R.upsample2_backward(gu)))
    pooled, arg = R.maxpool2(x)
    gp = rng.normal(size=pooled.shape)
    back = R.maxpool2_backward(arg, gp)
    assert np.count_nonzero(back) == gp.size
    assert _dot(back, x) == pytest.approx(_dot(gp, pooled))


def test_translation_adjoint_is_the_opposite_translation():
    rng = np.random.default_rng(2)
    img, y = rng.normal(size=(3, 12, 12)), rng.normal(size=(3, 12, 12))
    d = np.array([[1.3, -2.6], [-0.4, 0.0], [5.0, 3.5]])
    assert _dot(P.translate(img, d), y) == pytest.approx(_dot(img, P.translate(y, -d)), rel=1e-12)


def test_forward_agrees_with_ptycho_physics():
    cfg = ModelConfig(N=16, gridsize=2, base_filters=2, n_filters_scale=1, probe_mask=True)
    rng = np.random.default_rng(3)
    w = init_weights(cfg, 0, make_probe(16, 4.0, rng), 1.5)
    rel = group_offsets(rng, 2, 2, spacing=4.0)
    batch = Batch(rng.uniform(0, 20, (2, 4, 16, 16)).astype(np.float32), rel, P.canvas_size(16, rel))
    out = R.forward(cfg, w, batch)
    constrained, amp = P.physics_forward(out["object"], w["probe"], 1.5, cfg, rel, batch.canvas_size)
    np.testing.assert_allclose(out["object_constrained"], constrained, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["pred_amplitude"], amp, rtol=1e-12, atol=1e-12)
    # the network input is diffraction / exp(log_intensity_scale)
    np.testing.assert_allclose(out["object"],
                               R.network_patches(cfg, w, batch.diffraction / math.exp(1.5)))


def test_support_options_shape_the_object():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 2, (1, 1, 16, 16))
    base = dict(N=16, base_filters=1, n_filters_scale=1)
    only_centre = R.network_patches(ModelConfig(**base, pad_object=True, probe_big=False),
                                    init_weights(ModelConfig(**base, pad_object=True, probe_big=False),
                                                 0, np.ones((16, 16)), 0.0), x)
    assert np.all(only_centre[..., :4, :] == 0) and np.all(only_centre[..., 4:12, 4:12] != 0)
    cfg = ModelConfig(**base, pad_object=True, probe_big=True)
    full = R.network_patches(cfg, init_weights(cfg, 0, np.ones((16, 16)), 0.0), x)
    assert np.all(full != 0)


CASES = [
    dict(gridsize=2, pad_object=True, probe_big=True, probe_trainable=True, amp_activation="swish",
         match_intensity=False),
    dict(gridsize=2, pad_object=True, probe_big=True, probe_trainable=True),
    dict(gridsize=1, pad_object=True, probe_big=False, probe_trainable=True, probe_mask=True),
    dict(gridsize=3, pad_object=False, probe_big=False, amp_activation="softplus",
         intensity_scale_trainable=False, per_pattern_network=False),
    dict(gridsize=2, object_big=False, amp_activation="relu", probe_trainable=True,
         match_intensity=False, per_pattern_network=False),
    dict(gridsize=2, probe_trainable=True, probe_mask=True, per_pattern_network=False,
         match_intensity=False),
    # the central decoder (opt-in): with border heads on up-sampled features, and without
    dict(gridsize=2, pad_object=True, probe_big=True, central_decoder=True, probe_trainable=True,
         amp_activation="swish", match_intensity=False, per_pattern_network=False),
    dict(gridsize=2, pad_object=True, probe_big=False, central_decoder=True, probe_mask=True,
         per_pattern_network=False),
    dict(gridsize=1, pad_object=True, probe_big=True, central_decoder=True, probe_trainable=True),
    # the back-propagated estimate (opt-in): seen by the network and corrected by its heads
    # (the amplitude head scaling the estimate's magnitude, or giving the amplitude itself)
    dict(gridsize=1, pad_object=True, probe_big=True, probe_mask=True, backprop_estimate=True),
    dict(gridsize=1, pad_object=True, probe_big=True, probe_mask=True, backprop_estimate=True,
         estimate_amplitude="scale"),
    dict(gridsize=2, pad_object=True, probe_big=False, per_pattern_network=False,
         amp_activation="softplus", backprop_estimate=True, estimate_amplitude="scale"),
    dict(gridsize=2, pad_object=False, amp_activation="swish", match_intensity=False,
         backprop_estimate=True),
    # the scan's estimate, an input of the model (its level follows the intensity scale)
    dict(gridsize=1, pad_object=True, probe_big=True, backprop_estimate=True,
         estimate_scope="scan"),
    dict(gridsize=2, pad_object=True, probe_big=False, backprop_estimate=True,
         estimate_scope="scan", match_intensity=False),
    dict(gridsize=2, pad_object=True, probe_big=True, backprop_estimate=True,
         estimate_scope="scan", estimate_amplitude="scale"),
    # skip connections (opt-in): each decoder level also takes the encoder's features of its
    # size, whose gradient then reaches the encoder by two paths
    dict(gridsize=1, pad_object=True, probe_big=True, skip_connections=True),
    dict(gridsize=2, pad_object=True, probe_big=True, central_decoder=True,
         per_pattern_network=False, skip_connections=True),
    dict(gridsize=1, pad_object=True, probe_big=True, backprop_estimate=True,
         estimate_scope="scan", skip_connections=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradients_match_float64_finite_differences(case):
    cfg = ModelConfig(N=16, base_filters=2, n_filters_scale=1, **case)
    rng = np.random.default_rng(5)
    w = init_weights(cfg, 1, make_probe(16, 2.0, rng), 0.7)
    for name in w:
        if name.endswith(".bias"):
            w[name] = rng.uniform(-0.1, 0.1, w[name].shape).astype(np.float32)
    c = cfg.n_channels
    rel = group_offsets(rng, 2, cfg.gridsize, spacing=4.0, jitter=1.2)
    estimate = None
    if cfg.estimate_scope == "scan":
        estimate = (rng.normal(size=(2, c, 16, 16)) + 1j * rng.normal(size=(2, c, 16, 16))) * 3.0
    batch = Batch(np.sqrt(rng.poisson(30.0, (2, c, 16, 16))).astype(np.float32), rel,
                  P.canvas_size(16, rel), estimate=estimate)
    settings = LossSettings(1.0, 0.3, 0.7, 1e-3)
    terms, grads = R.gradients(cfg, w, batch, settings)
    assert list(grads) == trainable_names(cfg)
    assert terms == pytest.approx(R.losses(cfg, w, batch, settings))
    scale = max(float(np.linalg.norm(g)) for g in grads.values())
    assert scale > 1e-3, "a degenerate case: the loss does not depend on the weights"
    for name, g in grads.items():
        v = rng.normal(size=g.shape) + (1j * rng.normal(size=g.shape) if np.iscomplexobj(g) else 0)
        v = v / np.linalg.norm(v)
        fd = R.directional_derivative(cfg, w, batch, settings, name, v, h=1e-6)
        analytic = float(np.real(np.sum(np.conj(g) * v)))
        assert abs(fd - analytic) <= 1e-6 * scale + 1e-5 * np.linalg.norm(g), (name, fd, analytic)


def test_adam_step_by_hand():
    state = R.AdamState(0.9, 0.999, 1e-7)
    w = {"a": np.array([1.0, -2.0], np.float32), "p": np.array([1 + 1j], np.complex64)}
    g = {"a": np.array([0.5, 0.0], np.float32), "p": np.array([2 - 4j], np.complex64)}
    out = R.adam_step(state, w, g, 0.01)
    # step 1: alpha = lr sqrt(1 - b2) / (1 - b1); m = 0.1 g; v = 0.001 g^2
    alpha = 0.01 * math.sqrt(0.001) / 0.1
    upd = alpha * 0.05 / (math.sqrt(0.001 * 0.25) + 1e-7)
    assert out["a"][0] == pytest.approx(1.0 - upd, rel=1e-12)
    assert out["a"][1] == -2.0
    assert out["p"][0].real == pytest.approx(1 - alpha * 0.2 / (math.sqrt(0.004) + 1e-7), rel=1e-12)
    assert out["p"][0].imag == pytest.approx(1 + alpha * 0.4 / (math.sqrt(0.016) + 1e-7), rel=1e-12)
    assert state.t == 1 and set(state.m) == {"a", "p"}


def test_reference_model_trains_with_the_core_driver():
    from ptycho.training import fit

    from parity.inputs import small_dataset

    cfg = TrainingConfig(model=ModelConfig(N=16, gridsize=1, base_filters=2, n_filters_scale=1),
                         batch_size=4, nepochs=3, learning_rate=1e-2, nphotons=1e4)
    data = small_dataset(cfg, seed=0)
    model = R.ReferenceModel(cfg.model, init_weights(cfg.model, 0, data.probe, math.log(data.intensity_scale)))
    hist = fit(model, data, cfg)
    losses = hist.losses("total")
    assert len(losses) == 3 and losses[-1] < losses[0]


@pytest.mark.parametrize("probe_mask, masked", [(False, False), (True, True)])
def test_refinement_gradients_match_float64_finite_differences(probe_mask, masked):
    """parity.reference.refine_gradients (hand-derived) against central differences of the
    NLL, in object and probe pixels, real and imaginary parts, for sub-pixel positions
    (one reaching past the object's edge) and a bad-pixel mask."""
    rng = np.random.default_rng(3)
    n = 8
    obj = (0.5 + 0.2 * rng.normal(size=(20, 22))) * np.exp(1j * rng.normal(size=(20, 22)))
    probe = (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) * 0.5
    positions = np.array([[6.3, 7.7], [11.0, 9.25], [15.5, 14.0], [19.6, 4.1]])
    truth = obj * np.exp(0.1j)
    patches = R._extraction(positions, n, truth.shape)[0](truth)
    obs = np.sqrt(rng.poisson(40 * P.far_field_amplitude(probe * patches) ** 2 + 1))
    mask = (rng.uniform(size=(n, n)) > 0.2) if masked else None
    lis = 0.3
    g = R.refine_gradients(obj, probe, lis, positions, obs, 1e-6, mask, probe_mask)

    def nll(o, p):
        return R.refine_gradients(o, p, lis, positions, obs, 1e-6, mask, probe_mask)["nll"]

    h = 1e-6
    for name, index in (("object", (7, 6)), ("object", (3, 14)), ("object", (9, 11)),
                        ("probe", (3, 4)), ("probe", (6, 1))):
        for part in (1.0, 1j):
            d = np.zeros(obj.shape if name == "object" else probe.shape, complex)
            d[index] = part * h
            args = [(obj + d, probe), (obj - d, probe)] if name == "object" else \
                [(obj, probe + d), (obj, probe - d)]
            fd = (nll(*args[0]) - nll(*args[1])) / (2 * h)
            got = g[name][index].real if part == 1.0 else g[name][index].imag
            assert got == pytest.approx(fd, rel=1e-5, abs=1e-7 * np.abs(g[name]).max()), \
                (name, index, part)
    assert np.abs(g["object"]).max() > 0
    if probe_mask:      # outside the disk the probe has no gradient
        assert np.all(g["probe"][P.probe_disk_mask(n) == 0] == 0)


def test_refinement_extraction_and_its_adjoint():
    """The reference's extraction is the simulator's (same bilinear convention) and its
    adjoint satisfies <E x, g> = <x, E^T g>, with patches reaching past the edges."""
    from ptycho.simulate.dataset import object_patches
    rng = np.random.default_rng(8)
    obj = rng.normal(size=(20, 24)) + 1j * rng.normal(size=(20, 24))
    inside = np.array([[6.3, 7.7], [12.0, 9.25], [15.5, 14.0]])
    extract, adjoint = R._extraction(inside, 8, obj.shape)
    np.testing.assert_allclose(extract(obj), object_patches(obj, inside, 8), rtol=0, atol=1e-6)
    edge = np.array([[2.5, 3.25], [21.7, 17.1]])
    extract, adjoint = R._extraction(edge, 8, obj.shape)
    g = rng.normal(size=(2, 8, 8)) + 1j * rng.normal(size=(2, 8, 8))
    assert np.vdot(extract(obj), g) == pytest.approx(np.vdot(obj, adjoint(g)), rel=1e-12)


def test_the_amplitude_head_gives_the_amplitude_or_scales_the_estimates_magnitude():
    """``estimate_amplitude``: the same weights and input give the same phase, and amplitudes
    that differ by exactly the estimate's magnitude ``|E|`` (no intensity match, which would
    rescale each patch)."""
    from ptycho.physics.model import estimate_magnitude_phase

    base = ModelConfig(N=16, base_filters=2, n_filters_scale=1, pad_object=False,
                       match_intensity=False, backprop_estimate=True, estimate_scope="scan")
    rng = np.random.default_rng(2)
    w = init_weights(base, 1, make_probe(16, 2.0, rng), 0.0)
    x = rng.uniform(0.0, 3.0, (2, 1, 16, 16))
    estimate = rng.normal(size=(2, 1, 16, 16)) + 1j * rng.normal(size=(2, 1, 16, 16))
    own = R.network_patches(base, w, x, estimate)
    scaled = R.network_patches(ModelConfig(**{**base.__dict__, "estimate_amplitude": "scale"}),
                               w, x, estimate)
    magnitude, _ = estimate_magnitude_phase(estimate)
    assert np.allclose(np.abs(scaled), magnitude * np.abs(own), rtol=1e-12)
    assert np.allclose(np.angle(scaled / own), 0.0, atol=1e-9)
    assert np.ptp(magnitude) > 1.0      # a test that could tell the two apart
