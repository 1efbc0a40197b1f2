"""What only the TensorFlow backend has: its Adam is bit-for-bit Keras's, and its compiled
training step is traced once across batch sizes and learning-rate changes."""

from __future__ import annotations

import numpy as np
import pytest

from backend_testing import batch, weights
from backends.common.adam import Adam
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.physics.losses import LossSettings
from ptycho.weights import trainable_names

pytestmark = pytest.mark.tensorflow

SMALL = dict(N=16, base_filters=2, n_filters_scale=1)


@pytest.fixture(scope="module")
def tfb():
    from backends import configure_process
    return configure_process("tensorflow")


def test_adam_matches_keras_bit_for_bit_on_given_gradients(tfb):
    keras = pytest.importorskip("keras")
    import tensorflow as tf

    ops = tfb.ops
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=s).astype(np.float32) for s in [(3, 3, 2, 4), (4,), ()]]
    grads = [[rng.normal(size=a.shape).astype(np.float32) * 10.0 ** rng.integers(-8, 2)
              for a in w0] for _ in range(5)]
    lrs = [1e-3, 1e-3, 5e-4, 2e-2, 1e-3]
    tvars = [ops.variable(a, True) for a in w0]
    mine = Adam(ops, tvars, beta1=0.9, beta2=0.999, epsilon=1e-7, learning_rate=lrs[0])
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
    assert mine.steps == 5


def test_train_step_is_keras_adam_on_the_gradients_in_one_trace(tfb):
    keras = pytest.importorskip("keras")
    cfg = ModelConfig(**SMALL, gridsize=2, probe_trainable=True)
    tcfg = TrainingConfig(model=cfg, batch_size=4, learning_rate=1e-3, adam_beta1=0.8,
                          adam_beta2=0.99, adam_epsilon=1e-6, mae_weight=0.1,
                          realspace_weight=1.0)
    settings = LossSettings.from_config(tcfg)
    model = tfb.build_model(cfg, weights(cfg, seed=6))
    model.configure_training(tcfg)
    names = trainable_names(cfg)

    def flat(w):   # probe as two real arrays, like the variables
        out = []
        for k in names:
            out += [w[k].real.copy(), w[k].imag.copy()] if k == "probe" else [w[k]]
        return out

    kvars = [keras.Variable(a, dtype="float32") for a in flat(model.get_weights())]
    opt = keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                                amsgrad=False)
    opt.build(kvars)
    for step, lr in enumerate([1e-3, 1e-3, 3e-4, 2e-3]):
        model.set_learning_rate(lr)
        opt.learning_rate.assign(lr)
        b = batch(cfg, b=4 if step % 2 == 0 else 3, seed=10 + step)
        before = model.losses(b, settings)
        grads = flat(model.gradients(b, settings))
        terms = model.train_step(b)
        for key in before:
            assert terms[key] == pytest.approx(before[key], rel=1e-6, abs=1e-9), key
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(gr) for gr in grads], kvars))
        for i, (a, kv) in enumerate(zip(flat(model.get_weights()), kvars)):
            expected = np.asarray(kv.numpy())
            # the gradients come from two separately compiled graphs (same ops, possibly
            # different fusion): up to a few ulp of the weights
            ulp = np.spacing(np.maximum(np.abs(expected), np.abs(a))).astype(np.float64)
            assert np.all(np.abs(a.astype(np.float64) - expected) <= 4 * ulp), (step, i)
    assert model.train_step_traces == 1       # four steps, two batch sizes, LR changes
