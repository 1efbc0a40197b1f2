"""Adam, written once over a backend's ops namespace, in the Keras 3 form.

Not a framework optimiser (Keras's wants Keras variables and owns hidden state; torch's places
epsilon differently), but exactly the form and operation order of Keras 3's
``Adam.update_step`` (``docs/conventions.md``), every hyperparameter explicit, all float32::

    t += 1;  alpha = lr * sqrt(1 - b2**t) / (1 - b1**t)
    m += (g - m) * (1 - b1);  v += (g*g - v) * (1 - b2);  w -= (m * alpha) / (sqrt(v) + eps)

(``m += (g - m)(1 - b1)`` is ``m = b1 m + (1 - b1) g`` of the conventions, in Keras's
rounding.) A test runs ``keras.optimizers.Adam`` beside it and requires identical bits. No
amsgrad, no weight decay, no gradient clipping. ``learning_rate`` and ``iterations`` are
backend variables, so changing the rate between steps does not retrace a compiled step.
"""

from __future__ import annotations

import math
from typing import Sequence

from backends.common.overrides import overridable


def check_learning_rate(learning_rate) -> float:
    """``learning_rate`` as a float, or ValueError unless it is a finite number >= 0 (0: the
    steps change nothing, as a schedule may ask)."""
    try:
        lr = float(learning_rate)
    except (TypeError, ValueError):
        raise ValueError(f"learning rate must be a finite number >= 0, got {learning_rate!r}") \
            from None
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"learning rate must be a finite number >= 0, got {learning_rate!r}")
    return lr


class Adam:
    """Adam over backend variables (each updated in place), Keras-3 form.

    >>> import numpy as np
    >>> from backends import get_backend
    >>> ops = get_backend("tensorflow").ops
    >>> w = ops.variable(np.array([1.0, -1.0], np.float32), trainable=True)
    >>> opt = Adam(ops, [w], beta1=0.9, beta2=0.999, epsilon=1e-7, learning_rate=0.1)
    >>> opt.apply([ops.tensor([2.0, -3.0], "float32")])   # first step: lr * sign(g)
    >>> [round(float(x), 4) for x in ops.read(w)], opt.steps
    ([0.9, -0.9], 1)
    """

    def __init__(self, ops, variables: Sequence, beta1: float, beta2: float, epsilon: float,
                 learning_rate: float):
        for name, val in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(val) < 1.0:
                raise ValueError(f"Adam {name} must be in [0, 1), got {val!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"Adam epsilon must be > 0, got {epsilon!r}")
        self.ops = ops
        self.variables = list(variables)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self._lr = ops.scalar_variable(check_learning_rate(learning_rate), "float32")
        self.iterations = ops.scalar_variable(0, "int64")
        self.m = [ops.zeros_variable_like(v) for v in self.variables]
        self.v = [ops.zeros_variable_like(v) for v in self.variables]

    def set_learning_rate(self, learning_rate: float) -> None:
        self.ops.assign(self._lr, check_learning_rate(learning_rate))

    @property
    def learning_rate(self) -> float:
        return float(self.ops.read(self._lr))

    @property
    def steps(self) -> int:
        """Updates applied so far (``t`` of the last update)."""
        return int(self.ops.read(self.iterations))

    def apply(self, grads: Sequence) -> None:
        """One update of every variable with its gradient (same order as ``variables``)."""
        ops = self.ops
        if len(grads) != len(self.variables):
            raise ValueError(f"{len(grads)} gradients for {len(self.variables)} variables")
        t = ops.cast(ops.value(self.iterations) + 1, "float32")
        b1_power = ops.pow(ops.constant(self.beta1), t)
        b2_power = ops.pow(ops.constant(self.beta2), t)
        alpha = ops.value(self._lr) * ops.sqrt(1.0 - b2_power) / (1.0 - b1_power)
        adam_update(ops, self.variables, list(grads), self.m, self.v, alpha,
                    self.beta1, self.beta2, self.epsilon)
        ops.assign_add(self.iterations, 1)


@overridable
def adam_update(ops, variables, grads, m, v, alpha, beta1, beta2, epsilon) -> None:
    """The moment and weight updates of one Adam step, variable by variable (in place)."""
    for var, g, m_i, v_i in zip(variables, grads, m, v):
        g = ops.cast(g, "float32")
        ops.assign_add(m_i, (g - ops.value(m_i)) * (1.0 - beta1))
        ops.assign_add(v_i, (ops.square(g) - ops.value(v_i)) * (1.0 - beta2))
        ops.assign_sub(var, (ops.value(m_i) * alpha) / (ops.sqrt(ops.value(v_i)) + epsilon))
