"""The PINN's differentiable physics, written once over a backend's ops namespace.

Every function takes the ops namespace first (``ops``, as array-api code takes ``xp``) and
works on that framework's tensors: float32 images, complex64 waves, layout ``(..., H, W)``
(for the model ``(B, C, N, N)``). Each is the float32 twin of the numpy float64 reference of
the same name in :mod:`ptycho.physics`, and is tested against it for every registered backend.

Translation is the separable form of the reference's 4-tap bilinear formula: translating an
image by ``(dx, dy)`` is ``T(dy) @ img @ T(dx)^T`` with one interpolation operator per image
and axis, ``T(d)[r, s] = (1 - f) [s == r - k] + f [s == r - k - 1]`` where ``k = floor(d)``,
``f = d - k``. Rows whose source falls outside the image have no entry, which is exactly the
reference's zero fill; placing a patch on a canvas and cutting one out are blocks of those
operators (no padded intermediate). How an operator is stored and applied is the backend's
choice (``ops.shift_operator`` / ``ops.apply_shifts``: dense matrices or two-tap gathers);
see ``benchmarks/README.md`` for why each backend chose its form.
"""

from __future__ import annotations

from ptycho.physics.patches import COVERAGE_FLOOR

__all__ = [
    "canvas_pad", "illuminate", "far_field_amplitude", "translate", "reassemble_patches",
    "extract_patches", "overlap_constraint", "extract_at", "effective_probe", "physics_forward",
    "poisson_nll", "mae", "realspace_consistency", "loss_terms",
]


def canvas_pad(n, m):
    """Where an N-patch starts on an M-canvas (pixel N//2 lands on M//2).

    With Python ints it checks the reference's rule ``M >= N``, ``M - N`` even (ValueError
    otherwise); inside a compiled graph ``m`` may be a tensor, checked at the model's edge.

    >>> canvas_pad(16, 24)
    4
    """
    if isinstance(n, int) and isinstance(m, int):
        if m < n or (m - n) % 2:
            raise ValueError(f"canvas side {m} must be >= patch side {n} with the same parity")
    return m // 2 - n // 2


def illuminate(ops, probe, obj):
    """Exit wave ``probe * obj`` (complex64); ``probe`` (N, N) broadcasts over ``obj``'s leading axes."""
    return ops.as_complex(probe) * ops.as_complex(obj)


def far_field_amplitude(ops, psi):
    """``|fftshift(fft2(psi))| / N`` over the two innermost axes (orthonormal FFT), float32.

    The magnitude is taken before the shift (|.| commutes with a permutation of pixels).
    """
    return ops.fftshift2(ops.fft2_magnitude(ops.as_complex(psi)))


def translate(ops, images, offsets):
    """Translate images ``(..., H, W)`` by ``offsets (..., 2) = (dx, dy)``: bilinear, zero fill.

    ``out[r, c] = img[r - dy, c - dx]``: the content moves ``dx`` columns right and ``dy``
    rows down. ``offsets`` broadcasts against the leading axes. float32 or complex64.
    """
    h, w = ops.shape(images)[-2:]
    off = ops.broadcast_offsets(offsets, images)
    return ops.apply_shifts(images, ops.shift_operator(off[..., 1], h, h),
                            ops.shift_operator(off[..., 0], w, w))


def reassemble_patches(ops, patches, rel_offsets, m, support=None):
    """Each group's patches on its own canvas, averaged by coverage: (B, C, N, N) -> (B, M, M).

    ``canvas = sum_c T(pad(p_c)) / max(sum_c T(pad(support)), COVERAGE_FLOOR)`` with
    ``rel_offsets`` (B, C, 2) = (x, y); ``support`` (N, N) defaults to ones. A batch of B
    groups keeps B canvases. ``m`` may be a scalar int tensor in a compiled graph.
    """
    n = ops.shape(patches)[-1]
    p = canvas_pad(n, m)
    rows = ops.shift_operator(rel_offsets[..., 1], m, n, in_start=p)     # (B, C) operators
    cols = ops.shift_operator(rel_offsets[..., 0], m, n, in_start=p)
    num = ops.sum(ops.apply_shifts(patches, rows, cols), axis=1)
    if support is None:
        # T(dy) 1 1^T T(dx)^T: the shift of a block of ones is the outer product of the
        # operators' row sums (two reductions instead of two shifts)
        cov = ops.sum(ops.shift_row_sums(rows)[..., :, None]
                      * ops.shift_row_sums(cols)[..., None, :], axis=1)
    else:
        cov = ops.sum(ops.apply_shifts(support, rows, cols), axis=1)
    return ops.divide_real(num, ops.maximum(cov, COVERAGE_FLOOR))


def extract_patches(ops, canvas, rel_offsets, n):
    """Cut the (B, C, N, N) patches centred at ``rel_offsets`` (B, C, 2) out of canvases (B, M, M)."""
    m = ops.shape(canvas)[-1]
    p = canvas_pad(n, m)
    rows = ops.shift_operator(-rel_offsets[..., 1], n, m, out_start=p)   # (B, C) operators
    cols = ops.shift_operator(-rel_offsets[..., 0], n, m, out_start=p)
    return ops.apply_shifts(canvas[:, None], rows, cols)


def overlap_constraint(ops, patches, rel_offsets, m, support=None):
    """Make a group's patches agree where they overlap: reassemble per group, then re-extract."""
    n = ops.shape(patches)[-1]
    return extract_patches(ops, reassemble_patches(ops, patches, rel_offsets, m, support),
                           rel_offsets, n)


def extract_at(ops, canvas, corners, fractions, n):
    """The (B, N, N) patches of one canvas (H, W) at scan positions, bilinear, zero outside.

    ``patch[r, c] = canvas(y - N//2 + r, x - N//2 + c)`` for position ``(x, y)``, given as its
    patch's top-left corner split into ``corners`` (B, 2) int (row, column) = floor and
    ``fractions`` (B, 2) float (rows, columns) in [0, 1): an integer window of N + 1, then a
    sub-pixel shift of ``-fraction`` (the convention of :func:`ptycho.simulate.object_patches`
    and of the stitcher).
    """
    window = ops.take_windows(canvas, corners[:, 0], corners[:, 1], n + 1)

    def shifted():
        return ops.apply_shifts(window, ops.shift_operator(-fractions[:, 0], n, n + 1),
                                ops.shift_operator(-fractions[:, 1], n, n + 1))

    # on an integer scan grid (every fraction 0) the shift is the window's first N x N: the
    # same values without the interpolation (6 refinement passes over 256 patterns at N=64:
    # torch 0.46 -> 0.34 s, TensorFlow 0.57 -> 0.47 s)
    return ops.cond(ops.amax(fractions) > 0, shifted, lambda: window[:, :n, :n])


def effective_probe(ops, probe, disk_mask=None):
    """The probe the physics uses: times the disk mask (float32 (N, N)) when one is given."""
    probe = ops.as_complex(probe)
    return probe if disk_mask is None else probe * ops.as_complex(disk_mask)


def physics_forward(ops, patches, probe_eff, log_intensity_scale, constrain, rel_offsets=None,
                    canvas_size=None, support=None):
    """Patches ``(B, C, N, N)`` -> (constrained patches, predicted amplitude in photon units).

    Mirrors :func:`ptycho.physics.physics_forward`; ``constrain`` is ``gridsize > 1 and
    object_big`` and ``probe_eff`` is :func:`effective_probe`'s result.
    """
    if constrain:
        if rel_offsets is None or canvas_size is None:
            raise ValueError("gridsize > 1 with object_big needs rel_offsets and canvas_size")
        constrained = overlap_constraint(ops, patches, rel_offsets, canvas_size, support)
    else:
        constrained = patches
    amplitude = far_field_amplitude(ops, illuminate(ops, probe_eff, constrained))
    return constrained, amplitude * ops.exp(log_intensity_scale)


# ---------------------------------------------------------------------------------- losses
# Each loss is a sum over pixels divided by ``count``, the number of pixels it averages
# over in the WHOLE batch (``None``: this call's own element count, i.e. a plain mean).
# Passing the whole batch's count lets a backend split a batch into shards and add the
# shards' terms up exactly; with a mask, ``count`` is the number of measured pixels.

def _mean(ops, values, mask, count):
    if mask is not None:
        values = values * mask
    if count is None:
        return ops.mean(values) if mask is None else ops.sum(values) / ops.sum(
            mask * ops.ones_like(values))
    return ops.sum(values) / count


def poisson_nll(ops, pred_amplitude, observed_amplitude, eps, mask=None, count=None):
    """Mean Poisson NLL of counts ``k = obs**2`` given intensity ``I = pred**2``, minus the saturated model's.

    Per pixel ``I - k log(I + eps) - (k - k log(k + eps)) = (I - k) - k log((I + eps) / (k + eps))``
    (scalar float32). The log-ratio is evaluated as ``log1p((I - k) / (k + eps))`` where
    ``I > k / 2`` (no float32 cancellation of two large logarithms near the optimum) and as
    ``log(I + eps) - log(k + eps)`` elsewhere (where ``log1p`` would round to ``log(0)`` when
    ``I << k``); the unused branch gets a harmless argument so that no NaN reaches the
    gradient, which is the NLL's, ``d/dI = 1 - k / (I + eps)``. Masked pixels (``mask`` 0)
    take no part, not even through a NaN or Inf in their data.
    """
    i = ops.square(pred_amplitude)
    k = ops.square(observed_amplitude)
    if mask is not None:       # garbage in a bad pixel must not reach the sum as 0 * inf
        k = ops.where(mask > 0, k, ops.zeros_like(k))
    d = i - k
    r = d / (k + eps)
    near = r > -0.5
    log_ratio = ops.where(near, ops.log1p(ops.where(near, r, ops.zeros_like(r))),
                          ops.log(i + eps) - ops.log(k + eps))
    return _mean(ops, d - k * log_ratio, mask, count)


def mae(ops, pred_amplitude, observed_amplitude, mask=None, count=None):
    """Mean absolute error of amplitudes (sqrt counts) over the measured pixels."""
    diff = pred_amplitude - observed_amplitude
    if mask is not None:
        diff = ops.where(mask > 0, diff, ops.zeros_like(diff))
    return _mean(ops, ops.abs(diff), mask, count)


def realspace_consistency(ops, patches, constrained, count=None):
    """Mean ``|p - p'|^2`` between patches and their overlap-constrained version (scalar)."""
    d = ops.as_complex(patches) - ops.as_complex(constrained)
    return _mean(ops, ops.square(ops.real(d)) + ops.square(ops.imag(d)), None, count)


def loss_terms(ops, pred_amplitude, observed_amplitude, patches, constrained, loss_weights,
               loss_epsilon, mask=None, pixel_count=None, element_count=None):
    """Every loss term and their weighted sum (scalars): ``nll``, ``mae``, ``realspace``, ``total``.

    ``loss_weights`` = ``(nll_weight, mae_weight, realspace_weight)`` and ``loss_epsilon``
    come from :class:`ptycho.physics.LossSettings` as tensors, so that a compiled step takes
    them as inputs instead of baking them in. ``pixel_count`` / ``element_count``: the
    denominators of the pixel losses and of the real-space term (see the comment above).
    """
    terms = {
        "nll": poisson_nll(ops, pred_amplitude, observed_amplitude, loss_epsilon, mask,
                           pixel_count),
        "mae": mae(ops, pred_amplitude, observed_amplitude, mask, pixel_count),
        "realspace": realspace_consistency(ops, patches, constrained, element_count),
    }
    terms["total"] = (loss_weights[0] * terms["nll"] + loss_weights[1] * terms["mae"]
                      + loss_weights[2] * terms["realspace"])
    return terms

