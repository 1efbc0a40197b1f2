"""Losses, gradients and the Adam step of the PyTorch backend.

Adam is written out in the Keras 3 form of ``docs/conventions.md`` (``torch.optim.Adam``
places epsilon differently, so it is not used), in the operation order of
``keras.optimizers.Adam.update_step`` so that the TensorFlow backend's Keras optimiser and
this one round alike::

    t += 1;  alpha = lr * sqrt(1 - b2**t) / (1 - b1**t)            (float32)
    m += (g - m) * (1 - b1);  v += (g*g - v) * (1 - b2);  w -= (m * alpha) / (sqrt(v) + eps)

The probe is optimised as two real float32 tensors (real, imag), each with its own moments.
The steps run eagerly: at the sizes this library trains, ``torch.compile`` (inductor, CPU)
was measured slower once its compile time is counted (see ``backends/torch/__init__.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ptycho.batch import Batch
from ptycho.config.schema import TrainingConfig
from ptycho.physics.losses import LossSettings

from backends.torch import physics

if TYPE_CHECKING:  # pragma: no cover
    from backends.torch.model import TorchModel

LOSS_KEYS = ("nll", "mae", "realspace", "total")


class KerasAdam:
    """Adam over a list of float32 tensors, updated in place under ``torch.no_grad``."""

    def __init__(self, params: Sequence[torch.Tensor], beta1: float, beta2: float, epsilon: float):
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"Adam {name} must be in [0, 1), got {value!r}")
        if not float(epsilon) > 0.0:
            raise ValueError(f"Adam epsilon must be > 0, got {epsilon!r}")
        self.params = list(params)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self.m = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.v = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.iterations = 0

    def alpha(self, learning_rate: float, step: int) -> float:
        """``lr * sqrt(1 - b2**t) / (1 - b1**t)`` in float32, as Keras computes it."""
        f32 = dict(dtype=torch.float32)
        t = torch.tensor(float(step), **f32)
        b1p = torch.pow(torch.tensor(self.beta1, **f32), t)
        b2p = torch.pow(torch.tensor(self.beta2, **f32), t)
        lr = torch.tensor(float(learning_rate), **f32)
        return float(lr * torch.sqrt(1 - b2p) / (1 - b1p))

    @torch.no_grad()
    def apply(self, grads: Sequence[torch.Tensor], learning_rate: float) -> None:
        """One update of every parameter with its gradient (same order as ``params``)."""
        if len(grads) != len(self.params):
            raise ValueError(f"{len(grads)} gradients for {len(self.params)} parameters")
        alpha = self.alpha(learning_rate, self.iterations + 1)
        d = torch._foreach_sub(list(grads), self.m)
        torch._foreach_mul_(d, 1.0 - self.beta1)
        torch._foreach_add_(self.m, d)
        g2 = torch._foreach_mul(list(grads), list(grads))
        torch._foreach_sub_(g2, self.v)
        torch._foreach_mul_(g2, 1.0 - self.beta2)
        torch._foreach_add_(self.v, g2)
        step = torch._foreach_mul(self.m, alpha)
        den = torch._foreach_sqrt(self.v)
        torch._foreach_add_(den, self.epsilon)
        torch._foreach_div_(step, den)
        torch._foreach_sub_(self.params, step)
        self.iterations += 1


def loss_terms(model: "TorchModel", batch: Batch, settings: LossSettings) -> dict[str, torch.Tensor]:
    """Forward pass and every loss term as 0-d tensors (differentiable)."""
    d, r, m = model.batch_tensors(batch)
    patches, constrained, pred = model.module(d, r, m)
    return physics.total_loss(pred, d, patches, constrained, settings)


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(terms[k].detach()) for k in LOSS_KEYS}


def evaluate_losses(model: "TorchModel", batch: Batch, settings: LossSettings) -> dict[str, float]:
    """Loss terms without gradients and without an update."""
    with torch.inference_mode():
        return _floats(loss_terms(model, batch, settings))


def _flat_params(model: "TorchModel") -> tuple[list[str], list[torch.Tensor]]:
    names, tensors = [], []
    for name, ts in model.trainable_parameters():
        for t in ts:
            names.append(name)
            tensors.append(t)
    return names, tensors


def _grads(model: "TorchModel", batch: Batch, settings: LossSettings,
           params: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Loss terms and d total / d params, the batch in shards on threads
    (:func:`backends.torch.model.run_sharded`); the shards' means weighted by their sizes."""
    from backends.torch.model import batch_shards, run_sharded

    shards = batch_shards(batch.size)

    def one(shard: slice):
        sub = batch if len(shards) == 1 else Batch(batch.diffraction[shard],
                                                    batch.rel_offsets[shard], batch.canvas_size)
        terms = loss_terms(model, sub, settings)
        grads = torch.autograd.grad(terms["total"], params, allow_unused=True,
                                    materialize_grads=True)
        return terms, list(grads)

    results = run_sharded(one, shards)
    if len(results) == 1:
        return results[0]
    weights = [(s.stop - s.start) / batch.size for s in shards]
    terms = {k: sum(w * r[0][k].detach() for w, r in zip(weights, results)) for k in LOSS_KEYS}
    grads = torch._foreach_mul(results[0][1], weights[0])
    for w, (_, g) in zip(weights[1:], results[1:]):
        torch._foreach_add_(grads, torch._foreach_mul(g, w))
    return terms, grads


def compute_gradients(model: "TorchModel", batch: Batch,
                      settings: LossSettings) -> dict[str, np.ndarray]:
    """d total / d entry for each trainable canonical entry, in the canonical layout.

    Kernels come back as ``(kh, kw, in, out)``; the probe as ``d/d real + 1j d/d imag``.
    """
    from backends.torch.model import kernel_from_torch

    names, params = _flat_params(model)
    _, grads = _grads(model, batch, settings, params)
    out: dict[str, np.ndarray] = {}
    for name, g in zip(names, grads):
        g = g.detach().cpu().contiguous().numpy()
        if name == "probe":
            if name in out:          # second tensor of the probe: the imaginary part
                out[name].imag = g
            else:
                probe = np.zeros(g.shape, np.complex64)
                probe.real = g
                out[name] = probe
        elif name.endswith(".kernel"):
            out[name] = kernel_from_torch(g)
        else:
            out[name] = np.array(g, dtype=np.float32, copy=True)
    return out


class Trainer:
    """The Adam state and loss settings of one ``configure_training`` call."""

    def __init__(self, model: "TorchModel", training: TrainingConfig):
        if not isinstance(training, TrainingConfig):
            raise TypeError(f"training must be a TrainingConfig, got {type(training).__name__}")
        self.model = model
        self.settings = LossSettings.from_config(training)
        self.names, self.params = _flat_params(model)
        self.optimizer = KerasAdam(self.params, training.adam_beta1, training.adam_beta2,
                                   training.adam_epsilon)
        self.learning_rate = float(training.learning_rate)

    def step(self, batch: Batch) -> dict[str, float]:
        """Loss terms before the update, then one Adam step.

        A non-finite loss skips the update (the weights and moments stay finite) and is
        returned as is: the core's driver raises on it and restores the last good weights.
        """
        terms, grads = _grads(self.model, batch, self.settings, self.params)
        values = _floats(terms)
        if all(math.isfinite(v) for v in values.values()):
            self.optimizer.apply(grads, self.learning_rate)
        return values
