"""The physics of the PINN on TensorFlow tensors (float32 / complex64), mirroring :mod:`ptycho.physics`.

Every function here is the TensorFlow twin of the numpy float64 reference of the same name
and is tested against it. Layout: the physics works on stacks of images ``(..., H, W)``
(for the model: ``(B, C, N, N)``), because TensorFlow's FFT transforms the two innermost
axes; the network itself runs channels-last (NHWC, see :mod:`backends.tensorflow.model`)
and the model transposes once between the two.

Translation is the separable form of the reference's 4-tap bilinear formula: translating an
image by ``(dx, dy)`` is ``T(dy) @ img @ T(dx)^T`` with one small interpolation matrix per
image and axis, ``T(d)[r, s] = (1 - f) [s == r - k] + f [s == r - k - 1]`` where
``k = floor(d)``, ``f = d - k``. Rows whose source falls outside the image have no entry,
which is exactly the reference's zero fill; patch placement on a canvas and extraction from
it are blocks of those matrices (no padded intermediate). It is exact for integer shifts,
its gradient is two matmuls (deterministic), and batched matmuls are what CPUs and GPUs do
fastest. (The torch backend's ``physics.py`` has the same functions under the same names;
it applies the same matrices' two taps per row by gathers, which in torch on the CPU is
twice as fast as its small batched matmuls. Here it is the other way round: TensorFlow's
batched ``tf.gather`` is as fast forward, but its gradient, a segment sum, made the overlap
constraint's forward + backward 2.5x slower than these matmuls, 36 ms against 15 ms for 16
groups of four 64 x 64 patches.)

>>> img = tf.constant(np.eye(5, dtype=np.float32)[2:3].T @ np.eye(5, dtype=np.float32)[2:3])
>>> out = translate(img, tf.constant([1.0, -2.0]))   # one column right, two rows up
>>> [int(i) for i in tf.where(out == 1.0)[0]]
[0, 3]
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ptycho.physics.patches import COVERAGE_FLOOR

__all__ = [
    "illuminate", "far_field_amplitude", "translation_matrices", "translate",
    "reassemble_patches", "extract_patches", "overlap_constraint", "poisson_nll", "mae",
    "realspace_consistency", "total_loss", "canvas_pad", "effective_probe", "physics_forward",
]


def _complex(x: tf.Tensor) -> tf.Tensor:
    return x if x.dtype == tf.complex64 else tf.complex(tf.cast(x, tf.float32),
                                                        tf.zeros_like(x, dtype=tf.float32))


def illuminate(probe: tf.Tensor, obj: tf.Tensor) -> tf.Tensor:
    """Exit wave ``probe * obj`` (complex64); ``probe`` (N, N) broadcasts over ``obj``'s leading axes."""
    return _complex(tf.convert_to_tensor(probe)) * _complex(tf.convert_to_tensor(obj))


def far_field_amplitude(psi: tf.Tensor) -> tf.Tensor:
    """``|fftshift(fft2(psi))| / N`` over the two innermost axes (orthonormal), float32.

    ``tf.signal.fft2d`` is unnormalised and has no ``norm`` argument, so the ``1/sqrt(H W)``
    of the orthonormal transform is applied explicitly to the magnitude. The magnitude is
    taken before the shift (|.| commutes with a permutation of pixels).
    """
    psi = _complex(tf.convert_to_tensor(psi))
    h, w = psi.shape[-2], psi.shape[-1]
    if h is None or w is None:
        hw = tf.cast(tf.shape(psi)[-2] * tf.shape(psi)[-1], tf.float32)
        scale = tf.math.rsqrt(hw)
    else:
        scale = tf.constant(1.0 / math.sqrt(h * w), tf.float32)
    mag = tf.abs(tf.signal.fft2d(psi)) * scale
    return tf.signal.fftshift(mag, axes=(-2, -1))


def translation_matrices(shifts: tf.Tensor, out_size, in_size, out_start=0,
                         in_start=0) -> tf.Tensor:
    """Interpolation matrices of a 1-D bilinear shift with zero fill, one per shift.

    For a shift ``d``, ``T(d)[r, s] = (1 - f) [s == r - k] + f [s == r - k - 1]`` with
    ``k = floor(d)``, ``f = d - k``, so ``(T @ x)[r] = x[r - d]`` interpolated linearly and
    zero outside. Returns the block ``T[out_start : out_start + out_size, in_start : in_start
    + in_size]`` for each shift: ``shifts (...) -> (..., out_size, in_size)`` float32. The
    weights are formed in float64 and cast once; no gradient flows to ``shifts`` (data).
    Sizes and starts may be Python ints or scalar int tensors.
    """
    d = tf.cast(tf.stop_gradient(shifts), tf.float64)
    k = tf.floor(d)
    f = (d - k)[..., None, None]
    r = tf.cast(tf.range(out_start, out_start + out_size), tf.float64)
    s = tf.cast(tf.range(in_start, in_start + in_size), tf.float64)
    lag = (r[:, None] - s[None, :]) - k[..., None, None]      # r - s - k, exact small integers
    zero = tf.zeros([], tf.float64)
    mat = tf.where(tf.equal(lag, 0.0), 1.0 - f, zero) + tf.where(tf.equal(lag, 1.0), f, zero)
    return tf.cast(mat, tf.float32)


def _apply_separable(images: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """``rows @ images @ cols^T`` batched over leading axes (broadcasting); real matrices,
    real or complex images (complex: real and imaginary parts separately, no complex matmul)."""
    # Batch axes are broadcast explicitly: TF 2.21's oneDNN BatchMatMulV2 on CPU corrupts
    # the heap when it broadcasts batch axes itself (e.g. (B, C, M, N) @ (N, N)).
    batch = tf.broadcast_dynamic_shape(tf.shape(rows)[:-2], tf.shape(images)[:-2])
    batch = tf.broadcast_dynamic_shape(batch, tf.shape(cols)[:-2])
    rows = tf.broadcast_to(rows, tf.concat([batch, tf.shape(rows)[-2:]], 0))
    cols = tf.broadcast_to(cols, tf.concat([batch, tf.shape(cols)[-2:]], 0))
    images = tf.broadcast_to(images, tf.concat([batch, tf.shape(images)[-2:]], 0))
    if images.dtype == tf.complex64:
        re = tf.matmul(tf.matmul(rows, tf.math.real(images)), cols, transpose_b=True)
        im = tf.matmul(tf.matmul(rows, tf.math.imag(images)), cols, transpose_b=True)
        return tf.complex(re, im)
    return tf.matmul(tf.matmul(rows, images), cols, transpose_b=True)


def translate(images: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
    """Translate images ``(..., H, W)`` by ``offsets (..., 2) = (dx, dy)``: bilinear, zero fill.

    ``out[r, c] = img[r - dy, c - dx]``: the content moves ``dx`` columns right and ``dy``
    rows down. ``offsets`` broadcasts against the leading axes. float32 or complex64.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype not in (tf.float32, tf.complex64):
        images = tf.cast(images, tf.float32)
    offsets = tf.cast(tf.convert_to_tensor(offsets), tf.float32)
    if offsets.shape.rank is not None and offsets.shape[-1] != 2:
        raise ValueError(f"offsets must end in an axis of length 2 (dx, dy), got shape "
                         f"{offsets.shape}")
    shape = tf.shape(images)
    lead, h, w = shape[:-2], shape[-2], shape[-1]
    off = tf.broadcast_to(offsets, tf.concat([lead, [2]], axis=0))
    ty = translation_matrices(off[..., 1], h, h)
    tx = translation_matrices(off[..., 0], w, w)
    return _apply_separable(images, ty, tx)


def canvas_pad(n, m):
    """Where an N-patch starts on an M-canvas (pixel N//2 on M//2).

    With Python ints it checks the reference's rule ``M >= N``, ``M - N`` even (a ValueError
    otherwise); inside a compiled graph ``m`` may be a tensor and the model checks at its edge.
    """
    if isinstance(n, (int, np.integer)) and isinstance(m, (int, np.integer)):
        if m < n or (m - n) % 2:
            raise ValueError(f"canvas side {m} must be >= patch side {n} with the same parity")
    return m // 2 - n // 2


def reassemble_patches(patches: tf.Tensor, rel_offsets: tf.Tensor, m,
                       support: tf.Tensor | None = None) -> tf.Tensor:
    """Each group's patches on its own canvas, averaged by coverage: (B, C, N, N) -> (B, M, M).

    ``canvas = sum_c T(pad(p_c)) / max(sum_c T(pad(support)), COVERAGE_FLOOR)`` with
    ``rel_offsets`` (B, C, 2) = (x, y); ``support`` (N, N) defaults to ones. A batch of B
    groups keeps B canvases. ``m`` may be a scalar int tensor.
    """
    patches = tf.convert_to_tensor(patches)
    rel = tf.cast(tf.convert_to_tensor(rel_offsets), tf.float32)
    n = patches.shape[-1]
    p = canvas_pad(n, m)
    ty = translation_matrices(rel[..., 1], m, n, in_start=p)   # (B, C, M, N)
    tx = translation_matrices(rel[..., 0], m, n, in_start=p)
    num = tf.reduce_sum(_apply_separable(patches, ty, tx), axis=1)
    if support is None:
        # T(dy) 1 1^T T(dx)^T: the shift of a block of ones is the outer product of the
        # matrices' row sums (two reductions instead of two batched matmuls)
        cov = tf.reduce_sum(tf.reduce_sum(ty, -1)[..., :, None] * tf.reduce_sum(tx, -1)[..., None, :],
                            axis=1)
    else:
        support = tf.cast(tf.convert_to_tensor(support), tf.float32)
        cov = tf.reduce_sum(_apply_separable(support, ty, tx), axis=1)
    denom = tf.maximum(cov, COVERAGE_FLOOR)
    if num.dtype == tf.complex64:
        return tf.complex(tf.math.real(num) / denom, tf.math.imag(num) / denom)
    return num / denom


def extract_patches(canvas: tf.Tensor, rel_offsets: tf.Tensor, n: int) -> tf.Tensor:
    """Cut the (B, C, N, N) patches centred at ``rel_offsets`` (B, C, 2) out of canvases (B, M, M)."""
    canvas = tf.convert_to_tensor(canvas)
    rel = tf.cast(tf.convert_to_tensor(rel_offsets), tf.float32)
    m = canvas.shape[-1] if canvas.shape[-1] is not None else tf.shape(canvas)[-1]
    p = canvas_pad(n, m)
    ty = translation_matrices(-rel[..., 1], n, m, out_start=p)  # (B, C, N, M)
    tx = translation_matrices(-rel[..., 0], n, m, out_start=p)
    return _apply_separable(canvas[:, None], ty, tx)


def overlap_constraint(patches: tf.Tensor, rel_offsets: tf.Tensor, m,
                       support: tf.Tensor | None = None) -> tf.Tensor:
    """Make a group's patches agree where they overlap: reassemble per group, then re-extract."""
    n = patches.shape[-1]
    return extract_patches(reassemble_patches(patches, rel_offsets, m, support), rel_offsets, n)


def poisson_nll(pred_amplitude: tf.Tensor, observed_amplitude: tf.Tensor,
                eps: float | tf.Tensor) -> tf.Tensor:
    """Mean Poisson NLL of counts ``k = obs**2`` given intensity ``I = pred**2``, minus the saturated model's.

    Per pixel ``I - k log(I + eps) - (k - k log(k + eps)) = (I - k) - k log((I + eps) / (k + eps))``
    (scalar float32). The log-ratio is evaluated as ``log1p((I - k) / (k + eps))`` where
    ``I > k / 2`` (no float32 cancellation of two large logarithms near the optimum) and as
    ``log(I + eps) - log(k + eps)`` elsewhere (where ``log1p`` would round to ``log(0)`` when
    ``I << k``); the unused branch gets a harmless argument so that no NaN reaches the
    gradient. Gradients are those of the NLL, ``d/dI = 1 - k / (I + eps)``. The same
    expression as the torch backend's.
    """
    i = tf.square(tf.cast(pred_amplitude, tf.float32))
    k = tf.square(tf.cast(observed_amplitude, tf.float32))
    eps = tf.cast(eps, tf.float32)
    d = i - k
    r = d / (k + eps)
    near = r > -0.5
    log_ratio = tf.where(near, tf.math.log1p(tf.where(near, r, tf.zeros_like(r))),
                         tf.math.log(i + eps) - tf.math.log(k + eps))
    return tf.reduce_mean(d - k * log_ratio)


def mae(pred_amplitude: tf.Tensor, observed_amplitude: tf.Tensor) -> tf.Tensor:
    """Mean absolute error of amplitudes (scalar float32)."""
    return tf.reduce_mean(tf.abs(tf.cast(pred_amplitude, tf.float32)
                                 - tf.cast(observed_amplitude, tf.float32)))


def realspace_consistency(patches: tf.Tensor, constrained: tf.Tensor) -> tf.Tensor:
    """Mean ``|p - p'|^2`` between patches and their overlap-constrained version (scalar)."""
    d = _complex(tf.convert_to_tensor(patches)) - _complex(tf.convert_to_tensor(constrained))
    return tf.reduce_mean(tf.square(tf.math.real(d)) + tf.square(tf.math.imag(d)))


def total_loss(pred_amplitude: tf.Tensor, observed_amplitude: tf.Tensor, patches: tf.Tensor,
               constrained: tf.Tensor, loss_weights: tf.Tensor,
               loss_epsilon: tf.Tensor) -> dict[str, tf.Tensor]:
    """Every loss term and their weighted sum (scalars): ``nll``, ``mae``, ``realspace``, ``total``.

    ``loss_weights`` = ``(nll_weight, mae_weight, realspace_weight)`` and ``loss_epsilon``
    are tensors (from :class:`ptycho.physics.LossSettings`), so that a compiled step takes
    them as inputs instead of baking them in.
    """
    terms = {
        "nll": poisson_nll(pred_amplitude, observed_amplitude, loss_epsilon),
        "mae": mae(pred_amplitude, observed_amplitude),
        "realspace": realspace_consistency(patches, constrained),
    }
    terms["total"] = (loss_weights[0] * terms["nll"] + loss_weights[1] * terms["mae"]
                      + loss_weights[2] * terms["realspace"])
    return terms


def effective_probe(probe: tf.Tensor, disk_mask: tf.Tensor | None) -> tf.Tensor:
    """The probe the physics uses: times the disk mask (float32 (N, N)) when one is given."""
    probe = _complex(tf.convert_to_tensor(probe))
    return probe if disk_mask is None else probe * _complex(disk_mask)


def physics_forward(patches: tf.Tensor, probe_eff: tf.Tensor, log_intensity_scale: tf.Tensor,
                    constrain: bool, rel_offsets: tf.Tensor | None = None,
                    canvas_size: int | tf.Tensor | None = None,
                    support: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Patches ``(B, C, N, N)`` -> (constrained patches, predicted amplitude in photon units).

    Mirrors :func:`ptycho.physics.physics_forward`; ``constrain`` is
    ``gridsize > 1 and object_big`` and ``probe_eff`` is :func:`effective_probe`'s result.
    """
    if constrain:
        if rel_offsets is None or canvas_size is None:
            raise ValueError("gridsize > 1 with object_big needs rel_offsets and canvas_size")
        constrained = overlap_constraint(patches, rel_offsets, canvas_size, support)
    else:
        constrained = patches
    amplitude = far_field_amplitude(illuminate(probe_eff, constrained))
    return constrained, amplitude * tf.exp(tf.cast(log_intensity_scale, tf.float32))


def as_float32(x) -> np.ndarray:
    """numpy -> float32 array (the precision the backend computes in)."""
    return np.asarray(x, dtype=np.float32)


def as_complex64_or_float32(x) -> np.ndarray:
    """numpy -> complex64 if complex, else float32."""
    x = np.asarray(x)
    return x.astype(np.complex64) if np.iscomplexobj(x) else x.astype(np.float32)
