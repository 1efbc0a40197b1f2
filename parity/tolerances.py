"""The one tolerance table of the parity harness: per stage and op class, with a reason each.

An element passes when ``|a - b| <= atol + rtol * scale``, where ``scale`` is set by the
entry's :attr:`Tolerance.scale`:

* ``"elementwise"``: ``|b|`` (or ``max(|a|, |b|)`` between two backends) at that element;
* ``"max"``: the largest ``|b|`` (or ``max(|a|, |b|)``) of the whole array, for quantities
  whose float32 error is set by the largest term that enters them (FFTs, sums, matmuls,
  gradients) and not by the element itself.
* ``"given"``: a scale the stage supplies with the comparison (documented where used, e.g.
  the Poisson NLL is compared relative to the mean photon count of the pixels it sums).

Errors that grow with the number of optimiser steps ``k`` or with the problem size say how
(see :attr:`Tolerance.grows` and :func:`tolerance`). The float32 unit round-off is
``2**-24 = 6.0e-8``; every entry below starts from a small multiple of it and says why.

>>> tolerance("network.forward").rtol
1e-05
>>> tolerance("optimizer.weights", steps=4).rtol == 4 * TOLERANCES["optimizer.weights"].rtol
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

#: float32 unit round-off (half an ulp at 1.0).
F32_EPS = 2.0 ** -24
#: The smallest normal float32; below it TensorFlow's CPU kernels flush results to zero.
F32_TINY = 2.0 ** -126
#: Absolute floor for ops whose results can reach float32's underflow edge: TensorFlow's CPU
#: kernels flush subnormal intermediates to zero (FTZ/DAZ) and torch keeps them, so values
#: within a few dozen smallest-normals of zero are not compared (2**-120 = 7.5e-37).
FTZ_ATOL = 2.0 ** -120

SCALES = ("elementwise", "max", "given")
GROWTH = ("none", "steps", "sqrt_size")


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * scale`` with ``scale`` per :data:`SCALES`; ``reason`` says why.

    ``grows``: ``"none"``; ``"steps"`` (rtol and atol multiply by ``k / reference_size`` for
    ``k`` optimiser steps, when larger than 1: independent float32 errors of each step add
    up, and Adam turns a relative gradient error into a comparable relative update error each
    step); ``"sqrt_size"`` (multiply by ``sqrt(size / reference_size)``: a reduction over
    ``size`` terms accumulates round-off like a random walk). ``reserved`` marks an entry
    whose numbers are not set yet.
    """

    rtol: float
    atol: float
    scale: str
    reason: str
    grows: str = "none"
    reference_size: int = 1
    reserved: bool = False

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"Tolerance.scale must be one of {SCALES}, got {self.scale!r}")
        if self.grows not in GROWTH:
            raise ValueError(f"Tolerance.grows must be one of {GROWTH}, got {self.grows!r}")
        if not (self.rtol >= 0 and self.atol >= 0):
            raise ValueError("Tolerance rtol and atol must be >= 0")

    def scaled(self, factor: float) -> "Tolerance":
        """The same entry with rtol and atol multiplied by ``factor``."""
        return replace(self, rtol=self.rtol * factor, atol=self.atol * factor)

    def describe(self) -> str:
        """Short form for the report's table, e.g. ``r1e-05 max``."""
        parts = []
        if self.rtol:
            parts.append(f"r{self.rtol:.0e}")
        if self.atol:
            parts.append(f"a{self.atol:.0e}")
        if not parts:
            parts.append("exact")
        if self.rtol:
            parts.append({"elementwise": "el", "max": "max", "given": "scl"}[self.scale])
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {"rtol": self.rtol, "atol": self.atol, "scale": self.scale,
                "grows": self.grows, "reason": self.reason, "reserved": self.reserved}


_T = Tolerance

#: Keys are ``"<stage>.<op class>"``. Tolerances are for float32 computation on CPU (TF32 off).
TOLERANCES: dict[str, Tolerance] = {
    # 1. physics forward
    "physics.illuminate": _T(
        1e-6, FTZ_ATOL, "elementwise",
        "one complex64 multiply: ~4 ulp of float32 per element (2 products + 1 sum per part); "
        "atol FTZ_ATOL: TensorFlow flushes subnormal partial products to zero, torch does not"),
    "physics.far_field": _T(
        2e-6, FTZ_ATOL, "max",
        "float32 FFT: error ~ eps*log2(N^2) of the largest |coefficient|, not of each pixel "
        "(small pixels carry the big ones' round-off); grows with log N, 2e-6 covers N <= 512; "
        "atol FTZ_ATOL: signals at float32's underflow edge are flushed to zero by TensorFlow"),
    # 2. translation, extraction, reassembly
    "translate.translate": _T(
        1e-6, 0.0, "max",
        "bilinear: 4 float32 products and 3 sums per pixel, weights in [0, 1]; relative to the "
        "image maximum because a pixel is a blend of up to 4 neighbours"),
    "translate.reassemble": _T(
        1e-5, 0.0, "max",
        "sum of C translated patches divided by the coverage (floored at 1e-3): the division "
        "amplifies the numerator's round-off by up to 1/coverage at faintly covered edges"),
    "translate.extract": _T(
        1e-6, 0.0, "max",
        "extraction is a pure bilinear translation of the canvas (same error as translate)"),
    "translate.overlap": _T(
        1e-5, 0.0, "max",
        "reassemble then extract: the reassembly's coverage division dominates"),
    # 3. network forward
    "network.weights": _T(
        0.0, 0.0, "elementwise",
        "a model must export exactly the float32 values it imported (no cast, no re-layout loss)"),
    "network.forward": _T(
        1e-5, 0.0, "max",
        "3-level float32 CNN: each conv sums 9*C_in products; different summation orders "
        "(oneDNN vs ATen) give ~1e-6 of the output's maximum, 1e-5 leaves a margin of 10"),
    "network.amplitude": _T(
        2e-5, 0.0, "max",
        "network error (1e-5) carried through the overlap constraint and a float32 FFT"),
    # 4. losses
    "loss.terms": _T(
        1e-5, 1e-12, "given",
        "mean of N^2*B*C float32 per-pixel terms; error relative to the mean magnitude of the "
        "terms summed (mean photon count for the NLL, mean amplitude for the MAE, mean "
        "|patch|^2 for the real-space term), because the loss itself can cancel to ~0"),
    "loss.ops": _T(
        1e-5, 1e-12, "given",
        "the backends' loss functions on fixed inputs, relative to the mean magnitude of the "
        "summed terms (as loss.terms), counts spanning several decades"),
    # 5. gradients
    "gradients.entry": _T(
        2e-5, 0.0, "given",
        "backpropagation in float32: each entry is a sum over pixels and batch whose terms can "
        "cancel (a bias gradient can be 1e4 x smaller than its terms), so the error is relative "
        "to the sum of the terms' magnitudes (the float64 reference computes it) or the entry's "
        "largest gradient, plus a floor of eps_f32 x the model's largest gradient (a nearly "
        "dead branch's gradients are float32 noise); see parity.stages.gradient_scales"),
    # 6. k optimiser steps
    "optimizer.update": _T(
        1e-4, 0.0, "given",
        "each Adam step's update, backend vs float64 Adam applied to that backend's own weights "
        "and gradients; relative to the learning rate (an Adam step moves a weight by ~lr at "
        "most) plus 2 ulp of the weight (storing w - update in float32 rounds at |w| eps); does "
        "not grow with k because the reference restarts from the backend's state each step"),
    "optimizer.frozen": _T(
        0.0, 0.0, "elementwise",
        "entries that are not trainable (probe, log intensity scale when frozen) never change"),
    "optimizer.losses": _T(
        1e-4, 1e-12, "elementwise",
        "loss before each step after j earlier steps: the weights differ by ~1e-3 lr-relative "
        "(see optimizer.weights), which moves the loss far less; grows with the step count",
        grows="steps"),
    "optimizer.weights": _T(
        2.5e-4, 0.0, "given",
        "weights after k Adam steps, relative to the entry's max |w|, growing linearly with k "
        "(1e-3 at k = 4), plus per element the gradient tolerance propagated through the k "
        "Adam steps (reference.adam_sensitivity, x2): Adam divides by the running RMS, so "
        "near-zero or sign-changing gradients move by ~lr on float32 noise", grows="steps"),
    # 7. bundles
    "bundle.roundtrip": _T(
        0.0, 0.0, "elementwise",
        "save then load in one backend must give back the identical float32/complex64 values"),
    "bundle.weights": _T(
        0.0, 0.0, "elementwise",
        "a bundle written by A and loaded into B exports exactly the weights A wrote"),
    "bundle.predict": _T(
        1e-5, 0.0, "max",
        "B predicting with A's bundled weights vs A: the network forward tolerance"),
    # 8. end to end
    "e2e.losses": _T(
        1e-3, 1e-12, "elementwise",
        "per-epoch mean losses of fit() from the same weights on the same batches: the step "
        "errors of optimizer.* compound; set for 8 steps (2 epochs x 4 batches), grows "
        "linearly with the total number of steps beyond that", grows="steps", reference_size=8),
    "e2e.patches": _T(
        5e-3, 0.0, "max",
        "reconstructed patches after training, relative to the largest |patch| (measured "
        "~1e-4 at 8 steps); grows linearly with the total steps beyond 8",
        grows="steps", reference_size=8),
    "e2e.object": _T(
        5e-3, 0.0, "max",
        "stitched object over the covered box: a coverage-weighted average of e2e.patches, so "
        "no larger error", grows="steps", reference_size=8),
    "e2e.metrics": _T(
        0.0, 1e-2, "elementwise",
        "every metric of compare_objects (MAE, MSE, PSNR in dB, SSIM, FRC crossings, fitted "
        "amplitude scale and phase offset) agrees to 1e-2 absolute; PSNR and FRC are the "
        "sensitive ones (log and crossing interpolation)"),
    # inference precision
    "precision.bf16_training_loss": _T(
        2e-3, 0.0, "max",
        "the loss of a mixed-precision training step (TrainingConfig.precision='bfloat16': "
        "the conv stack in bfloat16 from float32 weights) against float32's, same weights and "
        "batch, relative to the loss: each conv rounds to 8 significant bits (u = 3.9e-3), but "
        "the loss sums a smooth function over every pixel of the batch, where the rounding "
        "errors mostly cancel. Measured 3.6e-4 (gridsize 1) and 5.3e-4 (gridsize 2) on the "
        "test's N=32 network, the same in both backends; 2e-3 leaves 4x"),
    "inference.bf16_vs_fp32": _T(
        5e-2, 0.0, "max",
        "bfloat16 inference (predict(precision='bfloat16'): the conv stack in bfloat16, heads "
        "and physics in float32) against float32 with the same weights, relative to the "
        "largest |patch|: each of the ~14 convolutions rounds its inputs and weights to 8 "
        "significant bits (u = 2^-8 = 3.9e-3) and the errors add up layer by layer; the "
        "bounded heads (sigmoid, pi*tanh) damp them, unbounded amplitudes (swish, relu) do "
        "not. Measured on 7 configs (N 32/64, gridsize 1/2, four activations, initial and "
        "briefly trained weights), the same in both backends: <= 7e-3 with sigmoid, 2.2e-2 "
        "worst (swish); 5e-2 leaves a margin of 2. A speed option, not a parity check: the "
        "two backends' float32 results are held to network.forward"),
}


def tolerance(key: str, *, steps: int = 1, size: Optional[int] = None) -> Tolerance:
    """The table entry ``key``, grown for ``steps`` optimiser steps or a reduction of ``size``.

    Raises ``KeyError`` naming the valid keys for an unknown ``key`` and ``ValueError`` for
    a reserved entry (its numbers are not set yet).
    """
    try:
        tol = TOLERANCES[key]
    except KeyError:
        raise KeyError(f"no tolerance {key!r}; known: {sorted(TOLERANCES)}") from None
    if tol.reserved:
        raise ValueError(f"tolerance {key!r} is reserved and not set yet: {tol.reason}")
    if tol.grows == "steps":
        return tol.scaled(max(1.0, int(steps) / tol.reference_size))
    if tol.grows == "sqrt_size" and size is not None:
        return tol.scaled(max(1.0, math.sqrt(size / tol.reference_size)))
    return tol


def table_text() -> str:
    """The table as text: key, rtol, atol, scale, growth, reason (for docs and ``--tolerances``)."""
    rows = [f"{'key':24s} {'rtol':>8s} {'atol':>8s} {'scale':11s} {'grows':6s} reason"]
    for key, t in TOLERANCES.items():
        rows.append(f"{key:24s} {t.rtol:8.1e} {t.atol:8.1e} {t.scale:11s} {t.grows:6s} "
                    f"{'[reserved] ' if t.reserved else ''}{t.reason}")
    return "\n".join(rows)
