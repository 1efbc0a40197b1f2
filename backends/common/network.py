"""The PINN's convolutional network, written once over a backend's ops namespace.

The architecture is the one :mod:`ptycho.weights` specifies (its docstring): 3x3 convs with
a zero padding of 1 on each side, relu, 2x2 max-pool (stride 2) in the encoder; nearest x2
up-sampling and two convs + relu per decoder level; heads to C channels; the amplitude
head's activation from the config, the phase head ``pi * tanh``. ``pad_object`` zeroes the
object outside the central N/2 square; with ``probe_big`` the border heads' output replaces
the main heads' there instead.

Layouts: the network runs in the backend's fast layout (``ops.to_network_layout``: NHWC in
TensorFlow, channels_last NCHW in PyTorch); heads come back as images ``(B, C, N, N)``
float32 (``ops.to_image_layout``), where the activations and the complex patches are formed.
``params`` maps canonical names to the backend's tensors (kernels in its native layout).
"""

from __future__ import annotations

import math
from typing import Mapping

from ptycho.config.schema import N_LEVELS, ModelConfig
from ptycho.weights import decoder_widths, has_border_heads

BRANCHES = ("amp", "phase")


def amplitude_activation(ops, name: str):
    """The amplitude head's activation by its config name (see ``AMP_ACTIVATIONS``)."""
    activations = {
        "sigmoid": ops.sigmoid,
        "swish": lambda x: x * ops.sigmoid(x),
        "softplus": ops.softplus,
        "relu": ops.relu,
    }
    if name not in activations:
        raise ValueError(f"unknown amp_activation {name!r}; valid: {sorted(activations)}")
    return activations[name]


def _conv_block(ops, x, params: Mapping, prefix: str):
    x = ops.conv3x3_relu(x, params[f"{prefix}.conv1.kernel"], params[f"{prefix}.conv1.bias"])
    return ops.conv3x3_relu(x, params[f"{prefix}.conv2.kernel"], params[f"{prefix}.conv2.bias"])


def _heads(ops, y, params: Mapping, config: ModelConfig, branch: str) -> dict:
    """The branch's head and, with border heads, its border head, in one convolution.

    Their kernels are stacked along the output channels: both heads see the same features,
    and a 3x3 convolution to 2C channels costs about what one to C channels does (C = 1 or
    4), so one call instead of two. Each output channel is the same sum of products as in
    its own convolution. Returned as float32 images (B, C, N, N).
    """
    names = [f"{branch}.head"] + ([f"{branch}.border_head"] if has_border_heads(config) else [])
    kernel = ops.concat_out_channels([params[f"{n}.kernel"] for n in names])
    bias = ops.concat([params[f"{n}.bias"] for n in names], axis=0)
    out = ops.to_image_layout(ops.conv3x3(y, kernel, bias))
    if len(names) == 1:
        return {branch: out}
    c = config.n_channels
    return {branch: out[:, :c], f"{branch}_border": out[:, c:]}


def network(ops, x, params: Mapping, config: ModelConfig, compute_dtype=None) -> dict:
    """The CNN: normalised amplitudes (B, C, N, N) -> pre-activation heads (B, C, N, N) float32.

    Keys ``amp``, ``phase`` and, with border heads, ``amp_border``, ``phase_border``. The conv
    stack runs in ``compute_dtype`` (default float32; bfloat16 for mixed-precision inference:
    kernels and biases are cast to the activations' dtype); heads come back in float32.
    """
    h = ops.to_network_layout(x if compute_dtype is None else ops.cast(x, compute_dtype))
    for i in range(N_LEVELS):
        h = ops.maxpool2(_conv_block(ops, h, params, f"enc{i}"))
    heads: dict = {}
    for branch in BRANCHES:
        y = h
        for j in range(len(decoder_widths(config))):
            y = _conv_block(ops, ops.upsample2(y), params, f"{branch}.dec{j}")
        heads.update(_heads(ops, y, params, config, branch))
    return heads


def object_patches(ops, heads: Mapping, config: ModelConfig, central=None):
    """Heads (B, C, N, N) -> complex64 object patches with the support options applied.

    ``central`` is :func:`ptycho.physics.central_mask` (N, N) float32, needed with
    ``pad_object``: inside it the main heads, outside the border heads (``probe_big``) or zero.
    """
    act = amplitude_activation(ops, config.amp_activation)
    amp = act(heads["amp"])
    phase = math.pi * ops.tanh(heads["phase"])
    if config.pad_object:
        if has_border_heads(config):
            outside = 1.0 - central
            amp = central * amp + outside * act(heads["amp_border"])
            phase = central * phase + outside * (math.pi * ops.tanh(heads["phase_border"]))
        else:
            amp = central * amp
    return ops.polar(amp, phase)
