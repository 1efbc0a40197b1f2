"""The TensorFlow model: canonical weights in and out, the network against an independent
float64 numpy implementation of the architecture in ptycho/weights.py, everything after the
network against ptycho.physics.physics_forward, gradients against finite differences of the
float64 model, Adam against keras.optimizers.Adam, compiled steps, determinism, inference.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import ptycho.physics as ref
from ptycho.batch import Batch
from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.errors import WeightsError
from ptycho.physics.losses import LossSettings
from ptycho.weights import init_weights, trainable_names, weight_spec

pytestmark = pytest.mark.tensorflow

# Tolerances (to move into parity/tolerances.py once it exists), each with its reason:
#: network patches vs the float64 numpy network, relative to max |patch|: 14 float32 convs
#: (sums of 9 * C_in products each) and transcendental heads, a few ulps per layer.
NETWORK_RTOL = 2e-6
#: constrained patches / predicted amplitude vs physics_forward on the model's own patches,
#: relative to the max: float32 matmul translation (1e-6) then the float32 FFT (1e-5).
PHYSICS_RTOL = 1e-5
#: loss values vs the reference, relative to mean(I + k): float32 forward (1e-5) then the mean.
LOSS_RTOL = 1e-5
#: directional derivative of the float32 gradient vs a float64 central difference, relative to
#: sum |g_i d_i|: float32 backprop through the same 14 convs and the FFT, ~1e-5.
GRAD_RTOL = 1e-4
#: Adam step applied by train_step vs Keras' Adam on gradients(): the gradients come from two
#: separately compiled graphs (same ops, possibly different fusion), so ~1 ulp of the weights.
ADAM_ULPS = 4
#: bfloat16 inference vs float32, relative to max |patch|: bf16 keeps 8 significant bits
#: (4e-3 per rounding); the bounded heads (sigmoid, pi*tanh) damp it (measured 4e-4).
BF16_RTOL = 1e-2

N = 16
SMALL = dict(N=N, base_filters=2, n_filters_scale=1)


@pytest.fixture(scope="module")
def tfb():
    from backends.registry import get_backend
    return get_backend("tensorflow")


def _probe(n):
    r2 = (np.arange(n)[:, None] - n // 2) ** 2 + (np.arange(n)[None, :] - n // 2) ** 2
    p = np.exp(-r2 / (2 * (n / 6) ** 2)) * np.exp(1j * 0.02 * r2)
    return (p * (n / 2) / np.sqrt(np.sum(np.abs(p) ** 2))).astype(np.complex64)


def _weights(cfg, seed=0, lis=2.0):
    return init_weights(cfg, seed, _probe(cfg.N), lis)


def _batch(cfg, b=3, seed=0, lis=2.0):
    """Diffraction in photon units from a random smooth object, Poisson counts."""
    rng = np.random.default_rng(seed)
    c, n = cfg.n_channels, cfg.N
    rel = (rng.uniform(-3, 3, size=(b, c, 2)) if c > 1 else np.zeros((b, c, 2))).astype(np.float32)
    amp = 0.5 + 0.5 * rng.uniform(size=(b, c, n, n))
    obj = amp * np.exp(1j * rng.uniform(-1, 1, size=(b, c, n, n)))
    a = ref.far_field_amplitude(ref.illuminate(_probe(n), obj)) * np.exp(lis)
    d = np.sqrt(rng.poisson(a ** 2)).astype(np.float32)
    return Batch(d, rel, ref.canvas_size(n, rel) if c > 1 else n)


# ------------------------------------------------------------------ float64 numpy model

def _np_conv(x, params, name):
    k, b = params[name + ".kernel"].astype(np.float64), params[name + ".bias"].astype(np.float64)
    bsz, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((bsz, h, w, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[:, i:i + h, j:j + w, :] @ k[i, j]
    return out + b


def _np_block(x, params, prefix):
    x = np.maximum(_np_conv(x, params, prefix + ".conv1"), 0)
    return np.maximum(_np_conv(x, params, prefix + ".conv2"), 0)


_NP_ACT = {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "swish": lambda x: x / (1 + np.exp(-x)),
           "softplus": lambda x: np.logaddexp(0.0, x), "relu": lambda x: np.maximum(x, 0)}


def np_patches(cfg, params, diffraction):
    """The architecture of ptycho/weights.py in float64 numpy: (B, C, N, N) -> complex patches."""
    x = np.transpose(diffraction / np.exp(float(params["log_intensity_scale"])), (0, 2, 3, 1))
    h = x.astype(np.float64)
    for i in range(3):
        h = _np_block(h, params, f"enc{i}")
        b_, hh, ww, cc = h.shape
        h = h.reshape(b_, hh // 2, 2, ww // 2, 2, cc).max(axis=(2, 4))
    act = _NP_ACT[cfg.amp_activation]
    out = {}
    for branch in ("amp", "phase"):
        y = h
        for j in range(3):
            y = _np_block(y.repeat(2, axis=1).repeat(2, axis=2), params, f"{branch}.dec{j}")
        f = act if branch == "amp" else (lambda z: np.pi * np.tanh(z))
        out[branch] = f(_np_conv(y, params, f"{branch}.head"))
        if cfg.pad_object and cfg.probe_big:
            border = f(_np_conv(y, params, f"{branch}.border_head"))
            inside = ref.central_mask(cfg.N)[:, :, None] > 0
            out[branch] = np.where(inside, out[branch], border)
    amp, phase = out["amp"], out["phase"]
    if cfg.pad_object and not cfg.probe_big:
        amp = amp * ref.central_mask(cfg.N)[:, :, None]
    return np.transpose(amp * np.exp(1j * phase), (0, 3, 1, 2))


def np_total_loss(cfg, params, batch, settings):
    patches = np_patches(cfg, params, batch.diffraction.astype(np.float64))
    constrained, pred = ref.physics_forward(patches, params["probe"],
                                            float(params["log_intensity_scale"]), cfg,
                                            batch.rel_offsets, batch.canvas_size)
    return ref.total_loss(pred, batch.diffraction, patches, constrained, settings)["total"]


def _random_biases(w):
    """Non-zero biases: exercises the bias path, and keeps relu inputs off their kink at 0
    (with zero biases a dead region feeds exact zeros to the next relu, where a finite
    difference sees slope 1/2 and backprop, by convention, 0)."""
    for name in w:
        if name.endswith(".bias"):
            w[name] = np.random.default_rng(len(name)).uniform(-0.3, 0.3, w[name].shape).astype(np.float32)
    return w


# ------------------------------------------------------------------ weights

def test_weights_round_trip_bit_for_bit(tfb):
    cfg = ModelConfig(**SMALL, gridsize=2, probe_trainable=True)
    model = tfb.build_model(cfg, _weights(cfg, seed=0))
    w = _weights(cfg, seed=1, lis=-0.75)
    k = w["enc0.conv1.kernel"]
    k.flat[0], k.flat[1], k.flat[2] = -0.0, np.float32(1e-40), np.float32(-3.4e38)  # -0, subnormal
    w["probe"].flat[3] = np.complex64(complex(-0.0, 1e-40))
    model.set_weights(w)
    got = model.get_weights()
    assert list(got) == list(weight_spec(cfg))
    for name, arr in w.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        assert got[name].tobytes() == arr.tobytes(), f"{name} differs after set/get"
    got["enc0.conv1.bias"][0] = 123.0          # a copy: the model is unaffected
    assert model.get_weights()["enc0.conv1.bias"][0] == 0.0


def test_build_model_holds_exactly_the_given_weights(tfb):
    cfg = ModelConfig(**SMALL)
    w = _weights(cfg, seed=5)
    got = tfb.build_model(cfg, w).get_weights()
    assert all(got[k].tobytes() == w[k].tobytes() for k in w)


@pytest.mark.parametrize("change, name", [
    ("missing", "phase.dec1.conv2.kernel"),
    ("missing", "probe"),
    ("extra", "enc9.conv1.kernel"),
    ("misshapen", "amp.head.kernel"),
    ("misshapen", "log_intensity_scale"),
])
def test_weight_mismatch_raises_naming_the_entry(tfb, change, name):
    cfg = ModelConfig(**SMALL)
    good = _weights(cfg)
    bad = dict(good)
    if change == "missing":
        del bad[name]
    elif change == "extra":
        bad[name] = np.zeros((3, 3, 1, 2), np.float32)
    else:
        bad[name] = np.zeros(tuple(s + 1 for s in good[name].shape) or (1,), good[name].dtype)
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        tfb.build_model(cfg, bad)
    model = tfb.build_model(cfg, good)
    other = _weights(cfg, seed=9)
    bad2 = {k: other[k] for k in bad if k in other}
    if change == "extra":
        bad2[name] = bad[name]
    elif change == "misshapen":
        bad2[name] = bad[name]
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        model.set_weights(bad2)
    after = model.get_weights()          # all or nothing: nothing was loaded
    assert all(after[k].tobytes() == good[k].tobytes() for k in good)


def test_model_satisfies_the_protocol(tfb):
    from backends.protocol import BackendModel
    cfg = ModelConfig(**SMALL)
    model = tfb.build_model(cfg, _weights(cfg))
    assert isinstance(model, BackendModel)
    assert model.backend_name == "tensorflow" and model.config is cfg


# ------------------------------------------------------------------ forward

FORWARD_CONFIGS = [
    dict(gridsize=1),
    dict(gridsize=2, amp_activation="swish", probe_mask=True),
    dict(gridsize=2, probe_big=False, amp_activation="softplus"),
    dict(gridsize=2, object_big=False, amp_activation="relu"),
    dict(gridsize=2, pad_object=False),
]


@pytest.mark.parametrize("opts", FORWARD_CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_forward_matches_numpy_network_and_reference_physics(tfb, opts):
    cfg = ModelConfig(**SMALL, **opts)
    w = _random_biases(_weights(cfg, seed=2))
    model = tfb.build_model(cfg, w)
    batch = _batch(cfg, b=3, seed=1)
    out = model.forward(batch)
    assert out["object"].dtype == np.complex64 and out["object"].shape == batch.diffraction.shape
    assert out["pred_amplitude"].dtype == np.float32

    expected_patches = np_patches(cfg, w, batch.diffraction.astype(np.float64))
    scale = np.abs(expected_patches).max()
    assert np.abs(out["object"] - expected_patches).max() <= NETWORK_RTOL * scale
    if cfg.pad_object and not cfg.probe_big:          # zero outside the central square
        assert np.all(out["object"][..., ref.central_mask(N) == 0] == 0)

    constrained, pred = ref.physics_forward(out["object"], w["probe"], w["log_intensity_scale"],
                                            cfg, batch.rel_offsets, batch.canvas_size)
    assert np.abs(out["object_constrained"] - constrained).max() <= PHYSICS_RTOL * np.abs(constrained).max()
    assert np.abs(out["pred_amplitude"] - pred).max() <= PHYSICS_RTOL * pred.max()
    if not (cfg.gridsize > 1 and cfg.object_big):
        np.testing.assert_array_equal(out["object_constrained"], out["object"])
    else:
        assert np.abs(out["object_constrained"] - out["object"]).max() > 1e-3 * scale

    terms = model.losses(batch, LossSettings(1.0, 0.5, 2.0, 1e-6))
    exp_terms = ref.total_loss(pred, batch.diffraction, out["object"], constrained,
                               LossSettings(1.0, 0.5, 2.0, 1e-6))
    lscale = np.mean(pred.astype(np.float64) ** 2 + batch.diffraction.astype(np.float64) ** 2)
    for key in ("nll", "mae", "realspace", "total"):
        assert abs(terms[key] - exp_terms[key]) <= LOSS_RTOL * lscale, key


def test_predict_is_the_network_output_in_batches(tfb):
    cfg = ModelConfig(**SMALL, gridsize=2)
    model = tfb.build_model(cfg, _weights(cfg))
    batch = _batch(cfg, b=5)
    full = model.forward(batch)["object"]
    p = model.predict(batch.diffraction, batch_size=2)
    assert p.dtype == np.complex64 and p.shape == batch.diffraction.shape
    assert np.abs(p - full).max() <= NETWORK_RTOL * np.abs(full).max()
    np.testing.assert_array_equal(p, model.predict(batch.diffraction, batch_size=2))
    with pytest.raises(ValueError, match=r"\(B, 4, 16, 16\)"):
        model.predict(batch.diffraction[:, :1])
    with pytest.raises(ValueError, match="float16"):
        model.predict(batch.diffraction, precision="float16")
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(batch.diffraction, batch_size=0)


def test_predict_bfloat16_runs_the_conv_stack_in_bfloat16(tfb):
    cfg = ModelConfig(**{**SMALL, "base_filters": 4}, gridsize=1)
    model = tfb.build_model(cfg, _weights(cfg))
    d = _batch(cfg, b=4).diffraction
    p32 = model.predict(d)
    p16 = model.predict(d, batch_size=3, precision="bfloat16")
    assert p16.dtype == np.complex64 and np.all(np.isfinite(p16))
    err = np.abs(p16 - p32).max()
    assert 0 < err <= BF16_RTOL * np.abs(p32).max()


# ------------------------------------------------------------------ gradients

def test_gradients_match_finite_differences_of_the_float64_model(tfb):
    cfg = ModelConfig(**SMALL, gridsize=2, probe_trainable=True, amp_activation="swish")
    w = _random_biases(_weights(cfg, seed=3))
    model = tfb.build_model(cfg, w)
    batch = _batch(cfg, b=2, seed=4)
    settings = LossSettings(1.0, 0.3, 5.0, 1e-6)
    g = model.gradients(batch, settings)
    assert list(g) == trainable_names(cfg)
    assert g["probe"].dtype == np.complex64 and g["log_intensity_scale"].shape == ()
    rng = np.random.default_rng(0)
    w64 = {k: v.astype(np.complex128 if np.iscomplexobj(v) else np.float64) for k, v in w.items()}
    for trial in range(3):
        direction = {}
        for k, v in w64.items():
            d = rng.normal(size=v.shape)
            if np.iscomplexobj(v):
                d = d + 1j * rng.normal(size=v.shape)
            direction[k] = d * (np.abs(v).mean() + 1e-3)
        if trial == 2:           # only the probe: checks the d/d re + 1j d/d im convention
            direction = {k: (d if k == "probe" else 0 * d) for k, d in direction.items()}
        h = 1e-6

        def loss_at(t):
            return np_total_loss(cfg, {k: w64[k] + t * direction[k] for k in w64}, batch, settings)

        fd = (loss_at(h) - loss_at(-h)) / (2 * h)
        terms = [np.real(np.sum(np.conj(g[k]) * direction[k])) for k in g]
        analytic = float(np.sum(terms))
        scale = float(np.sum(np.abs(terms)))
        assert abs(analytic - fd) <= GRAD_RTOL * scale, (trial, analytic, fd, scale)


# ------------------------------------------------------------------ training

def _train_cfg(cfg, **kw):
    return TrainingConfig(model=cfg, batch_size=4, nepochs=2, learning_rate=1e-3,
                          adam_beta1=0.8, adam_beta2=0.99, adam_epsilon=1e-6,
                          mae_weight=0.1, realspace_weight=1.0, **kw)


def test_train_step_is_keras_adam_on_the_gradients(tfb):
    keras = pytest.importorskip("keras")
    cfg = ModelConfig(**SMALL, gridsize=2, probe_trainable=True)
    tcfg = _train_cfg(cfg)
    settings = LossSettings.from_config(tcfg)
    model = tfb.build_model(cfg, _weights(cfg, seed=6))
    model.configure_training(tcfg)
    names = trainable_names(cfg)

    def flat(w):   # probe as two real arrays, like the variables
        out = []
        for k in names:
            out += [w[k].real.copy(), w[k].imag.copy()] if k == "probe" else [w[k]]
        return out

    kvars = [keras.Variable(a, dtype="float32") for a in flat(model.get_weights())]
    opt = keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                                amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                                global_clipnorm=None, use_ema=False, loss_scale_factor=None,
                                gradient_accumulation_steps=None)
    opt.build(kvars)
    for step, lr in enumerate([1e-3, 1e-3, 3e-4, 2e-3]):
        model.set_learning_rate(lr)
        opt.learning_rate.assign(lr)
        batch = _batch(cfg, b=4 if step % 2 == 0 else 3, seed=10 + step)
        before = model.losses(batch, settings)
        grads = flat(model.gradients(batch, settings))
        terms = model.train_step(batch)
        for key in before:
            assert terms[key] == pytest.approx(before[key], rel=1e-6, abs=1e-9), key
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(gr) for gr in grads], kvars))
        got = flat(model.get_weights())
        for i, (a, kv) in enumerate(zip(got, kvars)):
            expected = np.asarray(kv.numpy())
            ulp = np.spacing(np.maximum(np.abs(expected), np.abs(a))).astype(np.float64)
            assert np.all(np.abs(a.astype(np.float64) - expected) <= ADAM_ULPS * ulp), (step, i)
    assert model.train_step_traces == 1       # four steps, two batch sizes, LR changes


def test_adam_matches_keras_bit_for_bit_on_given_gradients(tfb):
    keras = pytest.importorskip("keras")
    import tensorflow as tf

    from backends.tensorflow.train import Adam
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=s).astype(np.float32) for s in [(3, 3, 2, 4), (4,), ()]]
    grads = [[rng.normal(size=a.shape).astype(np.float32) * 10.0 ** rng.integers(-8, 2)
              for a in w0] for _ in range(5)]
    lrs = [1e-3, 1e-3, 5e-4, 2e-2, 1e-3]
    tvars = [tf.Variable(a) for a in w0]
    mine = Adam(tvars, beta1=0.9, beta2=0.999, epsilon=1e-7, learning_rate=lrs[0])
    apply = tf.function(mine.apply)
    kvars = [keras.Variable(a) for a in w0]
    opt = keras.optimizers.Adam(learning_rate=lrs[0], beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                                amsgrad=False)
    for g, lr in zip(grads, lrs):
        mine.set_learning_rate(lr)
        opt.learning_rate.assign(lr)
        apply([tf.constant(x) for x in g])
        opt.apply_gradients(zip([tf.constant(x) for x in g], kvars))
        for a, b in zip(tvars, kvars):
            assert a.numpy().tobytes() == np.asarray(b.numpy()).tobytes()
    assert int(mine.iterations.numpy()) == 5


def test_non_finite_loss_leaves_the_weights_untouched(tfb):
    cfg = ModelConfig(**SMALL)
    model = tfb.build_model(cfg, _weights(cfg))
    model.configure_training(_train_cfg(cfg))
    batch = _batch(cfg, b=2)
    d = batch.diffraction.copy()
    d[0, 0, 0, 0] = np.nan
    before = model.get_weights()
    terms = model.train_step(Batch(d, batch.rel_offsets, batch.canvas_size))
    assert not math.isfinite(terms["total"])
    after = model.get_weights()
    assert all(after[k].tobytes() == before[k].tobytes() for k in before)
    assert math.isfinite(model.train_step(batch)["total"])
    assert any(model.get_weights()[k].tobytes() != before[k].tobytes() for k in before)


def test_training_api_errors(tfb):
    cfg = ModelConfig(**SMALL)
    model = tfb.build_model(cfg, _weights(cfg))
    with pytest.raises(RuntimeError, match="configure_training"):
        model.train_step(_batch(cfg))
    model.configure_training(_train_cfg(cfg))
    with pytest.raises(ValueError, match="learning rate"):
        model.set_learning_rate(-1.0)
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 16\)"):
        model.train_step(_batch(ModelConfig(**SMALL, gridsize=2)))


class _Data:
    """The two methods ptycho.training.fit needs of a dataset."""

    def __init__(self, batches):
        self.d = np.concatenate([b.diffraction for b in batches])
        self.r = np.concatenate([b.rel_offsets for b in batches])
        self.m = max(b.canvas_size for b in batches)

    def __len__(self):
        return len(self.d)

    def batch(self, idx):
        return Batch(self.d[idx], self.r[idx], self.m)


def test_same_seed_same_config_same_data_same_loss_history(tfb):
    from ptycho.training import fit
    cfg = ModelConfig(**SMALL, gridsize=2, probe_trainable=True)
    tcfg = dataclasses.replace(_train_cfg(cfg), nepochs=3, lr_schedule="exponential",
                               lr_decay_rate=0.5)
    data = _Data([_batch(cfg, b=5, seed=s) for s in range(2)])
    runs = []
    for _ in range(2):
        model = tfb.build_model(cfg, _weights(cfg, seed=7))
        history = fit(model, data, tcfg)
        runs.append(([r.loss for r in history.epochs], model.get_weights()))
    assert runs[0][0] == runs[1][0]
    assert len(runs[0][0]) == 3 and runs[0][0][-1]["total"] < runs[0][0][0]["total"]
    assert all(runs[0][1][k].tobytes() == runs[1][1][k].tobytes() for k in runs[0][1])
