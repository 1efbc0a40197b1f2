"""Training in every backend: the Keras-3-form Adam, train_step semantics, the core driver,
determinism, non-finite losses."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend_testing import batch, weights
from backends.common.adam import Adam
from ptycho.batch import Batch
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.physics.losses import LossSettings
from ptycho.training import fit
from ptycho.weights import trainable_names

SMALL = dict(N=16, base_filters=2, n_filters_scale=1)
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def numpy_keras_adam(w, grads, lrs, b1, b2, eps):
    """Float32 numpy transcription of keras.optimizers.Adam.update_step (docs/conventions.md)."""
    f = np.float32
    w, m, v = w.astype(f).copy(), np.zeros_like(w, f), np.zeros_like(w, f)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        alpha = f(lr) * np.sqrt(f(1) - np.power(f(b2), f(t))) / (f(1) - np.power(f(b1), f(t)))
        m = m + (g - m) * f(1 - b1)
        v = v + (g * g - v) * f(1 - b2)
        w = w - (m * alpha) / (np.sqrt(v) + f(eps))
    return w


@fixture_ok
@given(seed=st.integers(0, 2 ** 31), lr=st.floats(1e-4, 1e-1), b1=st.floats(0.0, 0.99),
       b2=st.floats(0.9, 0.9999), eps=st.sampled_from([1e-7, 1e-3]))
def test_adam_is_the_keras3_form(backend, seed, lr, b1, b2, eps):
    ops = backend.ops
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((3, 5)).astype(np.float32)
    grads = [rng.standard_normal((3, 5)).astype(np.float32) * 10.0 ** rng.uniform(-4, 1)
             for _ in range(5)]
    lrs = [lr, lr, lr / 2, lr, 2 * lr]
    var = ops.variable(w0, True)
    opt = Adam(ops, [var], b1, b2, eps, lrs[0])
    for g, rate in zip(grads, lrs):
        opt.set_learning_rate(rate)
        opt.apply([ops.tensor(g, "float32")])
    want = numpy_keras_adam(w0, grads, lrs, b1, b2, eps)
    # float32 sqrt / pow of the two libraries may differ by an ulp or so per step
    np.testing.assert_allclose(ops.read(var), want, rtol=1e-6, atol=1e-6 * np.abs(w0).max())
    assert opt.steps == 5
    with pytest.raises(ValueError, match="learning rate"):
        opt.set_learning_rate(float("nan"))
    with pytest.raises(ValueError, match="beta1"):
        Adam(ops, [var], 1.0, b2, eps, lr)


def test_train_step_returns_losses_before_the_update_and_updates_trainables_only(backend):
    cfg = ModelConfig(**SMALL, gridsize=2, probe_trainable=False, intensity_scale_trainable=True)
    model = backend.build_model(cfg, weights(cfg))
    training = TrainingConfig(model=cfg, learning_rate=1e-3, mae_weight=0.5, realspace_weight=0.3)
    model.configure_training(training)
    b = batch(cfg, b=4)
    before = model.get_weights()
    expected = model.losses(b, LossSettings.from_config(training))
    got = model.train_step(b)
    assert set(got) == {"nll", "mae", "realspace", "total"}
    assert all(isinstance(v, float) for v in got.values())
    for k in got:
        assert got[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-9), k
    assert got["total"] == pytest.approx(got["nll"] + 0.5 * got["mae"] + 0.3 * got["realspace"],
                                         rel=1e-6)
    after = model.get_weights()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    trainable = set(trainable_names(cfg))
    assert changed <= trainable and "probe" not in trainable
    assert {k for k in trainable if k.endswith(".kernel")} <= changed
    assert "log_intensity_scale" in changed
    # The first Adam step moves every entry by about lr (alpha * m / sqrt(v) ~ lr * sign(g)).
    step = np.abs(after["enc0.conv1.kernel"] - before["enc0.conv1.kernel"])
    assert step.max() == pytest.approx(1e-3, rel=1e-2)


def test_training_needs_configuration_and_valid_input(backend):
    cfg = ModelConfig(**SMALL)
    model = backend.build_model(cfg, weights(cfg))
    b = batch(cfg)
    with pytest.raises(RuntimeError, match="configure_training"):
        model.train_step(b)
    with pytest.raises(RuntimeError, match="configure_training"):
        model.set_learning_rate(1e-3)
    with pytest.raises(TypeError, match="TrainingConfig"):
        model.configure_training(cfg)
    model.configure_training(TrainingConfig(model=cfg))
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="learning rate"):
            model.set_learning_rate(bad)
    model.set_learning_rate(0.0)         # a schedule's end: a step that changes nothing
    before = model.get_weights()
    model.train_step(b)
    assert all(np.array_equal(v, model.get_weights()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 16\)"):
        model.train_step(batch(ModelConfig(**SMALL, gridsize=2)))
    with pytest.raises(ValueError, match="canvas side"):
        backend.build_model(ModelConfig(**SMALL, gridsize=2), weights(
            ModelConfig(**SMALL, gridsize=2))).losses(
            Batch(np.ones((1, 4, 16, 16), np.float32), np.zeros((1, 4, 2), np.float32), 17),
            LossSettings())


def test_set_learning_rate_scales_the_step(backend):
    cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1)
    deltas = []
    for lr in (1e-3, 4e-3):
        model = backend.build_model(cfg, weights(cfg))
        model.configure_training(TrainingConfig(model=cfg, learning_rate=0.5))
        model.set_learning_rate(lr)
        assert model.learning_rate == pytest.approx(lr)
        before = model.get_weights()["enc1.conv2.kernel"]
        model.train_step(batch(cfg))
        deltas.append(model.get_weights()["enc1.conv2.kernel"] - before)
    np.testing.assert_allclose(deltas[1], 4 * deltas[0], rtol=1e-4, atol=1e-9)


def test_a_few_steps_lower_the_loss(backend):
    cfg = ModelConfig(N=16, base_filters=4, n_filters_scale=1)
    model = backend.build_model(cfg, weights(cfg))
    model.configure_training(TrainingConfig(model=cfg, learning_rate=3e-3))
    b = batch(cfg, b=8)
    first = model.train_step(b)["nll"]
    for _ in range(15):
        last = model.train_step(b)["nll"]
    assert last < 0.8 * first, (first, last)


def test_non_finite_loss_leaves_weights_and_optimiser_untouched(backend):
    cfg = ModelConfig(**SMALL)
    model = backend.build_model(cfg, weights(cfg))
    model.configure_training(TrainingConfig(model=cfg))
    b = batch(cfg, b=2)
    d = b.diffraction.copy()
    d[0, 0, 0, 0] = np.nan
    before = model.get_weights()
    terms = model.train_step(Batch(d, b.rel_offsets, b.canvas_size))
    assert not math.isfinite(terms["total"])
    after = model.get_weights()
    assert all(after[k].tobytes() == before[k].tobytes() for k in before)
    # the first finite step is Adam's first (t = 1): it moves each kernel entry by ~lr
    assert math.isfinite(model.train_step(b)["total"])
    step = np.abs(model.get_weights()["enc0.conv1.kernel"] - before["enc0.conv1.kernel"])
    assert step.max() == pytest.approx(1e-3, rel=1e-2)


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


@pytest.mark.parametrize("gridsize", [1, 2])
def test_same_seed_same_config_same_data_same_history(backend, gridsize):
    cfg = ModelConfig(**SMALL, gridsize=gridsize, probe_trainable=True)
    training = TrainingConfig(model=cfg, batch_size=4, nepochs=3, learning_rate=3e-3,
                              realspace_weight=0.1, lr_schedule="exponential", lr_decay_rate=0.5)
    data = _Data([batch(cfg, b=5, seed=s) for s in range(2)])
    runs = []
    for _ in range(2):
        model = backend.build_model(cfg, weights(cfg, seed=7))
        history = fit(model, data, training)
        runs.append(([r.loss for r in history.epochs], model.get_weights(),
                     [r.learning_rate for r in history.epochs]))
    assert runs[0][0] == runs[1][0]                       # exactly the same floats
    assert all(runs[0][1][k].tobytes() == runs[1][1][k].tobytes() for k in runs[0][1])
    assert runs[0][2] == [3e-3, 1.5e-3, 7.5e-4]
    assert runs[0][0][-1]["nll"] < runs[0][0][0]["nll"]


def test_mask_kinds_each_train(backend):
    """A batch without a mask, with a shared one and with a per-pattern one in one run."""
    cfg = ModelConfig(**SMALL, gridsize=2)
    model = backend.build_model(cfg, weights(cfg))
    model.configure_training(dataclasses.replace(TrainingConfig(model=cfg), learning_rate=1e-3))
    b = batch(cfg, b=3)
    shared = np.ones((16, 16), bool)
    shared[0] = False
    per_pattern = np.ones(b.diffraction.shape, bool)
    per_pattern[1, 2, 3:5] = False
    for mask in (None, shared, per_pattern, None):
        terms = model.train_step(Batch(b.diffraction, b.rel_offsets, b.canvas_size, mask))
        assert all(math.isfinite(v) for v in terms.values())


def test_average_epochs_gives_the_model_the_mean_of_the_last_epochs(backend):
    cfg = ModelConfig(**SMALL, probe_trainable=True)
    training = TrainingConfig(model=cfg, batch_size=4, nepochs=3, learning_rate=3e-3,
                              average_epochs=2)
    data = _Data([batch(cfg, b=5, seed=s) for s in range(2)])
    model = backend.build_model(cfg, weights(cfg, seed=7))
    ends = []
    history = fit(model, data, training, on_epoch_end=lambda r, m: ends.append(m.get_weights()))
    final = model.get_weights()
    assert history.averaged_epochs == 2
    for name in final:
        assert final[name].dtype == ends[-1][name].dtype, name
        want = ((ends[1][name].astype(np.complex128 if final[name].dtype.kind == "c" else np.float64)
                 + ends[2][name]) / 2).astype(final[name].dtype)
        np.testing.assert_array_equal(final[name], want, err_msg=name)
    assert not np.array_equal(final["enc0.conv1.kernel"], ends[2]["enc0.conv1.kernel"])
