"""Every backend's model: canonical weights in and out, the network and everything after it
against the float64 reference (``parity.reference``, itself checked against direct loops and
finite differences), gradients, masks, inference (batching, bfloat16), the protocol.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ptycho.physics as ref
from backend_testing import assert_close, batch, images, weights
from backends.protocol import BackendModel
from parity import reference as R
from parity.stages import gradient_scales
from parity.tolerances import tolerance
from ptycho.batch import Batch
from ptycho.config import ModelConfig
from ptycho.errors import WeightsError
from ptycho.physics.losses import LossSettings
from ptycho.weights import trainable_names, weight_spec

N = 16
SMALL = dict(N=N, base_filters=2, n_filters_scale=1)
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture],
                      max_examples=10)

configs = st.tuples(st.sampled_from(["sigmoid", "swish", "softplus", "relu"]),
                    st.booleans()).flatmap(
    lambda drawn: st.builds(
        ModelConfig, N=st.sampled_from([16, 24]), gridsize=st.integers(1, 2),
        n_filters_scale=st.just(1), base_filters=st.integers(1, 3),
        amp_activation=st.just(drawn[0]), object_big=st.booleans(), probe_big=st.booleans(),
        probe_mask=st.booleans(), pad_object=st.booleans(), probe_trainable=st.just(drawn[1]),
        intensity_scale_trainable=st.booleans(), per_pattern_network=st.booleans(),
        central_decoder=st.booleans(),
        backprop_estimate=st.just(False) if drawn[1] else st.booleans(),
        match_intensity=st.booleans() if drawn[0] in ("sigmoid", "softplus")
        else st.just(False)))


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, a.tobytes()


# ------------------------------------------------------------------ weights

@fixture_ok
@given(cfg=configs, seed=st.integers(0, 2 ** 32 - 1))
def test_weights_round_trip_bit_for_bit(backend, cfg, seed):
    model = backend.build_model(cfg, weights(cfg, seed))
    w = weights(cfg, seed + 1, log_scale=-0.75)
    k = w["enc0.conv1.kernel"]
    k.flat[0], k.flat[1], k.flat[2] = -0.0, np.float32(1e-40), np.float32(-3.4e38)  # -0, subnormal
    w["probe"].flat[3] = np.complex64(complex(-0.0, 1e-40))
    model.set_weights(w)
    got = model.get_weights()
    assert list(got) == list(weight_spec(cfg))
    for name, arr in w.items():
        assert _bits(got[name]) == _bits(arr), f"{name} differs after set/get"
    got["enc0.conv1.bias"][0] = 123.0          # a copy: the model is unaffected
    assert model.get_weights()["enc0.conv1.bias"][0] == w["enc0.conv1.bias"][0]
    assert all(_bits(v) == _bits(w[k]) for k, v in
               backend.build_model(cfg, w).get_weights().items())


def _check_reads_only_the_entries_named(model, w):
    got = model.get_weights(names=["probe", "enc0.conv1.kernel"])
    assert list(got) == ["probe", "enc0.conv1.kernel"]
    for name, arr in got.items():
        np.testing.assert_array_equal(arr, w[name], err_msg=name)
    assert list(model.get_weights(names=[])) == []
    with pytest.raises(WeightsError, match=r"\['enc9.conv1.kernel'\]"):
        model.get_weights(names=["probe", "enc9.conv1.kernel"])


def test_get_weights_reads_only_the_entries_named(backend):
    cfg = ModelConfig(**SMALL)
    w = weights(cfg, 3)
    _check_reads_only_the_entries_named(backend.build_model(cfg, w), w)


def test_reference_get_weights_reads_only_the_entries_named():
    cfg = ModelConfig(**SMALL)
    w = weights(cfg, 3)
    _check_reads_only_the_entries_named(R.ReferenceModel(cfg, w), w)


@pytest.mark.parametrize("change, needle", [
    (lambda w: w.pop("amp.dec1.conv2.bias"), "missing entries ['amp.dec1.conv2.bias']"),
    (lambda w: w.pop("probe"), "missing entries ['probe']"),
    (lambda w: w.__setitem__("extra.kernel", np.zeros(3, np.float32)),
     "unexpected entries ['extra.kernel']"),
    (lambda w: w.__setitem__("enc1.conv1.kernel", np.zeros((3, 3, 2, 5), np.float32)),
     "'enc1.conv1.kernel': expected shape"),
    (lambda w: w.__setitem__("probe", np.zeros((16, 15), np.complex64)), "'probe': expected shape"),
    (lambda w: w.__setitem__("log_intensity_scale", np.zeros((1,), np.float32)),
     "'log_intensity_scale': expected shape"),
    (lambda w: w.__setitem__("phase.head.bias", np.zeros((1,), np.float64)),
     "expected dtype float32"),
])
def test_bad_weights_raise_naming_the_entry_and_load_nothing(backend, change, needle):
    cfg = ModelConfig(**SMALL)
    good = weights(cfg)
    model = backend.build_model(cfg, good)
    bad = weights(cfg, seed=5)
    change(bad)
    with pytest.raises(WeightsError) as info:
        model.set_weights(bad)
    assert needle in str(info.value)
    for name, arr in model.get_weights().items():      # all or nothing: nothing was loaded
        assert _bits(arr) == _bits(good[name]), name
    with pytest.raises(WeightsError):
        backend.build_model(cfg, bad)


def test_kernel_layout_is_canonical(backend):
    """A kernel with one non-zero tap moves the input by that tap's (row, col) offset."""
    ops = backend.ops
    k = np.zeros((3, 3, 1, 1), np.float32)
    k[0, 2, 0, 0] = 1.0                              # kh index 0 (row -1), kw index 2 (col +1)
    x = np.zeros((1, 1, 16, 16), np.float32)
    x[0, 0, 5, 5] = 1.0
    kernel = ops.variable(ops.kernel_to_native(k), False)
    y = ops.to_image_layout(ops.conv3x3(ops.to_network_layout(ops.tensor(x, "float32")), kernel,
                                        ops.tensor(np.zeros(1), "float32")))
    assert np.argwhere(ops.read(y)[0, 0]).tolist() == [[6, 4]]   # out[r, c] = x[r - 1, c + 1]
    np.testing.assert_array_equal(ops.kernel_from_native(ops.kernel_to_native(k)), k)


def test_model_satisfies_the_protocol(backend):
    cfg = ModelConfig(**SMALL)
    model = backend.build_model(cfg, weights(cfg))
    assert isinstance(model, BackendModel)
    assert model.backend_name == backend.name and model.config is cfg
    assert float(model.get_weights()["log_intensity_scale"]) == 2.0
    with pytest.raises(TypeError, match="ModelConfig"):
        backend.build_model({"N": 16}, weights(cfg))


# ------------------------------------------------------------------ forward

@fixture_ok
@given(cfg=configs, seed=st.integers(0, 1000))
def test_forward_matches_the_reference_model(backend, cfg, seed):
    w = weights(cfg, seed, random_biases=True)
    model = backend.build_model(cfg, w)
    b = batch(cfg, b=3, seed=seed)
    out = model.forward(b)
    assert out["object"].dtype == np.complex64 and out["object"].shape == b.diffraction.shape
    assert out["pred_amplitude"].dtype == np.float32
    want = R.forward(cfg, w, b)
    scale, scale_constrained = R.forward_scales(cfg, w, b, want)
    assert_close(out["object"], want["object"], "network.forward", scale=scale)
    if cfg.pad_object and not cfg.probe_big:          # zero outside the central square
        assert not np.any(out["object"][..., ref.central_mask(cfg.N) == 0])
    # everything after the network, on the model's own patches
    constrained, pred = ref.physics_forward(out["object"], w["probe"], w["log_intensity_scale"],
                                            cfg, b.rel_offsets, b.canvas_size)
    assert_close(out["object_constrained"], constrained, "translate.overlap",
                 scale=np.maximum(scale_constrained, np.abs(constrained).max()))
    assert_close(out["pred_amplitude"], pred, "network.amplitude")
    if not (cfg.gridsize > 1 and cfg.object_big):
        np.testing.assert_array_equal(out["object_constrained"], out["object"])
    settings_ = LossSettings(1.0, 0.5, 2.0, 1e-6)
    terms = model.losses(b, settings_)
    want_terms = ref.total_loss(pred, b.diffraction, out["object"], constrained, settings_)
    scales = R.loss_scales(cfg, w, b, settings_)
    for key in ("nll", "mae", "realspace", "total"):
        assert_close(terms[key], want_terms[key], "loss.terms", scale=scales[key])


def test_overlap_constraint_is_applied_per_group_and_exposed(backend):
    cfg = ModelConfig(**SMALL, gridsize=2)
    model = backend.build_model(cfg, weights(cfg))
    b = batch(cfg, b=2, seed=3)
    out = model.forward(b)
    support = ref.object_support(N, cfg.pad_object, cfg.probe_big)
    want = ref.overlap_constraint(out["object"], b.rel_offsets, b.canvas_size, support)
    assert_close(out["object_constrained"], want, "translate.overlap")
    assert np.abs(out["object_constrained"] - out["object"]).max() > 1e-3   # it did something
    assert_close(model.constrain(out["object"], b.rel_offsets, b.canvas_size), want,
                 "translate.overlap")
    with pytest.raises(ValueError, match="rel_offsets"):
        model.constrain(out["object"], b.rel_offsets[:, :2], b.canvas_size)
    single = ModelConfig(**SMALL)
    patches = out["object"][:, :1]
    assert _bits(backend.build_model(single, weights(single)).constrain(
        patches, np.zeros((2, 1, 2)), N)) == _bits(patches)


@pytest.mark.parametrize("offsets", ["whole-pixel", "scan", "sub-pixel"])
def test_overlap_constraint_of_many_groups_matches_the_reference(backend, offsets):
    """More groups than one call of the compiled constraint takes (they go in chunks), with
    whole-pixel offsets (as :func:`ptycho.physics.group_centres` makes them on a scan grid),
    offsets from the group's mean of whole-pixel positions (whole pixels plus one fraction
    per group) or arbitrary sub-pixel ones. The first two take numpy slicing (no
    interpolation operators), with the values of the backend's graph; the last the graph."""
    from backends.common.model import CONSTRAIN_CHUNK_GROUPS

    cfg = ModelConfig(**SMALL, gridsize=2)
    model = backend.build_model(cfg, weights(cfg))
    b = 2 * CONSTRAIN_CHUNK_GROUPS + 3
    patches = images(7, (b, 4, N, N), complex_=True)
    rel = np.random.default_rng(7).uniform(-3, 3, (b, 4, 2))
    if offsets != "sub-pixel":
        rel = np.round(rel)
    if offsets == "scan":
        rel = rel - rel.mean(axis=1, keepdims=True)
        assert np.any(rel != np.round(rel))
    m = ref.canvas_size(N, rel)
    support = ref.object_support(N, cfg.pad_object, cfg.probe_big)
    want = ref.overlap_constraint(patches, rel, m, support)
    got = model.constrain(patches, rel, m)
    assert got.dtype == np.complex64
    assert_close(got, want, "translate.overlap")
    if offsets != "sub-pixel":
        assert_close(got, backend.overlap_constraint(patches, rel, m, support),
                     "translate.overlap", scale=np.abs(want).max())


def test_predict_is_the_network_output_in_batches(backend):
    cfg = ModelConfig(**SMALL, gridsize=2)
    model = backend.build_model(cfg, weights(cfg))
    b = batch(cfg, b=5)
    whole = model.forward(b)["object"]
    parts = model.predict(b.diffraction, batch_size=2)
    assert parts.dtype == np.complex64 and parts.shape == b.diffraction.shape
    assert_close(parts, whole, "network.forward")
    np.testing.assert_array_equal(parts, model.predict(b.diffraction, batch_size=2))
    with pytest.raises(ValueError, match=r"\(B, 4, 16, 16\)"):
        model.predict(b.diffraction[:, :1])
    with pytest.raises(ValueError, match="float16"):
        model.predict(b.diffraction, precision="float16")
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(b.diffraction, batch_size=0)


def test_predict_bfloat16_runs_the_conv_stack_in_bfloat16(backend):
    cfg = ModelConfig(N=32, base_filters=4, n_filters_scale=1, amp_activation="softplus")
    model = backend.build_model(cfg, weights(cfg))
    d = batch(cfg, b=4).diffraction
    f32 = model.predict(d)
    bf16 = model.predict(d, batch_size=3, precision="bfloat16")
    assert bf16.dtype == np.complex64 and np.all(np.isfinite(bf16))
    assert_close(bf16, f32, "inference.bf16_vs_fp32")
    assert np.abs(bf16 - f32).max() > 1e-5 * np.abs(f32).max()   # it really ran in bfloat16


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("options", [
    dict(probe_trainable=True, amp_activation="swish", match_intensity=False),
    dict(backprop_estimate=True, probe_mask=True, estimate_amplitude="scale"),
    dict(backprop_estimate=True, estimate_scope="scan")],
    ids=["trainable probe", "backprop estimate scaled", "scan estimate"])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_gradients_match_the_exact_float64_gradients(backend, gridsize, options):
    cfg = ModelConfig(**SMALL, gridsize=gridsize, **options)
    w = weights(cfg, seed=3, log_scale=1.0, random_biases=True)
    model = backend.build_model(cfg, w)
    b = batch(cfg, b=2, seed=4, log_scale=1.0, spread=2.0)
    settings_ = LossSettings(1.0, 0.3, 5.0, 1e-6)
    g = model.gradients(b, settings_)
    assert list(g) == trainable_names(cfg)
    assert g["log_intensity_scale"].shape == ()
    assert "probe" not in g or g["probe"].dtype == np.complex64
    _, want, mags = R.gradients(cfg, w, b, settings_, magnitudes=True)
    biggest = max(float(np.abs(v).max()) for v in want.values())
    harness = gradient_scales(want, mags, tolerance("gradients.entry").rtol)
    for name in g:
        # relative to the magnitudes of the terms each gradient sums (they can cancel), with
        # the table's floor of eps_f32 x the model's largest gradient. The back-propagated
        # estimate is an input the model computes in float32 (an FFT, then a division by the
        # probe): its round-off enters every layer, which the magnitudes, taken at each
        # entry's final sum, do not model; there the harness's scale applies (the entry's
        # largest gradient too; measured 2.6x the elementwise scale, 0.2x the harness's).
        scale = (harness[name] if cfg.backprop_estimate
                 else np.maximum(mags[name], 2.0 ** -24 / 2e-5 * biggest))
        assert_close(g[name], want[name], "gradients.entry", scale=scale)
    for name, arr in model.get_weights().items():      # computing gradients changes nothing
        assert _bits(arr) == _bits(w[name]), name


def test_an_all_zero_pattern_keeps_the_backprop_estimate_finite(backend):
    """Its estimate is exactly zero, where |E| and arg E have no derivative: the model's
    guards (an epsilon under the square root, the angle of 1) keep everything finite."""
    cfg = ModelConfig(**SMALL, gridsize=2, backprop_estimate=True)
    b = batch(cfg, b=2, seed=1)
    d = b.diffraction.copy()
    d[0, 1] = 0.0
    b = Batch(d, b.rel_offsets, b.canvas_size)
    model = backend.build_model(cfg, weights(cfg, seed=2))
    patches = model.predict(d)
    assert np.all(np.isfinite(patches)) and np.abs(patches[0, 1]).max() < 1e-3
    grads = model.gradients(b, LossSettings())
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert np.abs(grads["enc0.conv1.kernel"]).max() > 0


def test_frozen_entries_have_no_gradient(backend):
    cfg = ModelConfig(**SMALL, probe_trainable=False, intensity_scale_trainable=False)
    grads = backend.build_model(cfg, weights(cfg)).gradients(batch(cfg), LossSettings())
    assert "probe" not in grads and "log_intensity_scale" not in grads
    assert np.abs(grads["enc0.conv1.kernel"]).max() > 0


# ------------------------------------------------------------------ bad pixels

@pytest.mark.parametrize("shared", [True, False], ids=["shared mask", "per-pattern mask"])
def test_masked_pixels_change_neither_loss_nor_gradients(backend, shared):
    """Garbage (NaN, Inf, huge counts) in bad pixels: the same losses and gradients as clean
    data, and both equal the float64 reference's, which averages over measured pixels only."""
    cfg = ModelConfig(**SMALL, gridsize=2, probe_trainable=True)
    w = weights(cfg, seed=2)
    model = backend.build_model(cfg, w)
    clean = batch(cfg, b=3, seed=6)
    rng = np.random.default_rng(0)
    mask = rng.uniform(size=(N, N) if shared else clean.diffraction.shape) > 0.1
    masked = Batch(clean.diffraction, clean.rel_offsets, clean.canvas_size, mask)
    d = clean.diffraction.copy()
    bad = ~np.broadcast_to(mask, d.shape)
    d[bad] = rng.choice([np.nan, np.inf, 1e6], size=int(bad.sum())).astype(np.float32)
    garbage = Batch(d, clean.rel_offsets, clean.canvas_size, mask)
    settings_ = LossSettings(1.0, 0.5, 2.0, 1e-6)
    l_masked, l_garbage = model.losses(masked, settings_), model.losses(garbage, settings_)
    assert l_masked == l_garbage
    assert l_masked != model.losses(clean, settings_)
    g_masked, g_garbage = model.gradients(masked, settings_), model.gradients(garbage, settings_)
    for name in g_masked:
        assert _bits(g_masked[name]) == _bits(g_garbage[name]), name
    want_terms = R.losses(cfg, w, garbage, settings_)
    scales = R.loss_scales(cfg, w, masked, settings_)
    for key in want_terms:
        assert_close(l_garbage[key], want_terms[key], "loss.terms", scale=scales[key])
    _, want, mags = R.gradients(cfg, w, garbage, settings_, magnitudes=True)
    biggest = max(float(np.abs(v).max()) for v in want.values())
    for name in want:
        scale = np.maximum(mags[name], 2.0 ** -24 / 2e-5 * biggest)
        assert_close(g_garbage[name], want[name], "gradients.entry", scale=scale)
    out = model.forward(garbage)
    assert all(np.all(np.isfinite(v)) for v in out.values())
