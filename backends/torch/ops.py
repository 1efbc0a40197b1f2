"""The ops namespace of the PyTorch backend: the primitives the shared composition uses.

Everything the model, its physics and its training step are made of is written once in
:mod:`backends.common` over the functions of this module (``backends/tensorflow/ops.py`` has
the same names). Where the frameworks differ:

* layout: tensors are indexed NCHW (the public group layout, so no transposition at the
  edge); the conv stack stores activations and kernels ``channels_last``; kernels are kept in
  torch's ``(out, in, kh, kw)`` and converted from/to the canonical ``(kh, kw, in, out)`` at
  import and export only. A first conv with fewer than :data:`MIN_INPUT_CHANNELS` input
  channels gets zero channels added (exact zeros: the same sums) to stay on oneDNN's
  channels_last path;
* translation: an interpolation operator is two taps per output sample (source indices and
  weights), applied by gathers; the adjoint, a scatter-add, is deterministic on the CPU;
* compilation: none, the functions run eagerly (``torch.compile`` measured slower once its
  compile time is counted); gradients by ``torch.autograd.grad``;
* threads: a batch is split into one shard per intra-op thread, each shard running in its own
  Python thread with one intra-op thread (torch releases the GIL inside its ops), instead of
  splitting every op over OpenMP threads;
* process groups: ``torch.distributed`` (gloo on CPU, NCCL on GPU), one collective per
  all-reduce of a list (the list packed into one buffer, as DistributedDataParallel's
  buckets are).

The figures behind these choices are in ``benchmarks/README.md``.

>>> import numpy as np
>>> from backends.common.physics import translate
>>> import backends.torch.ops as ops
>>> img = torch.zeros(5, 5); img[2, 2] = 1.0
>>> out = translate(ops, img, torch.tensor([1.0, -2.0]))   # one column right, two rows up
>>> [int(i) for i in torch.nonzero(out == 1.0)[0]]
[0, 3]
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

FRAMEWORK = "torch"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "complex64": torch.complex64,
          "int32": torch.int32, "int64": torch.int64, "bfloat16": torch.bfloat16}
_NUMPY = {"float32": np.float32, "float64": np.float64, "complex64": np.complex64,
          "int32": np.int32, "int64": np.int64}
MEMORY_FORMAT = torch.channels_last
#: The first convolution's input channels are zero-padded to at least this many.
MIN_INPUT_CHANNELS = 4


def framework_version() -> str:
    return str(torch.__version__)


def configure_process(threads: Optional[int] = None) -> None:
    """Full float32 precision and deterministic algorithms, process-wide; ``threads``
    intra-op threads when given.

    TF32 off for matmuls and convolutions, cuDNN autotuning off, deterministic algorithms on
    (``warn_only``: a CUDA op without a deterministic kernel warns rather than fails). What is
    turned off is only their side effect of filling every fresh buffer with NaN (a debugging
    aid for ops that read uninitialised memory; no op here does, and no result changes).
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    if threads:
        torch.set_num_threads(int(threads))


# ------------------------------------------------------------------ tensors and variables
def device(name=None) -> torch.device:
    """``name`` as a torch device; default CUDA when available, else CPU."""
    if name is not None:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tensor(x, dtype: str, device=None) -> torch.Tensor:
    a = np.asarray(x, dtype=_NUMPY[dtype])
    # (np.ascontiguousarray would turn a 0-d array into shape (1,))
    return torch.as_tensor(np.ascontiguousarray(a) if a.ndim else a.copy(), device=device)


def read(t: torch.Tensor) -> np.ndarray:
    """A C-ordered numpy copy (never a view of the tensor's memory)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return np.array(t.cpu().contiguous().numpy(), copy=True)


def variable(array: np.ndarray, trainable: bool, device=None) -> torch.Tensor:
    t = torch.tensor(np.asarray(array, np.float32), device=device)
    if t.ndim == 4:
        t = t.contiguous(memory_format=MEMORY_FORMAT)
    return t.requires_grad_(bool(trainable))


def scalar_variable(value, dtype: str) -> torch.Tensor:
    return torch.tensor(value, dtype=DTYPES[dtype])


def zeros_variable_like(var: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(var, memory_format=torch.preserve_format)


def value(var: torch.Tensor) -> torch.Tensor:
    return var


@torch.no_grad()
def assign(var: torch.Tensor, value) -> None:
    var.copy_(torch.as_tensor(value, dtype=var.dtype))


@torch.no_grad()
def assign_add(var: torch.Tensor, delta) -> None:
    var.add_(delta)


@torch.no_grad()
def assign_sub(var: torch.Tensor, delta) -> None:
    var.sub_(delta)


def kernel_to_native(kernel: np.ndarray) -> np.ndarray:
    """Canonical ``(kh, kw, in, out)`` -> torch ``(out, in, kh, kw)`` (a C-ordered copy)."""
    return np.array(np.transpose(kernel, (3, 2, 0, 1)), dtype=np.float32, order="C", copy=True)


def kernel_from_native(weight: np.ndarray) -> np.ndarray:
    """Torch ``(out, in, kh, kw)`` -> canonical ``(kh, kw, in, out)`` (a C-ordered copy)."""
    return np.array(np.transpose(weight, (2, 3, 1, 0)), dtype=np.float32, order="C", copy=True)


def constant(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def cast(x, dtype: str):
    return x.to(DTYPES[dtype])


def shape(x) -> tuple:
    return tuple(x.shape)


# ------------------------------------------------------------------ elementwise and reductions
exp, log, log1p, sqrt, square, abs = torch.exp, torch.log, torch.log1p, torch.sqrt, torch.square, torch.abs
tanh, sigmoid, relu, where, pow = torch.tanh, torch.sigmoid, F.relu, torch.where, torch.pow
atan2 = torch.atan2
zeros_like, ones_like, real, imag, complex, reshape = (
    torch.zeros_like, torch.ones_like, torch.real, torch.imag, torch.complex, torch.reshape)


def softplus(x):
    return F.softplus(x, beta=1.0, threshold=20.0)


def maximum(x, floor: float):
    """Elementwise ``max(x, floor)`` with a scalar floor."""
    return torch.clamp(x, min=floor)


def amax(x):
    """The largest element (a scalar)."""
    return torch.max(x)


def mean(x):
    return torch.mean(x)


def sum(x, axis=None):
    return x.sum() if axis is None else x.sum(dim=axis)


def concat(xs, axis: int):
    return torch.cat(list(xs), dim=axis)


def as_complex(x):
    return x if x.is_complex() else x.to(torch.complex64)


def polar(amplitude, phase):
    return torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))


def divide_real(num, den):
    return num / den


def fft2_magnitude(psi):
    """``|fft2(psi)|`` over the two innermost axes, orthonormal (float32, not shifted)."""
    return torch.abs(torch.fft.fft2(psi, dim=(-2, -1), norm="ortho"))


def fftshift2(x):
    return torch.fft.fftshift(x, dim=(-2, -1))


def fft2(x):
    """Orthonormal ``fft2`` of a complex64 tensor over the two innermost axes (not shifted)."""
    return torch.fft.fft2(x, dim=(-2, -1), norm="ortho")


def ifft2(x):
    """Orthonormal ``ifft2`` of a complex64 tensor over the two innermost axes (not shifted)."""
    return torch.fft.ifft2(x, dim=(-2, -1), norm="ortho")


# ------------------------------------------------------------------ translation operators
def broadcast_offsets(offsets, images):
    return torch.broadcast_to(offsets, tuple(images.shape[:-2]) + (2,))


class ShiftTaps(NamedTuple):
    """The two taps of a 1-D bilinear shift for each output sample.

    ``index0``, ``index1``: (..., out_size) int64 source indices, ``in_size`` where the tap
    falls outside the input (the zero pad); ``weight0 = 1 - f``, ``weight1 = f``: (...,).
    """

    index0: torch.Tensor
    index1: torch.Tensor
    weight0: torch.Tensor
    weight1: torch.Tensor
    in_size: int


def shift_operator(shifts, out_size: int, in_size: int, out_start: int = 0,
                   in_start: int = 0) -> ShiftTaps:
    """Taps of a 1-D bilinear shift with zero fill, one set per shift.

    For ``d`` (``k = floor(d)``, ``f = d - k``), output sample ``r = out_start ...`` is
    ``(1 - f) x[r - k] + f x[r - k - 1]`` of the input samples ``s = in_start ...``: row
    ``r`` of ``T(d)`` without forming it. Formed in float64, weights cast to float32; no
    gradient flows to ``shifts``.
    """
    d = shifts.detach().to(torch.float64)
    k = torch.floor(d)
    f = d - k
    r = torch.arange(out_start, out_start + out_size, dtype=torch.float64, device=d.device)
    j0 = r - k[..., None] - in_start                      # exact small integers

    def index(j: torch.Tensor) -> torch.Tensor:
        inside = (j >= 0) & (j < in_size)
        return torch.where(inside, j, torch.full_like(j, float(in_size))).to(torch.int64)

    return ShiftTaps(index(j0), index(j0 - 1), (1.0 - f).to(torch.float32),
                     f.to(torch.float32), int(in_size))


def shift_row_sums(taps: ShiftTaps) -> torch.Tensor:
    """Row sums of the operators (..., out_size): the shift of a row of ones."""
    w0 = taps.weight0[..., None] * (taps.index0 < taps.in_size)
    return w0 + taps.weight1[..., None] * (taps.index1 < taps.in_size)


def _pad_one(images: torch.Tensor) -> torch.Tensor:
    """One zero row and one zero column after the last of each (what an out-of-range tap reads)."""
    if images.is_complex():
        return torch.view_as_complex(F.pad(torch.view_as_real(images), (0, 0, 0, 1, 0, 1)))
    return F.pad(images, (0, 1, 0, 1))


def apply_shifts(images, rows: ShiftTaps, cols: ShiftTaps):
    """``T(dy) @ img @ T(dx)^T`` for images (..., H, W), real or complex: rows are gathered
    and blended, then columns; the images broadcast against the taps' leading axes."""
    lead = tuple(rows.index0.shape[:-1])
    x = _pad_one(images)
    h1, w1 = x.shape[-2:]
    n_y, n_x = rows.index0.shape[-1], cols.index0.shape[-1]
    # rows are whole runs of memory: one index_select of the images' rows (their leading
    # axes unbroadcast, so a canvas shared by a group's patches is read in place) copies
    # them, where a gather indexes every element (its gain: benchmarks/README.md)
    first_row = torch.arange(0, x[..., 0, 0].numel() * h1, h1, device=x.device)
    first_row = first_row.reshape(x.shape[:-2] + (1,)).expand(lead + (1,))
    flat_rows = x.reshape(-1, w1)

    def take_rows(idx):
        picked = flat_rows.index_select(0, (first_row + idx).reshape(-1))
        return picked.reshape(lead + (n_y, w1))

    r = _blend(take_rows, rows)                                  # (..., n_y, W + 1)

    def take_cols(idx):
        return torch.gather(r, -1, idx[..., None, :].expand(lead + (n_y, n_x)))

    return _blend(take_cols, cols)


def _blend(take: Callable, taps: ShiftTaps):
    """``w0 take(index0) + w1 take(index1)``: the first tap alone where every shift is a
    whole number of pixels (``w1 = 0``, ``w0 = 1``: the same values; on a scan grid, as
    reconstruction's groups usually are, it halves the work). The check reads the weights,
    so it is made on the CPU only (on an accelerator it would wait for the device)."""
    first = take(taps.index0)
    if taps.weight1.device.type == "cpu" and not bool(torch.any(taps.weight1 != 0)):
        return first
    return taps.weight0[..., None, None] * first + taps.weight1[..., None, None] * take(taps.index1)


def take_windows(canvas, rows0, cols0, size: int):
    """Windows ``canvas[rows0 + i, cols0 + j]`` (i, j < size) of a canvas (H, W): (B, size,
    size), zero outside it; ``rows0``, ``cols0`` (B,) int. One advanced index (its gradient,
    an index-put with accumulation, reaches only the pixels read)."""
    h, w = canvas.shape[-2:]
    steps = torch.arange(size, device=canvas.device)
    r = rows0.to(torch.int64)[:, None] + steps
    c = cols0.to(torch.int64)[:, None] + steps
    win = canvas[r.clamp(0, h - 1)[:, :, None], c.clamp(0, w - 1)[:, None, :]]
    inside = ((r >= 0) & (r < h))[:, :, None] & ((c >= 0) & (c < w))[:, None, :]
    return win * inside.to(torch.float32)


# ------------------------------------------------------------------ network (channels_last)
def to_network_layout(images):
    return images.contiguous(memory_format=MEMORY_FORMAT)


def to_image_layout(x):
    return x.float().contiguous()


def _conv_operands(x, kernel, bias):
    """The operands of a 3x3 conv in ``x``'s dtype, the input channels padded to at least
    :data:`MIN_INPUT_CHANNELS` (zeros in both: the same sums)."""
    kernel, bias = kernel.to(x.dtype), bias.to(x.dtype)
    pad = MIN_INPUT_CHANNELS - x.shape[1]
    if pad > 0:
        x = F.pad(x, (0, 0, 0, 0, 0, pad)).contiguous(memory_format=MEMORY_FORMAT)
        kernel = F.pad(kernel, (0, 0, 0, 0, 0, pad)).contiguous(memory_format=MEMORY_FORMAT)
    return x, kernel, bias


def _conv(x, kernel, bias):
    return F.conv2d(x, kernel, bias, stride=1, padding=1, dilation=1, groups=1)


def conv3x3(x, kernel, bias):
    """3x3 conv, stride 1, zero padding 1 on each side, plus bias; kernel (out, in, 3, 3)."""
    return _conv(*_conv_operands(x, kernel, bias))


#: Stride, padding and dilation of every conv, as oneDNN's fused op takes them.
_ONES, _NO_OUTPUT_PADDING = [1, 1], [0, 0]


def _conv_relu(fused_op, x, kernel, bias):
    return fused_op(x, kernel, bias, _ONES, _ONES, _ONES, 1, "relu", [], "")


def _fused_conv_relu_op(x):
    """oneDNN's convolution with a relu post-op for ``x``, or None where it does not apply:
    not a CPU tensor of float32 or bfloat16, oneDNN absent or switched off
    (``torch.backends.mkldnn.flags``), bfloat16 on a CPU without oneDNN's bfloat16 kernels
    (torch's own convolution then takes over), a build without the fused op."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) \
            or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return None
    if x.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


class _FusedConvReLU(torch.autograd.Function):
    """relu(conv3x3(x) + bias) as one oneDNN primitive (relu as a post-op, so the
    activations are written once, not written by the conv and read and written again by
    the relu); its backward is autograd's for the unfused pair: the relu's mask from the
    output, then the conv's input, kernel and bias gradients."""

    @staticmethod
    def forward(ctx, fused_op, x, kernel, bias):
        y = _conv_relu(fused_op, x, kernel, bias)
        ctx.save_for_backward(x, kernel, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, kernel, y = ctx.saved_tensors
        # a gradient in another memory format than the activations takes oneDNN's and the
        # mask's slow mixed-layout paths (the heads' gradient arrives NCHW)
        grad = torch.ops.aten.threshold_backward(
            grad.contiguous(memory_format=MEMORY_FORMAT), y, 0)
        return (None, *torch.ops.aten.convolution_backward(
            grad, x, kernel, [kernel.shape[0]], _ONES, _ONES, _ONES, False, _NO_OUTPUT_PADDING,
            1, list(ctx.needs_input_grad[1:])))


def conv3x3_relu(x, kernel, bias):
    """relu(conv3x3(x, kernel, bias)), on the CPU fused into the convolution at inference
    and in a bfloat16 training step, where the separate relu's round trip of the activations
    to memory is a large share of the pass (measured in benchmarks/README.md)."""
    x, kernel, bias = _conv_operands(x, kernel, bias)
    fused = _fused_conv_relu_op(x)
    if fused is not None and not torch.is_grad_enabled():
        return _conv_relu(fused, x, kernel, bias)
    if fused is not None and x.dtype == torch.bfloat16:
        return _FusedConvReLU.apply(fused, x, kernel, bias)
    # a float32 training step measured slower fused (benchmarks/README.md): its relu is a
    # small share next to float32 convolutions
    return F.relu(_conv(x, kernel, bias), inplace=True)


def maxpool2(x):
    return F.max_pool2d(x, kernel_size=2, stride=2, padding=0)


def concat_features(xs):
    """Network-layout (channels_last NCHW) features along their channels."""
    return torch.cat(list(xs), dim=1).contiguous(memory_format=MEMORY_FORMAT)


def upsample2(x):
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def zero_pad(images, width: int):
    """Images (B, C, H, W) -> (B, C, H + 2 width, W + 2 width), zeros around."""
    return F.pad(images, (width, width, width, width))


def concat_out_channels(kernels: Sequence):
    return torch.cat(list(kernels), dim=0).contiguous(memory_format=MEMORY_FORMAT)


# ------------------------------------------------------------------ gradients, compilation
def value_and_grad(fn: Callable[[], dict], variables: Sequence) -> tuple[dict, list]:
    """``fn()``'s loss terms and d terms["total"] / d variables (zeros where unconnected)."""
    terms = fn()
    grads = torch.autograd.grad(terms["total"], list(variables), allow_unused=True,
                                materialize_grads=True)
    return {k: t.detach() for k, t in terms.items()}, list(grads)


def compile(fn: Callable, specs: Sequence[tuple]) -> Callable:
    """The function itself: eager (see the module docstring)."""
    return fn


def trace_count(fn) -> None:
    return None


def no_grad():
    return torch.inference_mode()


def all_finite(scalars: Sequence):
    return torch.all(torch.isfinite(torch.stack([s.detach() for s in scalars])))


def run_if(pred, fn: Callable[[], None]) -> None:
    if bool(pred):
        fn()


def cond(pred, true_fn: Callable, false_fn: Callable):
    """``true_fn()`` if ``pred`` else ``false_fn()`` (eager: a Python branch)."""
    return true_fn() if bool(pred) else false_fn()


def _split(n: int, k: int) -> list[slice]:
    """``range(n)`` in ``min(k, n)`` contiguous slices whose sizes differ by at most one.

    >>> [(s.start, s.stop) for s in _split(5, 2)], len(_split(1, 4))
    ([(0, 3), (3, 5)], 1)
    """
    k = max(1, min(int(k), int(n)))
    bounds = [0] + [int(math.ceil(i * n / k)) for i in range(1, k)] + [int(n)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def shards(x) -> list[slice]:
    """The batch axis of ``x`` split into one shard per intra-op thread."""
    return _split(x.shape[0], torch.get_num_threads())


def run_sharded(fn: Callable, parts: list) -> list:
    """``[fn(p) for p in parts]``, the parts in parallel threads with one intra-op thread
    each (the calling thread's setting is restored afterwards); one part runs directly."""
    if len(parts) == 1:
        return [fn(parts[0])]
    before = torch.get_num_threads()

    def task(part):
        torch.set_num_threads(1)        # this thread's OpenMP team: itself
        return fn(part)

    try:
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="ptycho-shard") as pool:
            return list(pool.map(task, parts))
    finally:
        torch.set_num_threads(before)


def add_lists(lists: Sequence[Sequence]) -> list:
    out = list(lists[0])
    for more in lists[1:]:
        out = torch._foreach_add(out, list(more))
    return out


# ------------------------------------------------------------------ process groups
#: What a failed collective raises (a rank died, a timeout): see ``backends.common.distributed``.
COLLECTIVE_ERRORS = (torch.distributed.DistError,)


def start_process_group(world, timeout_s: float):
    """Join the group ``world`` (a :class:`ptycho.distributed.World`): NCCL with one GPU per
    rank (``cuda:local_rank``) where CUDA is available, else gloo on the CPU; collectives
    give up after ``timeout_s``. Returns ``(group handle, device of this rank's tensors)``.

    Rendezvous at ``world.master`` (``host:port``; else the first of ``world.workers``): by
    ``env://`` when the environment holds that address (torchrun's agent then serves the
    store), else by ``tcp://``, rank 0 serving it.
    """
    import datetime
    import os

    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already started in this "
                           "process; stop it first (one group per process)")
    master = world.master or (world.workers[0] if world.workers else None)
    if master is None:
        raise ValueError("the torch backend needs rank 0's address: set MASTER_ADDR and "
                         "MASTER_PORT (torchrun sets them)")
    if torch.cuda.is_available():
        dev = torch.device("cuda", world.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        engine = "nccl"
    else:
        dev, engine = torch.device("cpu"), "gloo"
    from_env = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    init = "env://" if from_env == master else f"tcp://{master}"
    dist.init_process_group(engine, init_method=init, rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(seconds=float(timeout_s)))
    return dist.group.WORLD, dev


def all_reduce_sum(tensors: Sequence, group) -> list:
    """The elementwise sums over the group's ranks of ``tensors`` (one dtype), on every rank:
    packed into one buffer, one ``all_reduce``, unpacked (DistributedDataParallel's bucket,
    as one bucket)."""
    import torch.distributed as dist

    tensors = list(tensors)
    if len({t.dtype for t in tensors}) != 1:
        raise ValueError(f"all_reduce_sum needs one dtype, got {sorted({str(t.dtype) for t in tensors})}")
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    try:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    except RuntimeError as err:
        if isinstance(err, dist.DistError):
            raise
        # gloo reports a closed connection (a rank died) as a plain RuntimeError
        raise dist.DistNetworkError(str(err)) from err
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape))
        start += t.numel()
    return out


def stop_process_group(group) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()

