"""Training in the PyTorch backend: the Keras-3-form Adam, train_step semantics, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho import physics as ref
from ptycho.batch import Batch
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.physics.losses import LossSettings
from ptycho.weights import init_weights, trainable_names

pytestmark = pytest.mark.torch


#: Adam vs a numpy float32 transcription of the same update in the same operation order:
#: only the float32 sqrt/pow of the two libraries may differ, by an ulp or so per step.
ADAM_RTOL = 1e-6


def _probe(n):
    r = np.arange(n) - n // 2
    return (np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (n / 6) ** 2)) * n / 4
            ).astype(np.complex64)


def _model(cfg, seed=0, log_scale=2.0):
    from backends.torch import get_backend
    return get_backend().build_model(cfg, init_weights(cfg, seed, _probe(cfg.N), log_scale))


def _batches(cfg, count, b=4, seed=0, log_scale=2.0):
    rng = np.random.default_rng(seed)
    c, n = cfg.n_channels, cfg.N
    out = []
    for _ in range(count):
        counts = rng.poisson(np.exp(2 * log_scale) * rng.uniform(0.1, 2.0, (b, c, n, n)))
        off = rng.uniform(-3, 3, (b, c, 2)).astype(np.float32) if c > 1 \
            else np.zeros((b, 1, 2), np.float32)
        out.append(Batch(np.sqrt(counts).astype(np.float32), off, n + 8))
    return out


def numpy_keras_adam(w, grads, lr, b1, b2, eps):
    """Float32 numpy transcription of keras.optimizers.Adam.update_step (docs/conventions.md)."""
    f = np.float32
    w, m, v = w.astype(f).copy(), np.zeros_like(w, f), np.zeros_like(w, f)
    for t, g in enumerate(grads, start=1):
        alpha = f(lr) * np.sqrt(f(1) - np.power(f(b2), f(t))) / (f(1) - np.power(f(b1), f(t)))
        m = m + (g - m) * f(1 - b1)
        v = v + (g * g - v) * f(1 - b2)
        w = w - (m * alpha) / (np.sqrt(v) + f(eps))
    return w


@given(st.integers(0, 2 ** 31), st.floats(1e-4, 1e-1), st.floats(0.0, 0.99),
       st.floats(0.9, 0.9999), st.sampled_from([1e-7, 1e-3]))
def test_adam_is_the_keras3_form(seed, lr, b1, b2, eps):
    import torch
    from backends.torch.train import KerasAdam
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((3, 5)).astype(np.float32)
    grads = [rng.standard_normal((3, 5)).astype(np.float32) * 10.0 ** rng.uniform(-4, 1)
             for _ in range(5)]
    p = torch.tensor(w0)
    opt = KerasAdam([p], b1, b2, eps)
    for g in grads:
        opt.apply([torch.tensor(g)], lr)
    want = numpy_keras_adam(w0, grads, lr, b1, b2, eps)
    np.testing.assert_allclose(p.numpy(), want, rtol=ADAM_RTOL, atol=ADAM_RTOL * np.abs(w0).max())
    assert opt.iterations == 5


def test_adam_differs_from_torch_optim_adam():
    """torch.optim.Adam adds eps to sqrt(v_hat), Keras to sqrt(v): visible when eps ~ |g|."""
    import torch
    from backends.torch.train import KerasAdam
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(20).astype(np.float32)
    grads = [rng.standard_normal(20).astype(np.float32) * 1e-3 for _ in range(3)]
    p = torch.tensor(w0)
    opt = KerasAdam([p], 0.9, 0.999, 1e-3)
    q = torch.tensor(w0, requires_grad=True)
    topt = torch.optim.Adam([q], lr=1e-2, betas=(0.9, 0.999), eps=1e-3)
    for g in grads:
        opt.apply([torch.tensor(g)], 1e-2)
        q.grad = torch.tensor(g)
        topt.step()
    ours, theirs = p.numpy() - w0, q.detach().numpy() - w0
    np.testing.assert_allclose(ours, numpy_keras_adam(w0, grads, 1e-2, 0.9, 0.999, 1e-3) - w0,
                               rtol=1e-5, atol=1e-9)
    assert np.abs(ours - theirs).max() > 0.1 * np.abs(ours).max()


def test_train_step_returns_losses_before_the_update_and_updates_trainables_only():
    cfg = ModelConfig(N=16, gridsize=2, base_filters=2, n_filters_scale=1,
                      probe_trainable=False, intensity_scale_trainable=True)
    model = _model(cfg)
    training = TrainingConfig(model=cfg, learning_rate=1e-3, mae_weight=0.5, realspace_weight=0.3)
    model.configure_training(training)
    batch = _batches(cfg, 1)[0]
    before = model.get_weights()
    expected = model.losses(batch, LossSettings.from_config(training))
    got = model.train_step(batch)
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


def test_training_needs_configuration_and_a_valid_rate():
    cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1)
    model = _model(cfg)
    batch = _batches(cfg, 1)[0]
    with pytest.raises(RuntimeError, match="configure_training"):
        model.train_step(batch)
    with pytest.raises(RuntimeError, match="configure_training"):
        model.set_learning_rate(1e-3)
    model.configure_training(TrainingConfig(model=cfg))
    with pytest.raises(ValueError, match="learning rate"):
        model.set_learning_rate(float("nan"))


def test_set_learning_rate_scales_the_step():
    cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1)
    deltas = []
    for lr in (1e-3, 4e-3):
        model = _model(cfg)
        model.configure_training(TrainingConfig(model=cfg, learning_rate=0.5))
        model.set_learning_rate(lr)
        before = model.get_weights()["enc1.conv2.kernel"]
        model.train_step(_batches(cfg, 1)[0])
        deltas.append(model.get_weights()["enc1.conv2.kernel"] - before)
    np.testing.assert_allclose(deltas[1], 4 * deltas[0], rtol=1e-4, atol=1e-9)


def test_a_few_steps_lower_the_loss():
    cfg = ModelConfig(N=16, base_filters=4, n_filters_scale=1, amp_activation="sigmoid")
    model = _model(cfg, log_scale=2.0)
    model.configure_training(TrainingConfig(model=cfg, learning_rate=3e-3))
    batch = _batches(cfg, 1, b=8)[0]
    first = model.train_step(batch)["nll"]
    for _ in range(15):
        last = model.train_step(batch)["nll"]
    assert last < 0.8 * first, (first, last)


@pytest.mark.parametrize("gridsize", [1, 2])
def test_same_seed_same_history(gridsize):
    cfg = ModelConfig(N=16, gridsize=gridsize, base_filters=2, n_filters_scale=1,
                      probe_trainable=True)
    training = TrainingConfig(model=cfg, learning_rate=2e-3, realspace_weight=0.1, seed=3)
    batches = _batches(cfg, 4, seed=7)
    runs = []
    for _ in range(2):
        model = _model(cfg, seed=11)
        model.configure_training(training)
        history = [model.train_step(b) for b in batches + batches]
        runs.append((history, model.get_weights()))
    assert runs[0][0] == runs[1][0]                       # exactly the same floats
    for k, a in runs[0][1].items():
        np.testing.assert_array_equal(a, runs[1][1][k], err_msg=k)
    assert runs[0][0][0]["total"] != runs[0][0][-1]["total"]


def test_non_finite_loss_skips_the_update():
    cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1)
    model = _model(cfg)
    model.configure_training(TrainingConfig(model=cfg))
    batch = _batches(cfg, 1)[0]
    bad = Batch(np.full_like(batch.diffraction, np.inf), batch.rel_offsets, batch.canvas_size)
    before = model.get_weights()
    terms = model.train_step(bad)
    assert not np.isfinite(terms["total"])
    for k, a in model.get_weights().items():
        np.testing.assert_array_equal(a, before[k], err_msg=k)


def test_fit_driver_runs_the_torch_model():
    from ptycho.training import fit

    class Data:
        def __init__(self, batches):
            self.d = np.concatenate([b.diffraction for b in batches])
            self.r = np.concatenate([b.rel_offsets for b in batches])

        def __len__(self):
            return len(self.d)

        def batch(self, idx):
            return Batch(self.d[idx], self.r[idx], 24)

    cfg = ModelConfig(N=16, base_filters=2, n_filters_scale=1)
    data = Data(_batches(cfg, 2, b=6))
    training = TrainingConfig(model=cfg, nepochs=3, batch_size=4, learning_rate=3e-3,
                              lr_schedule="exponential", lr_decay_rate=0.5)
    h1 = fit(_model(cfg), data, training)
    h2 = fit(_model(cfg), data, training)
    assert [r.loss for r in h1.epochs] == [r.loss for r in h2.epochs]
    assert [r.learning_rate for r in h1.epochs] == [3e-3, 1.5e-3, 7.5e-4]
    assert h1.epochs[-1].loss["nll"] < h1.epochs[0].loss["nll"]
    assert ref.canvas_size(16, data.r) <= 24


def test_batch_shards_on_threads_give_the_unsharded_results():
    """With two intra-op threads a batch runs as two shards on two threads (backends.torch.
    model.run_sharded); losses, gradients, an Adam step and predict match the one-thread,
    one-shard results to float32 rounding (the same sums in another order)."""
    import torch

    from backends.torch import model as tm

    cfg = ModelConfig(N=16, gridsize=2, base_filters=2, n_filters_scale=1)
    tc = TrainingConfig(model=cfg, learning_rate=1e-3)
    batch = _batches(cfg, 1, b=5, seed=3)[0]
    settings = LossSettings.from_config(tc)
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert len(tm.batch_shards(batch.size)) == threads
        model = _model(cfg, seed=1)
        grads = model.gradients(batch, settings)
        model.configure_training(tc)
        terms = model.train_step(batch)
        results[threads] = (grads, terms, model.get_weights(),
                            model.predict(batch.diffraction, batch_size=4))
    torch.set_num_threads(1)
    (g1, t1, w1, p1), (g2, t2, w2, p2) = results[1], results[2]
    for name in g1:
        scale = np.abs(g1[name]).max() + 1e-30
        assert np.abs(g2[name] - g1[name]).max() <= 1e-5 * scale, name
    for k in t1:
        assert t2[k] == pytest.approx(t1[k], rel=1e-5, abs=1e-9), k
    for name in w1:     # Adam moves a weight by ~lr * sign(g): a gradient within rounding
        # of zero may take either sign, so the step agrees to 2 lr, and elsewhere far better
        assert np.abs(w2[name] - w1[name]).max() <= 2 * tc.learning_rate, name
    np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-5 * np.abs(p1).max())
