"""Physics refinement, written once over a backend's ops namespace.

Starting from an object (the network's stitched reconstruction), optimise the object, and
optionally the probe, directly against the measured amplitudes with the training loss's
Poisson likelihood: for each pattern, the object patch at its scan position
(:func:`~backends.common.physics.extract_at`, bilinear) times the effective probe, the
far-field amplitude times ``exp(log_intensity_scale)``, and
:func:`~backends.common.physics.poisson_nll` against the counts (bad pixels masked). The
same differentiable physics as training, so no third copy: only the unknowns differ (object
pixels instead of network weights).

Optimiser: Adam (:mod:`~backends.common.adam`, the Keras 3 form) on minibatches of
patterns, one separate Adam for the probe; an *iteration* is one pass over every pattern in
a seeded order. Adam's per-pixel normalisation makes the step size about ``learning_rate``
per pixel whatever the illumination, which is what ptychographic engines get from their
``|P|^2`` preconditioners; the default rate is a fixed fraction of the starting object's
RMS amplitude (:data:`LEARNING_RATE_FRACTION`), so it is dimensionless.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import numpy as np

from backends.common import physics
from backends.common.adam import Adam
from backends.common.gradients import sharded_value_and_grad

#: Default Adam step for the object: this fraction of the starting object's RMS amplitude
#: (over its non-zero pixels); for the probe, of the probe's RMS amplitude.
LEARNING_RATE_FRACTION = 0.05
PROBE_LEARNING_RATE_FRACTION = 0.005
#: The learning rates follow a cosine from their start to this fraction of it over the run's
#: iterations: large steps while far from the optimum, small ones near it (with a constant
#: rate Adam's steps keep the object jittering about the optimum at ~rate per pixel).
FINAL_RATE_FRACTION = 0.05
#: Adam's moments for refinement (the same form as training's; explicit, never a default).
ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8

DiffractionLike = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]


def rms_amplitude(x: np.ndarray) -> float:
    """RMS of ``|x|`` over its non-zero elements (1.0 when all are zero).

    >>> rms_amplitude(np.array([0.0, 3.0, 4.0j]))
    3.5355339059327378
    """
    a = np.abs(np.asarray(x))
    nz = a[a > 0]
    return float(np.sqrt(np.mean(nz ** 2))) if nz.size else 1.0


def corners_and_fractions(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the N-patches at ``positions`` (M, 2) = (x, y): integer (row, col)
    (int32) and the sub-pixel remainder (float32, in [0, 1)).

    >>> c, f = corners_and_fractions(np.array([[10.25, 4.0]]), 4)
    >>> c.tolist(), f.tolist()
    ([[2, 8]], [[0.0, 0.25]])
    """
    top = np.asarray(positions, np.float64)[:, ::-1] - n // 2
    corners = np.floor(top)
    return corners.astype(np.int32), (top - corners).astype(np.float32)


class Refiner:
    """The state of one refinement: object (and probe) variables, their Adam states, and the
    compiled step. ``obj`` (H, W) and ``probe`` (N, N) complex; ``log_intensity_scale`` and
    ``disk_mask`` (N, N) float32 or None as in the model."""

    def __init__(self, ops, device, obj: np.ndarray, probe: np.ndarray,
                 log_intensity_scale: float, disk_mask=None, *, refine_probe: bool = False,
                 learning_rate: Optional[float] = None,
                 probe_learning_rate: Optional[float] = None, epsilon: float = 1e-6):
        obj = np.asarray(obj)
        probe = np.asarray(probe)
        if obj.ndim != 2 or not np.all(np.isfinite(obj)):
            raise ValueError(f"obj must be a finite (H, W) array, got shape {obj.shape}")
        n = probe.shape[-1]
        if probe.shape != (n, n) or not np.all(np.isfinite(probe)):
            raise ValueError(f"probe must be a finite (N, N) array, got shape {probe.shape}")
        if min(obj.shape) < n:
            raise ValueError(f"the object {obj.shape} is smaller than a patch ({n} x {n})")
        self.ops, self.device, self.n = ops, device, n
        self.refine_probe = bool(refine_probe)
        self.epsilon = float(epsilon)

        def var(x, trainable):
            return ops.variable(np.ascontiguousarray(x, np.float32), trainable, device)

        self._obj = [var(obj.real, True), var(obj.imag, True)]
        self._probe = [var(probe.real, self.refine_probe), var(probe.imag, self.refine_probe)]
        self._log_scale = ops.tensor(np.float32(log_intensity_scale), "float32", device)
        self._disk = disk_mask
        lr = learning_rate if learning_rate is not None else (
            LEARNING_RATE_FRACTION * rms_amplitude(obj))
        self._adam = [Adam(ops, self._obj, ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, lr)]
        if self.refine_probe:
            plr = probe_learning_rate if probe_learning_rate is not None else (
                PROBE_LEARNING_RATE_FRACTION * rms_amplitude(probe))
            self._adam.append(Adam(ops, self._probe, ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, plr))
        self.initial_learning_rates = [a.learning_rate for a in self._adam]
        self._compiled: dict = {}

    def scale_learning_rates(self, factor: float) -> None:
        """Learning rates of the following steps: ``factor`` times the initial ones."""
        for adam, lr in zip(self._adam, self.initial_learning_rates):
            adam.set_learning_rate(lr * factor)

    @property
    def variables(self) -> list:
        return self._obj + (self._probe if self.refine_probe else [])

    # -------------------------------------------------------------- the loss and the step
    def _terms(self, corners, fractions, diffraction, pixel_count, mask=None):
        ops = self.ops
        canvas = ops.complex(ops.value(self._obj[0]), ops.value(self._obj[1]))
        probe = physics.effective_probe(
            ops, ops.complex(ops.value(self._probe[0]), ops.value(self._probe[1])), self._disk)
        patches = physics.extract_at(ops, canvas, corners, fractions, self.n)
        pred = physics.far_field_amplitude(ops, physics.illuminate(ops, probe, patches))
        nll = physics.poisson_nll(ops, pred * ops.exp(self._log_scale), diffraction,
                                  self.epsilon, mask, pixel_count)
        return {"nll": nll, "total": nll}

    def _value_and_grad(self, *args):
        per_pattern_mask = len(args) == 5 and len(args[4].shape) == 3
        return sharded_value_and_grad(self.ops, self._terms, self.variables, args,
                                      (0, 1, 2, 4) if per_pattern_mask else (0, 1, 2))

    def _step(self, *args):
        terms, grads = self._value_and_grad(*args)

        def update():
            self._adam[0].apply(grads[:2])
            if self.refine_probe:
                self._adam[1].apply(grads[2:])

        self.ops.run_if(self.ops.all_finite([terms["nll"]]), update)
        return terms

    def _fn(self, what: str, mask: Optional[np.ndarray]):
        kind = "none" if mask is None else ("shared" if mask.ndim == 2 else "per_pattern")
        if (what, kind) not in self._compiled:
            n = self.n
            specs = [((None, 2), "int32"), ((None, 2), "float32"), ((None, n, n), "float32"),
                     ((), "float32")]
            specs += {"none": [], "shared": [((n, n), "float32")],
                      "per_pattern": [((None, n, n), "float32")]}[kind]
            fn = self._step if what == "step" else self._value_and_grad
            self._compiled[what, kind] = self.ops.compile(fn, specs)
        return self._compiled[what, kind]

    def _args(self, positions, diffraction, mask) -> list:
        ops, d = self.ops, np.asarray(diffraction, np.float32)
        if d.ndim != 3 or d.shape[1:] != (self.n, self.n) or len(positions) != len(d):
            raise ValueError(f"diffraction must be (B, {self.n}, {self.n}) with one position "
                             f"per pattern, got {d.shape} and {np.shape(positions)}")
        corners, fractions = corners_and_fractions(positions, self.n)
        pixels = float(d.size if mask is None else np.count_nonzero(np.broadcast_to(mask, d.shape)))
        args = [ops.tensor(corners, "int32", self.device),
                ops.tensor(fractions, "float32", self.device),
                ops.tensor(d, "float32", self.device), pixels]
        if mask is not None:
            args.append(ops.tensor(mask, "float32", self.device))
        return args

    def step(self, positions: np.ndarray, diffraction: np.ndarray,
             mask: Optional[np.ndarray] = None) -> float:
        """One Adam step on a batch of patterns; returns their NLL before the step."""
        terms = self._fn("step", mask)(*self._args(positions, diffraction, mask))
        return float(self.ops.read(terms["nll"]))

    def gradients(self, positions: np.ndarray, diffraction: np.ndarray,
                  mask: Optional[np.ndarray] = None) -> dict:
        """``nll`` and its gradients (``d/d real + 1j d/d imag``): ``object`` and, when the
        probe is refined, ``probe`` (the raw probe, before the disk mask)."""
        terms, grads = self._fn("grads", mask)(*self._args(positions, diffraction, mask))
        g = [self.ops.read(x) for x in grads]
        out = {"nll": float(self.ops.read(terms["nll"])), "object": g[0] + 1j * g[1]}
        if self.refine_probe:
            out["probe"] = g[2] + 1j * g[3]
        return {k: (v.astype(np.complex64) if k != "nll" else v) for k, v in out.items()}

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The current object (H, W) and probe (N, N), complex64."""
        ops = self.ops
        obj = ops.read(self._obj[0]) + 1j * ops.read(self._obj[1])
        probe = ops.read(self._probe[0]) + 1j * ops.read(self._probe[1])
        return obj.astype(np.complex64), probe.astype(np.complex64)


def schedule(iteration: int, iterations: int) -> float:
    """Learning-rate factor of ``iteration`` (0-based): a cosine from 1 to
    :data:`FINAL_RATE_FRACTION`.

    >>> [round(schedule(i, 3), 3) for i in range(3)]
    [1.0, 0.525, 0.05]
    """
    if iterations <= 1:
        return 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * iteration / (iterations - 1)))
    return FINAL_RATE_FRACTION + (1.0 - FINAL_RATE_FRACTION) * cosine


def run(refiner: Refiner, positions: np.ndarray, diffraction: DiffractionLike, iterations: int,
        *, batch_size: int = 64, mask: Optional[np.ndarray] = None, seed: int = 0,
        progress: Optional[Callable[[int, int, float], None]] = None) -> list[float]:
    """``iterations`` passes over every pattern in seeded minibatches; returns the mean NLL
    of each pass (over its patterns, before their steps).

    ``diffraction``: (M, N, N) photon-unit amplitudes, or a function ``rows -> (b, N, N)``
    (e.g. reading a memory-mapped scan). ``mask``: None, (N, N) or (M, N, N).
    ``progress(done, iterations, nll)`` after each pass.
    """
    positions = np.asarray(positions, np.float64)
    m = len(positions)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
            or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    read = diffraction if callable(diffraction) else (lambda rows: diffraction[rows])
    history = []
    for it in range(int(iterations)):
        refiner.scale_learning_rates(schedule(it, int(iterations)))
        order = np.random.default_rng([seed, it]).permutation(m)
        total = 0.0
        for start in range(0, m, batch_size):
            rows = np.sort(order[start:start + batch_size])
            sub_mask = mask if mask is None or mask.ndim == 2 else mask[rows]
            nll = refiner.step(positions[rows], read(rows), sub_mask)
            if not math.isfinite(nll):
                raise FloatingPointError(
                    f"refinement: non-finite NLL at iteration {it}, patterns {rows[:4].tolist()}...; "
                    f"the object was left as it was before that step")
            total += nll * len(rows)
        history.append(total / m)
        if progress is not None:
            progress(it + 1, int(iterations), history[-1])
    return history
