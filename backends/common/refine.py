"""Physics refinement, written once over a backend's ops namespace.

Starting from an object (the network's stitched reconstruction), optimise the object, and
optionally the probe, directly against the measured amplitudes with the training loss's
Poisson likelihood: for each pattern, the object patch at its scan position
(:func:`~backends.common.physics.extract_at`, bilinear) times the effective probe, the
far-field amplitude times ``s = exp(log_intensity_scale)``, and
:func:`~backends.common.physics.poisson_nll` against the counts (bad pixels masked). The
same differentiable physics as training, so no third copy: only the unknowns differ (object
pixels instead of network weights).

The step is the likelihood's gradient, preconditioned the way ptychographic engines do
(PIE): on a minibatch of patterns, ``O -= step * G / (4 s^2 (illumination + reg max))``,
where ``G`` is the gradient of the summed NLL and ``illumination`` the sum of the probe
intensities ``|P|^2`` over the batch's positions (likewise for the probe, with the patches'
intensities). Why these constants: near the optimum the Poisson NLL of an amplitude ``a``
against counts ``k`` curves like ``4 (a - sqrt(k))^2``, so with the orthonormal FFT the
Gauss-Newton curvature of one pattern in its exit wave is ``4 s^2``: ``step = 1`` moves each
exit wave to its measured amplitudes (the projection of error reduction), and the object
update averages those corrections where patterns overlap. The step is dimensionless (no
object-scale learning rate), and the truth is a fixed point (a zero gradient moves nothing).
An *iteration* is one pass over every pattern in seeded minibatches.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Union

import numpy as np

from backends.common import physics

#: Step of each minibatch update (1: a full projection step, see the module docstring).
STEP = 1.0
#: :func:`run`'s momentum (as mPIE's): from the second pass on, after each pass the object
#: moves on along its recent passes, ``v = MOMENTUM v + (O_k - O_k-1)``, ``O_k += MOMENTUM v``:
#: smooth errors, which local steps shrink slowly, shrink faster. Measured from the network's
#: object (natural-image objects, diffuser probe, 256 patterns, 1e9 photons): SSIM within 0.03
#: of pty-chi's rPIE after 3 passes (astronaut/gravel) and 8 (coffee/coins) instead of 3 and
#: 15; after 30 passes 0.996 / 1.000 and 0.995 / 0.988 instead of 0.995 / 1.000 and 0.992 /
#: 0.975 (rPIE: 0.999 / 1.000, 0.998 / 0.992). At 1e6 photons higher up to 12 passes, then
#: within 0.001 in amplitude and higher in phase (coffee/coins after 30: 0.984 against 0.972);
#: from a flat start (tests/backends/test_refine.py's GRF) higher at every count. Larger early
#: steps (2, decaying) were faster from the network's object but slower from a flat start or
#: with the probe refined, so the step stays ``STEP``.
MOMENTUM = 0.5
#: Regularisation of the preconditioner: ``illumination + REGULARISATION * max``, which
#: damps the steps where the batch barely lights the object (its edges, the probe's tails),
#: where the gradient is mostly noise. Measured (N=64 GRF, defocused probe, 400 patterns, 10
#: iterations from a flat start): 0.01 is fastest at 1e9 photons but fits the noise at 1e6
#: (amplitude SSIM 0.79-0.92); 0.1 gives 0.999 at 1e9 and 0.97-0.98 at 1e6.
REGULARISATION = 0.1

DiffractionLike = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]


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


def _checked_start(obj: np.ndarray, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obj, probe = np.asarray(obj), np.asarray(probe)
    if obj.ndim != 2 or not np.all(np.isfinite(obj)):
        raise ValueError(f"obj must be a finite (H, W) array, got shape {obj.shape}")
    n = probe.shape[-1] if probe.ndim else 0
    if probe.shape != (n, n) or not np.all(np.isfinite(probe)):
        raise ValueError(f"probe must be a finite (N, N) array, got shape {probe.shape}")
    if min(obj.shape) < n:
        raise ValueError(f"the object {obj.shape} is smaller than a patch ({n} x {n})")
    return obj, probe


def _curvature(log_intensity_scale: float) -> float:
    return 4.0 * math.exp(2.0 * float(log_intensity_scale))


class Refiner:
    """The state of one refinement: the object (and probe) variables and the compiled step.

    ``obj`` (H, W) and ``probe`` (N, N) complex (the raw probe; ``disk_mask`` (N, N) float32
    or None makes the effective one, as in the model); ``log_intensity_scale`` as the
    model's. ``step`` and ``regularisation``: see the module docstring.
    """

    def __init__(self, ops, device, obj: np.ndarray, probe: np.ndarray,
                 log_intensity_scale: float, disk_mask=None, *, refine_probe: bool = False,
                 step: float = STEP, regularisation: float = REGULARISATION,
                 epsilon: float = 1e-6):
        obj, probe = _checked_start(obj, probe)
        for name, value in (("step", step), ("regularisation", regularisation)):
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.ops, self.device, self.n, self.shape = ops, device, probe.shape[-1], obj.shape
        self.refine_probe = bool(refine_probe)
        self.epsilon, self.step_size, self.regularisation = float(epsilon), float(step), \
            float(regularisation)

        def var(x, trainable):
            return ops.variable(np.ascontiguousarray(x, np.float32), trainable, device)

        self._obj = [var(obj.real, True), var(obj.imag, True)]
        self._probe = [var(probe.real, self.refine_probe), var(probe.imag, self.refine_probe)]
        # a real canvas: the illumination is the gradient of the linear sum |P|^2 E(canvas)
        # in it (the adjoint of the patch extraction applied to |P|^2), whatever its values
        self._lit = var(np.zeros(obj.shape), True)
        # variables, not constants, so that a restarted refiner's compiled step reads new ones
        self._log_scale = ops.scalar_variable(float(log_intensity_scale), "float32")
        # 4 s^2: the curvature of the NLL per unit exit-wave change near the optimum
        self._curvature = ops.scalar_variable(_curvature(log_intensity_scale), "float32")
        self._disk = disk_mask
        self._compiled: dict = {}
        self._retired = False

    def restarted(self, obj: np.ndarray, probe: np.ndarray,
                  log_intensity_scale: float) -> "Refiner":
        """A refinement from a new start (an object of the same shape) with this one's
        settings, variables and compiled steps, which a compiled backend then need not trace
        again (TensorFlow: about 0.5 s a refiner). This refiner is retired: the new one owns
        the variables, and this one's methods raise."""
        self._check_live()
        obj, probe = _checked_start(obj, probe)
        if obj.shape != self.shape or probe.shape != (self.n, self.n):
            raise ValueError(f"a restart needs the object shape {self.shape} and probe "
                             f"({self.n}, {self.n}), got {obj.shape} and {probe.shape}")
        new = copy.copy(self)
        self._retired = True
        new.set_object(obj)
        ops = self.ops
        for var, part in zip(new._probe, (probe.real, probe.imag)):
            ops.assign(var, np.ascontiguousarray(part, np.float32))
        ops.assign(new._log_scale, float(log_intensity_scale))
        ops.assign(new._curvature, _curvature(log_intensity_scale))
        return new

    def _check_live(self) -> None:
        if self._retired:
            raise RuntimeError("this refiner was restarted (a later refiner() of its model with "
                               "the same settings took over its variables); use that one")

    @property
    def variables(self) -> list:
        return self._obj + (self._probe if self.refine_probe else [])

    # -------------------------------------------------------------- the loss and the step
    def _probe_eff(self):
        ops = self.ops
        return physics.effective_probe(
            ops, ops.complex(ops.value(self._probe[0]), ops.value(self._probe[1])), self._disk)

    def _terms(self, corners, fractions, diffraction, pixel_count, mask=None):
        ops = self.ops
        canvas = ops.complex(ops.value(self._obj[0]), ops.value(self._obj[1]))
        patches = physics.extract_at(ops, canvas, corners, fractions, self.n)
        pred = physics.far_field_amplitude(ops, physics.illuminate(ops, self._probe_eff(),
                                                                   patches))
        nll = physics.poisson_nll(ops, pred * ops.exp(ops.value(self._log_scale)), diffraction,
                                  self.epsilon, mask, pixel_count)
        return {"nll": nll, "total": nll}

    def _value_and_grad(self, *args):
        # one shard: a step is FFTs and pixelwise ops on a small batch, which a backend's
        # own threads split better than shards in threads (torch, 256 patterns in batches of
        # 16 on 2 cores: 0.18 -> 0.11 s a pass)
        return self.ops.value_and_grad(lambda: self._terms(*args), self.variables)

    def _illumination(self, corners, fractions):
        """Sum over the batch of |P_eff|^2 placed at each position, on the object grid."""
        ops = self.ops
        intensity = ops.square(ops.abs(self._probe_eff()))

        def placed():
            windows = physics.extract_at(ops, ops.value(self._lit), corners, fractions, self.n)
            return {"total": ops.sum(intensity * windows)}

        return ops.value_and_grad(placed, [self._lit])[1][0]

    def _precondition(self, grad, illumination, count):
        ops = self.ops
        floor = self.regularisation * ops.maximum(ops.amax(illumination), 1e-30)
        return grad * (self.step_size * count) / (ops.value(self._curvature)
                                                  * (illumination + floor))

    def _step(self, *args):
        ops = self.ops
        corners, fractions, _, count = args[:4]
        terms, grads = self._value_and_grad(*args)
        illumination = self._illumination(corners, fractions)
        updates = [self._precondition(g, illumination, count) for g in grads[:2]]
        if self.refine_probe:
            canvas = ops.complex(ops.value(self._obj[0]), ops.value(self._obj[1]))
            patches = physics.extract_at(ops, canvas, corners, fractions, self.n)
            lit = ops.sum(ops.square(ops.abs(patches)), axis=0)          # sum_k |O_k|^2
            updates += [self._precondition(g, lit, count) for g in grads[2:]]

        def apply():
            for var, delta in zip(self.variables, updates):
                ops.assign_sub(var, delta)

        ops.run_if(ops.all_finite([terms["nll"]]), apply)
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
        """One preconditioned step on a batch of patterns; returns their NLL before it."""
        self._check_live()
        terms = self._fn("step", mask)(*self._args(positions, diffraction, mask))
        return float(self.ops.read(terms["nll"]))

    def gradients(self, positions: np.ndarray, diffraction: np.ndarray,
                  mask: Optional[np.ndarray] = None) -> dict:
        """``nll`` and its gradients (``d/d real + 1j d/d imag``): ``object`` and, when the
        probe is refined, ``probe`` (the raw probe, before the disk mask)."""
        self._check_live()
        terms, grads = self._fn("grads", mask)(*self._args(positions, diffraction, mask))
        g = [self.ops.read(x) for x in grads]
        out = {"nll": float(self.ops.read(terms["nll"])), "object": g[0] + 1j * g[1]}
        if self.refine_probe:
            out["probe"] = g[2] + 1j * g[3]
        return {k: (v.astype(np.complex64) if k != "nll" else v) for k, v in out.items()}

    def set_object(self, obj: np.ndarray) -> None:
        """Replace the object (same shape, finite)."""
        self._check_live()
        obj = np.asarray(obj)
        if obj.shape != self.shape or not np.all(np.isfinite(obj)):
            raise ValueError(f"obj must be a finite {self.shape} array, got shape {obj.shape}")
        for var, part in zip(self._obj, (obj.real, obj.imag)):
            self.ops.assign(var, np.ascontiguousarray(part, np.float32))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The current object (H, W) and probe (N, N), complex64."""
        self._check_live()
        ops = self.ops
        obj = ops.read(self._obj[0]) + 1j * ops.read(self._obj[1])
        probe = ops.read(self._probe[0]) + 1j * ops.read(self._probe[1])
        return obj.astype(np.complex64), probe.astype(np.complex64)


def run(refiner: Refiner, positions: np.ndarray, diffraction: DiffractionLike, iterations: int,
        *, batch_size: int = 64, mask: Optional[np.ndarray] = None, seed: int = 0,
        progress: Optional[Callable[[int, int, float], None]] = None,
        momentum: float = MOMENTUM) -> list[float]:
    """``iterations`` passes over every pattern in seeded minibatches; returns the mean NLL
    of each pass (over its patterns, before their steps).

    ``diffraction``: (M, N, N) photon-unit amplitudes, or a function ``rows -> (b, N, N)``
    (e.g. reading a memory-mapped scan). ``mask``: None, (N, N) or (M, N, N).
    ``progress(done, iterations, nll)`` after each pass. ``momentum`` (0: none) moves the
    object on after each pass from the second (see :data:`MOMENTUM`).
    """
    if not (math.isfinite(float(momentum)) and 0 <= float(momentum) < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    positions = np.asarray(positions, np.float64)
    m = len(positions)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
            or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    read = diffraction if callable(diffraction) else (lambda rows: diffraction[rows])
    history, velocity = [], None
    for it in range(int(iterations)):
        before = refiner.result()[0] if momentum and it >= 1 else None
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
        if before is not None:
            after = refiner.result()[0]
            moved = after - before
            velocity = moved if velocity is None else momentum * velocity + moved
            refiner.set_object(after + np.complex64(momentum) * velocity)
        history.append(total / m)
        if progress is not None:
            progress(it + 1, int(iterations), history[-1])
    return history
