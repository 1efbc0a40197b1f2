"""The PINN's convolutional network, written once over a backend's ops namespace.

The architecture is the one :mod:`ptycho.weights` specifies (its docstring): 3x3 convs with
a zero padding of 1 on each side, relu, 2x2 max-pool (stride 2) in the encoder; nearest x2
up-sampling and two convs + relu per decoder level; heads to C channels; the amplitude
head's activation from the config, the phase head ``pi * tanh``. ``pad_object`` zeroes the
object outside the central N/2 square; with ``probe_big`` the border heads' output replaces
the main heads' there instead. With ``central_decoder`` the decoders stop at N/2 and the
main heads' output is that central square itself. With ``skip_connections`` each decoder
level's first conv also takes the encoder's features of its size (a U-Net).

With ``per_pattern_network`` the network sees one pattern per image: a group (B, C, N, N)
is reshaped to (B*C, 1, N, N) before it (:func:`to_patterns`) and its heads back after it
(:func:`to_groups`). With ``match_intensity`` each patch's amplitude is scaled so that its
intensity through the probe equals its pattern's (:func:`intensity_match`).

Layouts: the network runs in the backend's fast layout (``ops.to_network_layout``: NHWC in
TensorFlow, channels_last NCHW in PyTorch); heads come back as images ``(B, C, N, N)``
float32 (``ops.to_image_layout``), where the activations and the complex patches are formed.
``params`` maps canonical names to the backend's tensors (kernels in its native layout).
"""

from __future__ import annotations

import math
from typing import Mapping

from ptycho.config.schema import N_LEVELS, ModelConfig
from ptycho.physics.model import (BACKPROP_EPSILON, BACKPROP_REGULARISATION,
                                  INTENSITY_MATCH_EPSILON)
from ptycho.weights import (decoder_widths, has_border_heads, has_central_decoder,
                            skip_level, skip_widths)

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


def _head(ops, y, params: Mapping, name: str):
    return ops.to_image_layout(ops.conv3x3(y, params[f"{name}.kernel"], params[f"{name}.bias"]))


def _heads(ops, y, params: Mapping, config: ModelConfig, branch: str) -> dict:
    """The branch's head and, with border heads, its border head, as float32 images
    (B, C, N, N).

    With a central decoder ``y`` is N/2 x N/2: the main head's output is the central square,
    zero-padded to N, and the border head runs on ``y`` up-sampled to N. Otherwise both
    heads see the same N x N features, and their kernels are stacked along the output
    channels: a 3x3 convolution to 2C channels costs about what one to C channels does (C,
    the network's channels, is 1 to 16), so one call instead of two. Each output channel is
    the same sum of products as in its own convolution.
    """
    if has_central_decoder(config):
        out = {branch: ops.zero_pad(_head(ops, y, params, f"{branch}.head"), config.N // 4)}
        if has_border_heads(config):
            out[f"{branch}_border"] = _head(ops, ops.upsample2(y), params,
                                            f"{branch}.border_head")
        return out
    names = [f"{branch}.head"] + ([f"{branch}.border_head"] if has_border_heads(config) else [])
    kernel = ops.concat_out_channels([params[f"{n}.kernel"] for n in names])
    bias = ops.concat([params[f"{n}.bias"] for n in names], axis=0)
    out = ops.to_image_layout(ops.conv3x3(y, kernel, bias))
    if len(names) == 1:
        return {branch: out}
    c = config.network_channels
    return {branch: out[:, :c], f"{branch}_border": out[:, c:]}


def network(ops, x, params: Mapping, config: ModelConfig, compute_dtype=None) -> dict:
    """The CNN: normalised amplitudes (B, C, N, N) -> pre-activation heads (B, C, N, N) float32.

    Keys ``amp``, ``phase`` and, with border heads, ``amp_border``, ``phase_border``. The conv
    stack runs in ``compute_dtype`` (default float32; bfloat16 for mixed precision, in training
    with ``TrainingConfig.precision`` or in inference:
    kernels and biases are cast to the activations' dtype); heads come back in float32.
    """
    h = ops.to_network_layout(x if compute_dtype is None else ops.cast(x, compute_dtype))
    skips = skip_widths(config)     # per decoder level: the encoder channels it also takes
    features = []        # with skip connections, each encoder level's output before pooling
    for i in range(N_LEVELS):
        h = _conv_block(ops, h, params, f"enc{i}")
        if any(skips):
            features.append(h)
        h = ops.maxpool2(h)
    heads: dict = {}
    for branch in BRANCHES:
        y = h
        for j in range(len(decoder_widths(config))):
            y = ops.upsample2(y)
            if skips[j]:
                y = ops.concat_features([y, features[skip_level(j)]])
            y = _conv_block(ops, y, params, f"{branch}.dec{j}")
        heads.update(_heads(ops, y, params, config, branch))
    return heads


def to_patterns(ops, x, config: ModelConfig):
    """Groups (B, C, N, N) -> the network's images: (B*C, 1, N, N) with
    ``per_pattern_network``, else unchanged."""
    if config.network_channels == config.n_channels:
        return x
    return ops.reshape(x, (-1, 1, config.N, config.N))


def backprop_estimate(ops, x, probe):
    """The back-propagated object estimate of each image of ``x`` (..., N, N) float32 with
    ``probe`` (N, N) complex64, as its (real, imaginary) parts, float32: the twin of
    :func:`ptycho.physics.model.backprop_estimate` (the probe is not trainable with
    ``backprop_estimate``)."""
    far = ops.fft2(probe)
    unit = ops.divide_real(far, ops.maximum(ops.abs(far), 1e-30))
    power = ops.square(ops.abs(probe))
    inverse = ops.divide_real(ops.complex(ops.real(probe), -ops.imag(probe)),
                              power + BACKPROP_REGULARISATION * ops.amax(power))
    # fftshift2 is its own inverse for the even N every config has
    est = inverse * ops.ifft2(ops.fftshift2(ops.as_complex(x)) * unit)
    return ops.real(est), ops.imag(est)


def network_input(ops, x, config: ModelConfig, estimate=None):
    """Normalised amplitudes (B, C, N, N) -> the network's images (B', input_channels, N, N):
    :func:`to_patterns` of ``x`` and, with ``backprop_estimate``, of the ``estimate``'s
    (real, imaginary) parts (:func:`backprop_estimate` of ``x``), along the channels."""
    parts = [x] + ([] if estimate is None else list(estimate))
    images = [to_patterns(ops, part, config) for part in parts]
    return images[0] if len(images) == 1 else ops.concat(images, axis=1)


def estimate_magnitude_phase(ops, estimate):
    """``(|E|, arg E)`` of the estimate's (real, imaginary) parts, with finite gradients
    where ``E`` is zero (an all-zero pattern): ``|E| = sqrt(re^2 + im^2 + e)`` and the angle
    taken of ``1`` there (the twin of ``ptycho.physics.model.estimate_magnitude_phase``)."""
    re, im = estimate
    power = ops.square(re) + ops.square(im)
    nonzero = power > 0
    phase = ops.atan2(ops.where(nonzero, im, ops.zeros_like(im)),
                      ops.where(nonzero, re, ops.ones_like(re)))
    return ops.sqrt(power + BACKPROP_EPSILON), phase


def to_groups(ops, heads: Mapping, config: ModelConfig) -> dict:
    """The inverse of :func:`to_patterns` for every head: back to (B, C, N, N)."""
    if config.network_channels == config.n_channels:
        return dict(heads)
    shape = (-1, config.n_channels, config.N, config.N)
    return {k: ops.reshape(v, shape) for k, v in heads.items()}


def intensity_match(ops, amp, x, probe_intensity):
    """The factor (B, C, 1, 1) that scales ``amp`` (B, C, N, N) so that each patch's
    intensity through the probe equals its pattern's: ``sum |P|^2 (s a)^2 = sum x^2``.

    ``x`` is the network input (normalised amplitudes, masked pixels zero), ``probe_intensity``
    ``|P|^2`` (N, N). By Parseval the orthonormal far field keeps ``sum |P O|^2``, so the
    scaled patch predicts the measured total exactly (before the overlap constraint, which
    averages neighbours); the network learns the amplitude's shape, the data fix its level.
    Masked pixels read zero, so a mask lowers the level by the share of the intensity they
    would have held (small for a beamstop or dead pixels; refinement, which skips them, fits
    the level exactly).
    """
    shape = (-1, ops.shape(amp)[1], 1, 1)
    measured = ops.reshape(ops.sum(ops.square(x), axis=(-2, -1)), shape)
    sent = ops.reshape(ops.sum(probe_intensity * ops.square(amp), axis=(-2, -1)), shape)
    return ops.sqrt((measured + INTENSITY_MATCH_EPSILON) / (sent + INTENSITY_MATCH_EPSILON))


def object_patches(ops, heads: Mapping, config: ModelConfig, central=None, x=None,
                   probe_intensity=None, estimate=None):
    """Heads (B, C, N, N) -> complex64 object patches with the support options applied.

    ``central`` is :func:`ptycho.physics.central_mask` (N, N) float32, needed with
    ``pad_object``: inside it the main heads, outside the border heads (``probe_big``) or zero.
    ``x`` (the network input, (B, C, N, N)) and ``probe_intensity`` (``|P|^2``, (N, N)) are
    needed with ``match_intensity`` (:func:`intensity_match`), ``estimate`` (the
    (real, imaginary) parts of :func:`backprop_estimate` of ``x``, (B, C, N, N)) with
    ``backprop_estimate``: the phase head then corrects its phase, ``arg E + pi tanh(h)``,
    and with ``estimate_amplitude="scale"`` the amplitude head its magnitude, ``|E| act(h)``.
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
    if config.backprop_estimate:
        magnitude, angle = estimate_magnitude_phase(ops, estimate)
        phase = angle + phase
        if config.estimate_amplitude == "scale":
            amp = magnitude * amp
    if config.match_intensity:
        amp = amp * intensity_match(ops, amp, x, probe_intensity)
    return ops.polar(amp, phase)
