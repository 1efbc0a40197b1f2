"""The PyTorch model: canonical weights in and out, the network against a numpy float64
re-implementation of the architecture in :mod:`ptycho.weights`, the physics after the network
against :func:`ptycho.physics.physics_forward`, gradients against finite differences, and
inference (batching, bfloat16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho import physics as ref
from ptycho.batch import Batch
from ptycho.config import ModelConfig
from ptycho.errors import WeightsError
from ptycho.physics.losses import LossSettings
from ptycho.weights import init_weights, trainable_names, weight_spec

pytestmark = pytest.mark.torch


#: Network output vs the float64 numpy network: float32 convolutions (sums of 9 * width
#: products) through 14 layers; observed errors are ~1e-7 of the output maximum.
NETWORK_RTOL = 1e-5
#: Predicted amplitude vs physics_forward on the model's own patches: float32 translation and
#: FFT (see FFT_RTOL in test_torch_physics.py), relative to the amplitude maximum.
FORWARD_RTOL = 1e-5
#: Loss terms vs the reference on the same predicted amplitudes: float32 mean of ~1e3 terms.
LOSS_RTOL = 1e-5
#: Gradients vs central finite differences of the float64 reference (h = 1e-5): float32
#: back-propagation, relative to the largest gradient entry of the same tensor (observed <= 1e-5).
GRAD_RTOL = 1e-4
#: bfloat16 convolutions keep 8 significant bits (2^-8 ~ 4e-3 per op); through 14 layers the
#: patches stay within 5e-2 of the float32 ones, relative to their maximum.
BF16_RTOL = 5e-2


def _probe(n, seed=0):
    rng = np.random.default_rng(seed)
    r = np.arange(n) - n // 2
    disk = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (n / 6) ** 2))
    phase = rng.uniform(-0.5, 0.5, (n, n))
    return (disk * np.exp(1j * phase) * n / 4).astype(np.complex64)


def _weights(cfg, seed=0, log_scale=2.0):
    return init_weights(cfg, seed, _probe(cfg.N, seed), log_scale)


def _model(cfg, weights=None):
    from backends.torch import get_backend
    return get_backend().build_model(cfg, weights if weights is not None else _weights(cfg))


def _batch(cfg, b=3, seed=0, log_scale=2.0, spread=3.0):
    rng = np.random.default_rng(seed)
    c, n = cfg.n_channels, cfg.N
    counts = rng.poisson(np.exp(2 * log_scale) * rng.uniform(0.2, 2.0, (b, c, n, n)))
    off = rng.uniform(-spread, spread, (b, c, 2)).astype(np.float32) if c > 1 \
        else np.zeros((b, 1, 2), np.float32)
    m = ref.canvas_size(n, off)
    return Batch(np.sqrt(counts).astype(np.float32), off, m)


# -- a float64 numpy re-implementation of the network (ptycho/weights.py docstring) ----------

def _np_conv(x, w, name):
    k, bias = w[name + ".kernel"].astype(np.float64), w[name + ".bias"].astype(np.float64)
    h, wd = x.shape[-2:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = sum(np.einsum("bchw,co->bohw", xp[:, :, i:i + h, j:j + wd], k[i, j])
              for i in range(3) for j in range(3))
    return out + bias[None, :, None, None]


def _np_block(x, w, name):
    x = np.maximum(_np_conv(x, w, name + ".conv1"), 0)
    return np.maximum(_np_conv(x, w, name + ".conv2"), 0)


_ACT = {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "swish": lambda x: x / (1 + np.exp(-x)),
        "softplus": lambda x: np.logaddexp(0, x), "relu": lambda x: np.maximum(x, 0)}


def np_network(cfg, w, x):
    """Normalised amplitudes (B, C, N, N) float64 -> complex128 patches."""
    h = np.asarray(x, np.float64)
    for i in range(3):
        h = _np_block(h, w, f"enc{i}")
        b, c, hh, ww = h.shape
        h = h.reshape(b, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
    heads = {}
    for branch in ("amp", "phase"):
        g = h
        for j in range(3):
            g = _np_block(g.repeat(2, axis=2).repeat(2, axis=3), w, f"{branch}.dec{j}")
        heads[branch] = _np_conv(g, w, f"{branch}.head")
        if cfg.pad_object and cfg.probe_big:
            heads[branch + ".border"] = _np_conv(g, w, f"{branch}.border_head")
    act = _ACT[cfg.amp_activation]
    amp, phase = act(heads["amp"]), np.pi * np.tanh(heads["phase"])
    central = ref.central_mask(cfg.N) > 0
    if cfg.pad_object and cfg.probe_big:
        amp = np.where(central, amp, act(heads["amp.border"]))
        phase = np.where(central, phase, np.pi * np.tanh(heads["phase.border"]))
    elif cfg.pad_object:
        amp = amp * central
    return amp * np.exp(1j * phase)


def np_losses(cfg, w, batch, settings):
    """Every loss term of the float64 reference model."""
    s = float(w["log_intensity_scale"])
    patches = np_network(cfg, w, batch.diffraction / np.exp(s))
    constrained, pred = ref.physics_forward(patches, w["probe"], s, cfg, batch.rel_offsets,
                                            batch.canvas_size)
    return ref.total_loss(pred, batch.diffraction, patches, constrained, settings)


configs = st.builds(
    ModelConfig, N=st.sampled_from([16, 24]), gridsize=st.integers(1, 2),
    n_filters_scale=st.just(1), base_filters=st.integers(1, 3),
    amp_activation=st.sampled_from(["sigmoid", "swish", "softplus", "relu"]),
    object_big=st.booleans(), probe_big=st.booleans(), probe_mask=st.booleans(),
    pad_object=st.booleans(), probe_trainable=st.booleans(),
    intensity_scale_trainable=st.booleans())


# -- weights ---------------------------------------------------------------------------------

def _bits(a):
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, a.tobytes()


@given(configs, st.integers(0, 2 ** 32 - 1))
def test_weights_round_trip_bit_for_bit(cfg, seed):
    w = _weights(cfg, seed)
    rng = np.random.default_rng(seed)
    w["probe"] = (rng.standard_normal((cfg.N, cfg.N))
                  + 1j * rng.standard_normal((cfg.N, cfg.N))).astype(np.complex64)
    w["probe"].imag[0, :3] = [-0.0, 0.0, 1e-40]     # signed zero and a subnormal survive
    w["enc0.conv1.bias"][:] = rng.standard_normal(w["enc0.conv1.bias"].shape)
    model = _model(cfg)
    model.set_weights(w)
    out = model.get_weights()
    assert list(out) == list(weight_spec(cfg))
    for name in w:
        assert _bits(out[name]) == _bits(w[name]), name
    out["enc0.conv1.kernel"][...] = 0                # a copy, not a view of the parameters
    assert _bits(model.get_weights()["enc0.conv1.kernel"]) == _bits(w["enc0.conv1.kernel"])


def test_kernel_layout_is_canonical():
    """A kernel with one non-zero tap moves the input by that tap's (row, col) offset."""
    cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1)
    model = _model(cfg)
    k = np.zeros((3, 3, 1, 1), np.float32)
    k[0, 2, 0, 0] = 1.0                              # kh index 0 (row -1), kw index 2 (col +1)
    w = model.get_weights()
    w["enc0.conv1.kernel"] = k
    model.set_weights(w)
    import torch
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 5, 5] = 1.0
    y = model.module._conv(x, "enc0.conv1") - model.module.net["enc0__conv1__bias"].detach()[0]
    assert torch.nonzero(y[0, 0]).tolist() == [[6, 4]]   # out[r, c] = x[r - 1, c + 1]


@pytest.mark.parametrize("change, needle", [
    (lambda w: w.pop("amp.dec1.conv2.bias"), "missing entries ['amp.dec1.conv2.bias']"),
    (lambda w: w.__setitem__("extra.kernel", np.zeros(3, np.float32)), "unexpected entries ['extra.kernel']"),
    (lambda w: w.__setitem__("enc1.conv1.kernel", np.zeros((3, 3, 2, 5), np.float32)),
     "'enc1.conv1.kernel': expected shape"),
    (lambda w: w.__setitem__("probe", np.zeros((16, 15), np.complex64)), "'probe': expected shape"),
    (lambda w: w.__setitem__("log_intensity_scale", np.zeros((1,), np.float32)),
     "'log_intensity_scale': expected shape"),
    (lambda w: w.__setitem__("phase.head.bias", np.zeros((1,), np.float64)), "expected dtype float32"),
])
def test_bad_weights_raise_naming_the_entry(change, needle):
    cfg = ModelConfig(N=16, base_filters=2, n_filters_scale=1)
    good = _weights(cfg)
    model = _model(cfg, good)
    bad = _weights(cfg, seed=5)
    change(bad)
    with pytest.raises(WeightsError) as info:
        model.set_weights(bad)
    assert needle in str(info.value)
    for name, arr in model.get_weights().items():      # nothing was loaded
        assert _bits(arr) == _bits(good[name]), name
    with pytest.raises(WeightsError):
        _model(cfg, bad)


# -- the network and the forward model -------------------------------------------------------

@given(configs, st.integers(0, 1000))
def test_network_matches_numpy_architecture(cfg, seed):
    w = _weights(cfg, seed)
    model = _model(cfg, w)
    batch = _batch(cfg, b=2, seed=seed)
    got = model.predict(batch.diffraction, batch_size=2)
    want = np_network(cfg, w, batch.diffraction / np.exp(float(w["log_intensity_scale"])))
    assert got.dtype == np.complex64 and got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= NETWORK_RTOL * max(np.abs(want).max(), 1e-3), err
    if cfg.pad_object and not cfg.probe_big:
        assert not np.any(got[..., ~(ref.central_mask(cfg.N) > 0)])


@given(configs, st.integers(0, 1000))
def test_forward_matches_reference_physics(cfg, seed):
    model = _model(cfg, _weights(cfg, seed))
    batch = _batch(cfg, b=3, seed=seed)
    out = model.forward(batch)
    w = model.get_weights()
    constrained, pred = ref.physics_forward(out["object"], w["probe"],
                                            float(w["log_intensity_scale"]), cfg,
                                            batch.rel_offsets, batch.canvas_size)
    scale = np.abs(out["object"]).max()
    assert np.abs(out["object_constrained"] - constrained).max() <= FORWARD_RTOL * max(
        scale, np.abs(constrained).max())
    assert out["pred_amplitude"].dtype == np.float32
    assert np.abs(out["pred_amplitude"] - pred).max() <= FORWARD_RTOL * np.abs(pred).max()
    if not (cfg.gridsize > 1 and cfg.object_big):
        np.testing.assert_array_equal(out["object_constrained"], out["object"])
    settings = LossSettings(nll_weight=1.0, mae_weight=0.5, realspace_weight=2.0, epsilon=1e-6)
    got = model.losses(batch, settings)
    want = ref.total_loss(pred, batch.diffraction, out["object"], constrained, settings)
    assert set(got) == {"nll", "mae", "realspace", "total"}
    counts = float(np.mean(pred.astype(np.float64) ** 2 + batch.diffraction.astype(np.float64) ** 2))
    assert abs(got["nll"] - want["nll"]) <= LOSS_RTOL * counts
    assert abs(got["mae"] - want["mae"]) <= LOSS_RTOL * float(np.mean(pred + batch.diffraction))
    assert abs(got["realspace"] - want["realspace"]) <= LOSS_RTOL * max(want["realspace"],
                                                                         scale ** 2 * 1e-3)


def test_overlap_constraint_is_applied_per_group():
    cfg = ModelConfig(N=16, gridsize=2, base_filters=2, n_filters_scale=1, object_big=True)
    model = _model(cfg)
    batch = _batch(cfg, b=2, seed=3)
    out = model.forward(batch)
    support = ref.object_support(16, cfg.pad_object, cfg.probe_big)
    want = ref.overlap_constraint(out["object"], batch.rel_offsets, batch.canvas_size, support)
    np.testing.assert_allclose(out["object_constrained"], want, rtol=0,
                               atol=FORWARD_RTOL * np.abs(want).max())
    assert np.abs(out["object_constrained"] - out["object"]).max() > 1e-3   # it did something


# -- gradients -------------------------------------------------------------------------------

def _fd(cfg, w, batch, settings, name, index, h=1e-5, imag=False):
    """Central finite difference of the float64 reference total loss in one entry."""
    def loss(delta):
        v = {k: np.array(a, dtype=np.complex128 if k == "probe" else np.float64)
             for k, a in w.items()}
        v[name][index] += 1j * delta if imag else delta
        return np_losses(cfg, v, batch, settings)["total"]
    return (loss(h) - loss(-h)) / (2 * h)


@pytest.mark.parametrize("gridsize", [1, 2])
def test_gradients_match_finite_differences(gridsize):
    cfg = ModelConfig(N=16, gridsize=gridsize, base_filters=2, n_filters_scale=1,
                      probe_trainable=True, intensity_scale_trainable=True, probe_big=True)
    w = _weights(cfg, seed=1, log_scale=1.0)
    model = _model(cfg, w)
    batch = _batch(cfg, b=2, seed=2, log_scale=1.0, spread=2.0)
    settings = LossSettings(nll_weight=1.0, mae_weight=0.3, realspace_weight=0.7, epsilon=1e-6)
    grads = model.gradients(batch, settings)
    assert list(grads) == trainable_names(cfg)
    for name, g in grads.items():
        assert g.shape == w[name].shape and g.dtype == w[name].dtype, name
    checks = [("log_intensity_scale", (), False), ("probe", (8, 7), False),
              ("probe", (8, 7), True), ("probe", (5, 9), True),
              ("enc0.conv1.kernel", (1, 2, 0, 1), False), ("amp.head.bias", (0,), False),
              ("phase.dec2.conv2.kernel", (2, 0, 1, 0), False),
              ("amp.border_head.kernel", (1, 1, 0, 0), False)]
    for name, idx, imag in checks:
        want = _fd(cfg, w, batch, settings, name, idx, imag=imag)
        got = grads[name][idx]
        got = got.imag if imag else got.real
        scale = np.abs(grads[name]).max()
        assert abs(got - want) <= GRAD_RTOL * scale, (name, idx, imag, got, want, scale)
    # The model is unchanged by computing gradients.
    for name, arr in model.get_weights().items():
        assert _bits(arr) == _bits(w[name]), name


def test_frozen_entries_have_no_gradient():
    cfg = ModelConfig(N=16, base_filters=2, n_filters_scale=1, probe_trainable=False,
                      intensity_scale_trainable=False)
    grads = _model(cfg).gradients(_batch(cfg), LossSettings())
    assert "probe" not in grads and "log_intensity_scale" not in grads
    assert np.abs(grads["enc0.conv1.kernel"]).max() > 0


# -- inference -------------------------------------------------------------------------------

def test_predict_batches_and_validates():
    cfg = ModelConfig(N=16, gridsize=2, base_filters=2, n_filters_scale=1)
    model = _model(cfg)
    batch = _batch(cfg, b=5)
    whole = model.predict(batch.diffraction, batch_size=64)
    parts = model.predict(batch.diffraction, batch_size=2)
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-6 * np.abs(whole).max())
    np.testing.assert_array_equal(model.forward(batch)["object"], whole)
    with pytest.raises(ValueError, match=r"\(B, 4, 16, 16\)"):
        model.predict(batch.diffraction[:, :1])
    with pytest.raises(ValueError, match="precision"):
        model.predict(batch.diffraction, precision="float16")
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(batch.diffraction, batch_size=0)


def test_predict_bfloat16():
    cfg = ModelConfig(N=32, base_filters=4, n_filters_scale=1, amp_activation="softplus")
    model = _model(cfg)
    batch = _batch(cfg, b=4)
    f32 = model.predict(batch.diffraction, precision="float32")
    bf16 = model.predict(batch.diffraction, batch_size=3, precision="bfloat16")
    assert bf16.dtype == np.complex64 and bf16.shape == f32.shape
    err = np.abs(bf16 - f32).max() / np.abs(f32).max()
    assert err <= BF16_RTOL
    assert err > 1e-5          # the convolutions really ran in bfloat16


def test_model_satisfies_protocol():
    from backends.protocol import BackendModel
    cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1)
    model = _model(cfg)
    assert isinstance(model, BackendModel)
    assert model.backend_name == "torch" and model.config == cfg
    assert math.isclose(float(model.get_weights()["log_intensity_scale"]), 2.0)
