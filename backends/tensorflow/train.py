"""Optimiser and compiled training step of the TensorFlow backend.

Adam is written out here rather than taken from ``keras.optimizers.Adam`` (which wants Keras
variables and owns hidden state), but in exactly the form and operation order of Keras 3's
``Adam.update_step`` (``docs/conventions.md``; the torch backend uses the same order), with
every hyperparameter explicit and everything in float32::

    t += 1;  alpha = lr * sqrt(1 - b2**t) / (1 - b1**t)
    m += (g - m) * (1 - b1);  v += (g*g - v) * (1 - b2);  w -= (m * alpha) / (sqrt(v) + eps)

(``m += (g - m)(1 - b1)`` is ``m = b1 m + (1 - b1) g`` of the conventions, in Keras's
rounding.) A test runs ``keras.optimizers.Adam`` beside it and requires identical bits. No
amsgrad, no weight decay, no gradient clipping. A step whose loss is not finite computes the
loss terms but leaves weights, moments and the step counter unchanged (the core's driver
then raises and restores the last good weights), as the torch backend does.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from ptycho.config.schema import ModelConfig


class Adam:
    """Adam in the Keras-3 form with explicit ``beta1``, ``beta2``, ``epsilon``.

    ``learning_rate`` and ``iterations`` are variables, so changing the learning rate between
    steps does not retrace a compiled step.

    >>> w = tf.Variable([1.0, -1.0])
    >>> opt = Adam([w], beta1=0.9, beta2=0.999, epsilon=1e-7, learning_rate=0.1)
    >>> opt.apply([tf.constant([2.0, -3.0])])      # first step: lr * sign(g)
    >>> [round(float(x), 4) for x in w.numpy()], int(opt.iterations.numpy())
    ([0.9, -0.9], 1)
    """

    def __init__(self, variables: Sequence[tf.Variable], beta1: float, beta2: float,
                 epsilon: float, learning_rate: float):
        for name, val in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(val) < 1.0:
                raise ValueError(f"Adam {name} must be in [0, 1), got {val!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"Adam epsilon must be > 0, got {epsilon!r}")
        self.variables = list(variables)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.epsilon = float(epsilon)
        self._lr = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="adam.learning_rate")
        self.set_learning_rate(learning_rate)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="adam.iterations")
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False, name=f"adam.m.{i}")
                  for i, v in enumerate(self.variables)]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False, name=f"adam.v.{i}")
                  for i, v in enumerate(self.variables)]

    def set_learning_rate(self, learning_rate: float) -> None:
        lr = float(learning_rate)
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning rate must be a finite number > 0, got {learning_rate!r}")
        self._lr.assign(lr)

    @property
    def learning_rate(self) -> float:
        return float(self._lr.numpy())

    def apply(self, grads: Sequence[tf.Tensor]) -> None:
        """One update of every variable with its gradient (same order as ``variables``)."""
        if len(grads) != len(self.variables):
            raise ValueError(f"{len(grads)} gradients for {len(self.variables)} variables")
        t = tf.cast(self.iterations + 1, tf.float32)
        b1_power = tf.pow(tf.constant(self.beta1, tf.float32), t)
        b2_power = tf.pow(tf.constant(self.beta2, tf.float32), t)
        alpha = self._lr * tf.sqrt(1.0 - b2_power) / (1.0 - b1_power)
        for var, g, m, v in zip(self.variables, grads, self.m, self.v):
            g = tf.cast(g, var.dtype)
            m.assign_add((g - m) * (1.0 - self.beta1))
            v.assign_add((tf.square(g) - v) * (1.0 - self.beta2))
            var.assign_sub((m * alpha) / (tf.sqrt(v) + self.epsilon))
        self.iterations.assign_add(1)


def compile_train_step(loss_and_grads: Callable, optimizer: Adam, config: ModelConfig):
    """A ``tf.function`` with a fixed signature: batch tensors + loss settings -> loss terms.

    ``loss_and_grads(diffraction, rel_offsets, canvas_size, loss_weights, loss_epsilon)``
    returns ``(terms, grads)`` with grads in ``optimizer.variables`` order. The batch axis is
    ``None`` so that a short last batch does not retrace; the terms are those before the update.
    """
    n, c = config.N, config.n_channels

    @tf.function(input_signature=(
        tf.TensorSpec([None, c, n, n], tf.float32, name="diffraction"),
        tf.TensorSpec([None, c, 2], tf.float32, name="rel_offsets"),
        tf.TensorSpec([], tf.int32, name="canvas_size"),
        tf.TensorSpec([3], tf.float32, name="loss_weights"),
        tf.TensorSpec([], tf.float32, name="loss_epsilon")))
    def train_step(diffraction, rel_offsets, canvas_size, loss_weights, loss_epsilon):
        terms, grads = loss_and_grads(diffraction, rel_offsets, canvas_size, loss_weights,
                                      loss_epsilon)
        finite = tf.reduce_all([tf.math.is_finite(terms[k]) for k in sorted(terms)])

        def update():
            optimizer.apply(grads)
            return tf.constant(True)

        tf.cond(finite, update, lambda: tf.constant(False))
        return terms

    return train_step
