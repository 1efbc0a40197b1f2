"""The ops namespace of the TensorFlow backend: the primitives the shared composition uses.

Everything the model, its physics and its training step are made of is written once in
:mod:`backends.common` over the functions of this module (``backends/torch/ops.py`` has the
same names). Reading the two modules side by side shows exactly where the frameworks differ:

* layout: the network runs channels-last (NHWC, TensorFlow's fast layout on CPU and GPU);
  canonical kernels ``(kh, kw, in, out)`` are ``tf.nn.conv2d``'s own HWIO layout, so weights
  load with no conversion;
* translation: an interpolation operator is a dense matrix, applied with batched matmuls;
* compilation: functions run as ``tf.function`` with a fixed input signature (the batch axis
  ``None``, so a short last batch does not retrace); gradients by ``tf.GradientTape``;
* threads: TensorFlow parallelises inside each op, so a batch is never split (one shard);
* process groups: ``tf.distribute.MultiWorkerMirroredStrategy`` with one replica per process;
  the model's variables stay plain ``tf.Variable`` s (every rank applies the same update) and
  only the all-reduce runs in the strategy (``strategy.run`` of a replica context's
  ``all_reduce``, inside the compiled step), the list packed into one tensor.

>>> import numpy as np
>>> from backends.common.physics import translate
>>> import backends.tensorflow.ops as ops
>>> img = np.zeros((5, 5), np.float32); img[2, 2] = 1.0
>>> out = translate(ops, tensor(img, "float32"), tensor([1.0, -2.0], "float32"))
>>> [int(i) for i in tf.where(out == 1.0)[0]]    # one column right, two rows up
[0, 3]
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

FRAMEWORK = "tensorflow"
DTYPES = {"float32": tf.float32, "float64": tf.float64, "complex64": tf.complex64,
          "int32": tf.int32, "int64": tf.int64, "bfloat16": tf.bfloat16}


def framework_version() -> str:
    return tf.__version__


def configure_process(threads: Optional[int] = None) -> None:
    """Deterministic kernels and no TF32, process-wide; ``threads`` intra- and inter-op
    threads when given (TensorFlow accepts a change only before its first op runs)."""
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != int(threads):
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    tf.config.experimental.enable_op_determinism()
    tf.config.experimental.enable_tensor_float_32_execution(False)


# ------------------------------------------------------------------ tensors and variables
def device(name=None):
    """TensorFlow places tensors itself: no device handle."""
    return None


def tensor(x, dtype: str, device=None) -> tf.Tensor:
    return tf.constant(np.asarray(x, dtype=DTYPES[dtype].as_numpy_dtype))


def read(t) -> np.ndarray:
    """A numpy copy of a tensor or variable."""
    return np.array(t.numpy(), copy=True)


def variable(array: np.ndarray, trainable: bool, device=None) -> tf.Variable:
    return tf.Variable(array, dtype=tf.float32, trainable=bool(trainable))


def scalar_variable(value, dtype: str) -> tf.Variable:
    return tf.Variable(value, dtype=DTYPES[dtype], trainable=False)


def zeros_variable_like(var: tf.Variable) -> tf.Variable:
    return tf.Variable(tf.zeros_like(var), trainable=False)


def value(var):
    return var


def assign(var: tf.Variable, value) -> None:
    var.assign(value)


def assign_add(var: tf.Variable, delta) -> None:
    var.assign_add(delta)


def assign_sub(var: tf.Variable, delta) -> None:
    var.assign_sub(delta)


def kernel_to_native(kernel: np.ndarray) -> np.ndarray:
    """Canonical ``(kh, kw, in, out)`` is HWIO, TensorFlow's own layout."""
    return np.array(kernel, dtype=np.float32, order="C", copy=True)


def kernel_from_native(kernel: np.ndarray) -> np.ndarray:
    return np.array(kernel, dtype=np.float32, order="C", copy=True)


def constant(x: float) -> tf.Tensor:
    return tf.constant(x, tf.float32)


def cast(x, dtype: str):
    return tf.cast(x, DTYPES[dtype])


def shape(x) -> tuple:
    """The shape: Python ints where known statically, scalar tensors where not (in a graph)."""
    dynamic = None if x.shape.is_fully_defined() else tf.shape(x)
    return tuple(d if d is not None else dynamic[i] for i, d in enumerate(x.shape))


# ------------------------------------------------------------------ elementwise and reductions
exp, log, log1p, sqrt, square = tf.exp, tf.math.log, tf.math.log1p, tf.sqrt, tf.square
abs, tanh, sigmoid, softplus, relu = tf.abs, tf.tanh, tf.math.sigmoid, tf.math.softplus, tf.nn.relu
where, maximum, pow, atan2 = tf.where, tf.maximum, tf.pow, tf.math.atan2
zeros_like, ones_like, reshape = tf.zeros_like, tf.ones_like, tf.reshape
real, imag, complex = tf.math.real, tf.math.imag, tf.complex


def amax(x):
    """The largest element (a scalar)."""
    return tf.reduce_max(x)


def mean(x):
    return tf.reduce_mean(x)


def sum(x, axis=None):
    return tf.reduce_sum(x, axis=axis)


def concat(xs, axis: int):
    return tf.concat(list(xs), axis=axis)


def as_complex(x):
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.complex64 else tf.complex(tf.cast(x, tf.float32),
                                                        tf.zeros_like(x, dtype=tf.float32))


def polar(amplitude, phase):
    return tf.complex(amplitude * tf.cos(phase), amplitude * tf.sin(phase))


def divide_real(num, den):
    """``num / den`` for a real or complex ``num`` and a real ``den``."""
    if num.dtype == tf.complex64:
        return tf.complex(tf.math.real(num) / den, tf.math.imag(num) / den)
    return num / den


def fft2_magnitude(psi):
    """``|fft2(psi)|`` over the two innermost axes, orthonormal (float32, not shifted).

    ``tf.signal.fft2d`` is unnormalised and has no ``norm`` argument: the ``1/sqrt(H W)`` is
    applied to the magnitude (a real multiply instead of a complex one).
    """
    h, w = psi.shape[-2], psi.shape[-1]
    if h is None or w is None:
        scale = tf.math.rsqrt(tf.cast(tf.shape(psi)[-2] * tf.shape(psi)[-1], tf.float32))
    else:
        scale = tf.constant(1.0 / math.sqrt(h * w), tf.float32)
    return tf.abs(tf.signal.fft2d(psi)) * scale


def fftshift2(x):
    return tf.signal.fftshift(x, axes=(-2, -1))


def _pixels(x) -> int:
    """H W of ``x``'s two innermost axes (static in every compiled signature)."""
    return int(x.shape[-2]) * int(x.shape[-1])


def fft2(x):
    """Orthonormal ``fft2`` of a complex64 tensor over the two innermost axes (not shifted)."""
    return tf.signal.fft2d(x) * tf.constant(1.0 / math.sqrt(_pixels(x)), tf.complex64)


def ifft2(x):
    """Orthonormal ``ifft2`` of a complex64 tensor over the two innermost axes (not shifted);
    ``tf.signal.ifft2d`` divides by ``H W``, orthonormal by ``sqrt(H W)``."""
    return tf.signal.ifft2d(x) * tf.constant(math.sqrt(_pixels(x)), tf.complex64)


# ------------------------------------------------------------------ translation operators
def broadcast_offsets(offsets, images):
    """``offsets`` (..., 2) broadcast to the leading axes of ``images`` (..., H, W)."""
    return tf.broadcast_to(offsets, tf.concat([tf.shape(images)[:-2], [2]], axis=0))


def shift_operator(shifts, out_size, in_size, out_start=0, in_start=0) -> tf.Tensor:
    """Interpolation matrices of a 1-D bilinear shift with zero fill, one per shift.

    ``T(d)[r, s] = (1 - f) [s == r - k] + f [s == r - k - 1]`` (``k = floor(d)``,
    ``f = d - k``), the block ``r = out_start ...``, ``s = in_start ...``:
    ``shifts (...) -> (..., out_size, in_size)`` float32. Formed in float64 and cast once;
    no gradient flows to ``shifts`` (data). Sizes and starts may be scalar int tensors.
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


def shift_row_sums(op: tf.Tensor) -> tf.Tensor:
    """Row sums of the operators (..., out_size): the shift of a row of ones."""
    return tf.reduce_sum(op, -1)


def apply_shifts(images, rows: tf.Tensor, cols: tf.Tensor):
    """``rows @ images @ cols^T`` batched over leading axes; real or complex images (complex:
    real and imaginary parts separately, no complex matmul)."""
    # Batch axes are broadcast explicitly: TF 2.21's oneDNN BatchMatMulV2 on CPU corrupts
    # the heap when it broadcasts batch axes itself (e.g. (B, C, M, N) @ (N, N)).
    images = tf.convert_to_tensor(images)
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


def take_windows(canvas, rows0, cols0, size: int):
    """Windows ``canvas[rows0 + i, cols0 + j]`` (i, j < size) of a canvas (H, W): (B, size,
    size), zero outside it; ``rows0``, ``cols0`` (B,) int32. Two gathers (the gradient, a
    segment sum, reaches only the pixels read)."""
    h, w = tf.shape(canvas)[0], tf.shape(canvas)[1]
    steps = tf.range(size)
    r = tf.cast(rows0, tf.int32)[:, None] + steps[None]
    c = tf.cast(cols0, tf.int32)[:, None] + steps[None]
    rows = tf.gather(canvas, tf.clip_by_value(r, 0, h - 1))                     # (B, size, W)
    win = tf.gather(rows, tf.clip_by_value(c, 0, w - 1), axis=2, batch_dims=1)  # (B, size, size)
    inside = tf.cast(((r >= 0) & (r < h))[:, :, None] & ((c >= 0) & (c < w))[:, None, :],
                     tf.float32)
    return win * as_complex(inside) if win.dtype == tf.complex64 else win * inside


# ------------------------------------------------------------------ network (NHWC)
def to_network_layout(images):
    """(B, C, N, N) -> NHWC."""
    return tf.transpose(images, [0, 2, 3, 1])


def to_image_layout(x):
    """NHWC -> (B, C, N, N) float32."""
    return tf.transpose(tf.cast(x, tf.float32), [0, 3, 1, 2])


def conv3x3(x, kernel, bias):
    """3x3 conv, stride 1, zero padding 1 on each side, plus bias; kernel (3, 3, in, out).

    Spelled ``"SAME"``, which for a 3x3 kernel at stride 1 is exactly that padding: the
    equivalent explicit padding sends the convolution's gradient to a slow kernel
    (``benchmarks/README.md``).
    """
    y = tf.nn.conv2d(x, tf.cast(kernel, x.dtype), strides=[1, 1, 1, 1], padding="SAME",
                     data_format="NHWC", dilations=[1, 1, 1, 1])
    return tf.nn.bias_add(y, tf.cast(bias, x.dtype), data_format="NHWC")


def conv3x3_relu(x, kernel, bias):
    return tf.nn.relu(conv3x3(x, kernel, bias))


def maxpool2(x):
    """2x2 max-pool with stride 2 (H and W are even: N is a multiple of 8)."""
    return tf.nn.max_pool2d(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID",
                            data_format="NHWC")


def concat_features(xs):
    """Network-layout (NHWC) features along their channels."""
    return tf.concat(list(xs), axis=-1)


def upsample2(x):
    """Nearest-neighbour x2 up-sampling: ``out[2i + a, 2j + b] = x[i, j]``."""
    s = tf.shape(x)
    b, h, w, c = s[0], s[1], s[2], s[3]
    y = tf.broadcast_to(x[:, :, None, :, None, :], tf.stack([b, h, 2, w, 2, c]))
    return tf.reshape(y, tf.stack([b, 2 * h, 2 * w, c]))


def zero_pad(images, width: int):
    """Images (B, C, H, W) -> (B, C, H + 2 width, W + 2 width), zeros around."""
    return tf.pad(images, [[0, 0], [0, 0], [width, width], [width, width]])


def concat_out_channels(kernels: Sequence):
    """Kernels stacked along their output channels (HWIO: the last axis)."""
    return tf.concat(list(kernels), axis=3)


# ------------------------------------------------------------------ gradients, compilation
def value_and_grad(fn: Callable[[], dict], variables: Sequence) -> tuple[dict, list]:
    """``fn()``'s loss terms and d terms["total"] / d variables (zeros where unconnected)."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(variables)
        terms = fn()
    grads = tape.gradient(terms["total"], list(variables),
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return terms, grads


def compile(fn: Callable, specs: Sequence[tuple]) -> Callable:
    """``fn`` as a ``tf.function`` with the input signature ``specs`` ((shape, dtype) pairs)."""
    signature = [tf.TensorSpec(shape, DTYPES[dtype]) for shape, dtype in specs]
    return tf.function(fn, input_signature=signature, reduce_retracing=False)


def trace_count(fn) -> int:
    return fn.experimental_get_tracing_count()


def no_grad():
    return contextlib.nullcontext()


def all_finite(scalars: Sequence):
    return tf.reduce_all([tf.math.is_finite(s) for s in scalars])


def run_if(pred, fn: Callable[[], None]) -> None:
    """Run ``fn`` (for its side effects on variables) when ``pred`` holds, in the graph."""
    def then():
        fn()
        return tf.constant(True)
    tf.cond(pred, then, lambda: tf.constant(False))


def cond(pred, true_fn: Callable, false_fn: Callable):
    """``true_fn()`` if ``pred`` else ``false_fn()``: ``tf.cond`` in a graph (both branches
    traced once, same structure of outputs), a Python branch for a Python bool."""
    if isinstance(pred, bool):
        return true_fn() if pred else false_fn()
    return tf.cond(pred, true_fn, false_fn)


def shards(x) -> list:
    """One shard: TensorFlow parallelises inside each op."""
    return [slice(None)]


def run_sharded(fn: Callable, parts: list) -> list:
    return [fn(p) for p in parts]


def add_lists(lists: Sequence[Sequence]) -> list:
    return [tf.add_n(list(items)) for items in zip(*lists)]


# ------------------------------------------------------------------ process groups
#: What a failed collective raises: a rank found dead by the strategy's health check
#: (Unavailable), the collective timeout (DeadlineExceeded), or an aborted collective.
COLLECTIVE_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                     tf.errors.AbortedError, tf.errors.CancelledError)


def start_process_group(world, timeout_s: float):
    """Join the group ``world`` (a :class:`ptycho.distributed.World` whose ``workers`` list
    every rank's ``host:port``): a ``MultiWorkerMirroredStrategy`` over a cluster of workers,
    one replica per process (where GPUs are visible, only GPU ``local_rank`` is kept for this
    process), collectives timing out after ``timeout_s``. Call before any model is built in
    the process (TensorFlow places variables on the strategy's devices from then on).
    Returns ``(strategy, None)`` (TensorFlow places tensors itself).
    """
    if not world.workers:
        raise ValueError("the TensorFlow backend needs every rank's address: set TF_CONFIG "
                         "(ptycho ... --nproc K sets it; see docs/distributed.md)")
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_visible_devices(gpus[world.local_rank % len(gpus)], "GPU")
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": list(world.workers)}), task_type="worker",
        task_id=world.rank, rpc_layer="grpc", num_accelerators={"GPU": 1} if gpus else None)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(timeout_s))
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                         communication_options=options)
    if strategy.num_replicas_in_sync != world.size:
        raise RuntimeError(f"the strategy has {strategy.num_replicas_in_sync} replicas for "
                           f"{world.size} processes: one device per process is expected")
    return strategy, None


def all_reduce_sum(tensors: Sequence, group) -> list:
    """The elementwise sums over the group's ranks of ``tensors`` (one dtype), on every rank:
    packed into one tensor, one collective (``strategy.run`` of the replica context's
    ``all_reduce``), unpacked. Works eagerly and inside a ``tf.function``; every rank must
    trace its collectives in the same order (the strategy numbers them as they are traced)."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    if len({t.dtype for t in tensors}) != 1:
        raise ValueError(f"all_reduce_sum needs one dtype, got {sorted({t.dtype.name for t in tensors})}")
    static = all(t.shape.is_fully_defined() for t in tensors)
    sizes = [t.shape.num_elements() for t in tensors] if static else \
        tf.stack([tf.size(t) for t in tensors])
    flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)

    def reduce(x):
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.identity(x))

    summed = group.experimental_local_results(group.run(reduce, args=(flat,)))[0]
    parts = tf.split(summed, sizes, num=len(tensors), axis=0)
    return [tf.reshape(p, t.shape if static else tf.shape(t)) for p, t in zip(parts, tensors)]


def stop_process_group(group) -> None:
    """Nothing to release: the strategy's threads end with the process."""
