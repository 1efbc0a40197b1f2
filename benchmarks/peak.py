"""The machine's measured convolution peak, per framework and precision.

The share of the peak a training step reaches says how much a faster kernel could still give
(near 1: nothing; the step is then bound by its FLOPs). Measured on the network's own layer
shapes at batch 16 (3x3, stride 1, "same" padding, the framework's fast layout: NHWC in
TensorFlow, channels_last in PyTorch), each timed as the median of a few calls after a warm
call; the peak is the fastest of them in GFLOP/s (2 FLOPs per multiply-add).
"""

from __future__ import annotations

import statistics

import numpy as np

from benchmarks.timing import time_calls

#: (side, in, out) of the layers timed: the widest level of each resolution of the peer's
#: size (widths 64/128/256 at N=64).
SHAPES = ((64, 64, 64), (32, 128, 128), (16, 256, 256))
BATCH = 16
CALLS = 5


def _flops(side: int, cin: int, cout: int) -> float:
    return 2.0 * 9 * BATCH * side * side * cin * cout


def _torch_conv(side, cin, cout, precision):
    import torch
    import torch.nn.functional as F

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]
    cl = torch.channels_last
    x = torch.rand(BATCH, cin, side, side).to(dtype).contiguous(memory_format=cl)
    k = torch.rand(cout, cin, 3, 3).to(dtype).contiguous(memory_format=cl)

    def call():
        with torch.inference_mode():
            F.conv2d(x, k, padding=1)
    return call


def _tensorflow_conv(side, cin, cout, precision):
    import tensorflow as tf

    dtype = {"float32": tf.float32, "bfloat16": tf.bfloat16}[precision]
    rng = np.random.default_rng(0)      # not tf.random: the backend makes ops deterministic
    x = tf.cast(rng.random((BATCH, side, side, cin), dtype=np.float32), dtype)
    k = tf.cast(rng.random((3, 3, cin, cout), dtype=np.float32), dtype)
    conv = tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME"))

    def call():
        conv().numpy()
    return call


def conv_peak(framework: str, precision: str) -> dict:
    """``{"gflops": the fastest layer's GFLOP/s, "layers": {"side/in/out": GFLOP/s}}``."""
    make = {"torch": _torch_conv, "tensorflow": _tensorflow_conv}[framework]
    layers = {}
    for side, cin, cout in SHAPES:
        call = make(side, cin, cout, precision)
        call()
        wall = statistics.median(t[0] for t in time_calls(call, CALLS))
        layers[f"{side}/{cin}/{cout}"] = round(_flops(side, cin, cout) / wall / 1e9, 1)
    return {"gflops": max(layers.values()), "layers": layers}
