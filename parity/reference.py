"""A float64 numpy reference of the whole model: network, physics, losses, gradients, Adam.

:mod:`ptycho.physics` is the oracle for the physics; this module extends it to the network of
:mod:`ptycho.weights` (whose docstring is the specification) and adds exact reverse-mode
gradients, so that every stage of the parity harness can say which backend drifted, not only
that the two disagree. It is checked against float64 central finite differences in
``tests/test_parity_reference.py``.

Conventions: as :mod:`ptycho.physics` and ``docs/conventions.md``; the network runs NHWC
internally; the gradient of a complex entry (the probe) is ``d/d real + 1j d/d imag``.

Adjoints used by the backward pass (exact, including the zero fill):

* the orthonormal FFT's adjoint is the orthonormal inverse FFT; fftshift's is ifftshift;
* bilinear translation by ``d`` has translation by ``-d`` as adjoint (``T(d)[r, s]`` has the
  weights ``1 - f`` at ``s = r - k`` and ``f`` at ``s = r - k - 1``; its transpose is the
  same formula for ``-d``), and ``pad_to_canvas`` / ``crop_center`` are each other's adjoints;
* hence the overlap constraint ``E diag(1 / coverage) S`` with ``E = S^T`` is self-adjoint.

>>> from ptycho.config import ModelConfig
>>> from ptycho.weights import init_weights
>>> cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1, probe_big=False)
>>> w = init_weights(cfg, 0, np.ones((16, 16)), 0.0)
>>> network_patches(cfg, w, np.ones((2, 1, 16, 16))).shape
(2, 1, 16, 16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy.special import expit

from ptycho.batch import Batch
from ptycho.config.schema import N_LEVELS, ModelConfig, TrainingConfig
from ptycho.physics.forward import far_field_amplitude
from ptycho.physics.losses import LossSettings, masked_mean, poisson_nll, total_loss
from ptycho.physics.model import (INTENSITY_MATCH_EPSILON, backprop_estimate, backprop_filters,
                                  effective_probe, estimate_magnitude_phase)
from ptycho.physics.patches import (central_mask, object_support, overlap_constraint,
                                    probe_disk_mask)
from ptycho.weights import (decoder_widths, has_border_heads, has_central_decoder,
                            select_names, skip_level, skip_widths, trainable_names)

BRANCHES = ("amp", "phase")


# -- layers (NHWC, float64) --------------------------------------------------------------------
def conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 stride-1 cross-correlation with zero padding 1: (B, H, W, Ci) -> (B, H, W, Co)."""
    b, h, w, _ = x.shape
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += xp[:, i:i + h, j:j + w, :] @ kernel[i, j]
    return out + bias


def conv2d_backward(x: np.ndarray, kernel: np.ndarray, g: np.ndarray):
    """Gradients (d input, d kernel, d bias) of :func:`conv2d` given ``g = d out``."""
    b, h, w, ci = x.shape
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    gxp = np.zeros_like(xp)
    gk = np.zeros_like(kernel)
    g2 = g.reshape(-1, g.shape[-1])
    for i in range(kh):
        for j in range(kw):
            gk[i, j] = xp[:, i:i + h, j:j + w, :].reshape(-1, ci).T @ g2
            gxp[:, i:i + h, j:j + w, :] += g @ kernel[i, j].T
    return gxp[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w, :], gk, g2.sum(axis=0)


def maxpool2(x: np.ndarray):
    """2x2 stride-2 max-pool; returns (out, index of the max in each window for the backward)."""
    b, h, w, c = x.shape
    win = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(
        b, h // 2, w // 2, c, 4)
    arg = np.argmax(win, axis=-1)
    return np.take_along_axis(win, arg[..., None], axis=-1)[..., 0], arg


def maxpool2_backward(arg: np.ndarray, g: np.ndarray) -> np.ndarray:
    b, h2, w2, c = g.shape
    win = np.zeros((b, h2, w2, c, 4))
    np.put_along_axis(win, arg[..., None], g[..., None], axis=-1)
    return win.reshape(b, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h2, 2 * w2, c)


def upsample2(x: np.ndarray) -> np.ndarray:
    """Nearest-neighbour x2 up-sampling."""
    return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)


def upsample2_backward(g: np.ndarray) -> np.ndarray:
    b, h, w, c = g.shape
    return g.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """The amplitude head's activation (``ModelConfig.amp_activation``)."""
    if name == "sigmoid":
        return expit(x)
    if name == "swish":
        return x * expit(x)
    if name == "softplus":
        return np.logaddexp(0.0, x)
    if name == "relu":
        return np.maximum(x, 0.0)
    raise ValueError(f"unknown amp_activation {name!r}")


def activation_grad(name: str, x: np.ndarray) -> np.ndarray:
    """Derivative of :func:`activation` at ``x`` (relu: 0 at 0, as both frameworks)."""
    s = expit(x)
    if name == "sigmoid":
        return s * (1 - s)
    if name == "swish":
        return s + x * s * (1 - s)
    if name == "softplus":
        return s
    if name == "relu":
        return (x > 0).astype(np.float64)
    raise ValueError(f"unknown amp_activation {name!r}")


# -- the network --------------------------------------------------------------------------------
@dataclass
class _Tape:
    """What the backward pass of the network needs."""

    convs: list = field(default_factory=list)     # (name, input, pre-activation or None)
    pools: list = field(default_factory=list)
    heads: dict = field(default_factory=dict)     # head name -> pre-activation (B, N, N, C)
    feats: dict = field(default_factory=dict)     # branch -> decoder output features
    # backprop_estimate: the estimate E (B, N, N, C) complex and the activated amplitude
    # before it was scaled by |E|
    estimate: Optional[np.ndarray] = None
    amp_activated: Optional[np.ndarray] = None


def _w(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(weights[name], dtype=np.float64)


def _to_network(config: ModelConfig, x_nchw: np.ndarray) -> np.ndarray:
    """Groups (B, C, N, N) -> the network's NHWC images: (B*C, N, N, 1) with
    ``per_pattern_network``, else (B, N, N, C)."""
    b, c, n, _ = x_nchw.shape
    k = config.network_channels
    return np.transpose(np.reshape(x_nchw, (b * c // k, k, n, n)), (0, 2, 3, 1))


def _network_images(config: ModelConfig, x_nchw: np.ndarray,
                    estimate: Optional[np.ndarray]) -> np.ndarray:
    """Normalised amplitudes (B, C, N, N) -> the network's NHWC input: :func:`_to_network`
    of them and, with ``backprop_estimate``, of their ``estimate``'s real and imaginary
    parts, along the channels (``backends.common.network.network_input``)."""
    if estimate is None:
        return _to_network(config, x_nchw)
    parts = [_to_network(config, p) for p in (x_nchw, estimate.real, estimate.imag)]
    return np.concatenate(parts, axis=-1)


def _probe(config: ModelConfig, weights) -> np.ndarray:
    """The effective probe (complex128) the model's physics and estimate use."""
    return effective_probe(np.asarray(weights["probe"], np.complex128), config.probe_mask)


def _input_backward(config: ModelConfig, weights, g: np.ndarray, absolute: bool,
                    g_estimate: Optional[np.ndarray] = None):
    """The gradient of the network's NHWC input (:func:`_network_images`) -> that of the
    normalised amplitudes (B, C, N, N), and that of an estimate given as an input
    (``estimate_scope="scan"``; else None), ``d/d Re E + 1j d/d Im E`` (B, C, N, N) (with
    ``absolute``, the real sum of its terms' magnitudes). ``g_estimate``, in the same form,
    is what reached the estimate from the heads' correction of it.
    The estimate is linear in the amplitudes, ``E = R ifft2(S(x) U)`` (``S`` the ifftshift,
    ``U`` the probe's far-field phase, ``R`` the regularised division by the probe), so its
    adjoint is ``Re S^-1(conj(U) fft2(conj(R) g))``. With ``absolute`` (magnitudes), the
    three paths' magnitudes are added (as everywhere in the backward pass, magnitudes are
    taken of the terms of the final sums only)."""
    c, n = config.n_channels, config.N
    k = config.network_channels
    g = np.transpose(g, (0, 3, 1, 2))
    if not config.backprop_estimate:
        return np.reshape(g, (-1, c, n, n)), None
    g_x, g_re, g_im = (np.reshape(g[:, i * k:(i + 1) * k], (-1, c, n, n)) for i in range(3))
    if config.estimate_scope == "scan":     # an input: nothing flows from it to x
        if absolute:
            return np.abs(g_x), np.abs(g_re) + np.abs(g_im) + np.abs(g_estimate)
        return g_x, g_re + 1j * g_im + g_estimate
    unit, inverse = backprop_filters(_probe(config, weights))

    def adjoint(g_est):
        back = np.conj(unit) * np.fft.fft2(np.conj(inverse) * g_est, axes=(-2, -1),
                                           norm="ortho")
        return np.real(np.fft.fftshift(back, axes=(-2, -1)))

    if absolute:
        return (np.abs(g_x) + np.abs(adjoint(g_re + 1j * g_im)) + np.abs(adjoint(g_estimate)),
                None)
    return g_x + adjoint(g_re + 1j * g_im + g_estimate), None


def _estimate_backward(config: ModelConfig, estimate: np.ndarray, amp_activated: np.ndarray,
                       g_amp: np.ndarray, g_phase: np.ndarray):
    """The heads' correction of the estimate, ``phase = arg E + p`` and with
    ``estimate_amplitude="scale"`` ``amp = |E| a`` (else ``amp = a``), backwards: from d/d amp
    and d/d phase (B, N, N, C) to d/d a (B, N, N, C) and ``d/d Re E + 1j d/d Im E``
    (B, C, N, N)."""
    power = np.abs(estimate) ** 2
    inv_power = np.where(power > 0, 1.0 / np.where(power > 0, power, 1.0), 0.0)
    # d|E| = (re dre + im dim) / |E|; d arg E = (re dim - im dre) / |E|^2
    g_est = g_phase * 1j * estimate * inv_power
    if config.estimate_amplitude != "scale":
        return g_amp, _nchw(g_est)
    magnitude, _ = estimate_magnitude_phase(estimate)
    return g_amp * magnitude, _nchw(g_est + g_amp * amp_activated * estimate / magnitude)


def _to_groups(config: ModelConfig, y: np.ndarray) -> np.ndarray:
    """The network's NHWC images -> groups NHWC (B, N, N, C) (the inverse of ``_to_network``
    after the transposition to NHWC)."""
    c, n = config.n_channels, config.N
    nchw = np.reshape(np.transpose(y, (0, 3, 1, 2)), (-1, c, n, n))
    return np.transpose(nchw, (0, 2, 3, 1))


def _head_input(config: ModelConfig, name: str, feat: np.ndarray):
    """What head ``name`` runs on, given its decoder's last features ``feat``: (features,
    the zero margin padded around its output, the adjoint from a gradient of those features
    back to ``feat``).

    With a central decoder ``feat`` is N/2 x N/2: the main head's output is the central
    square itself (margin N/4 up to N), the border head runs on ``feat`` up-sampled to N.
    """
    if not has_central_decoder(config):
        return feat, 0, lambda g: g
    if name.endswith(".border_head"):
        return upsample2(feat), 0, upsample2_backward
    return feat, config.N // 4, lambda g: g


def _network(config: ModelConfig, weights, x_nchw: np.ndarray, tape: Optional[_Tape],
             estimate: Optional[np.ndarray] = None):
    """Normalised amplitudes (B, C, N, N) -> (amp, phase) (B, N, N, C) and the tape.

    ``amp`` is the activated amplitude head's output before :class:`_IntensityMatch`.
    ``estimate`` (B, C, N, N) complex, in the units of ``x``: the scan's estimate, given
    with ``estimate_scope="scan"`` (else the model computes each pattern's own)."""
    def conv_relu(h, name):
        pre = conv2d(h, _w(weights, name + ".kernel"), _w(weights, name + ".bias"))
        if tape is not None:
            tape.convs.append((name, h, pre))
        return np.maximum(pre, 0.0)

    x_nchw = np.asarray(x_nchw, dtype=np.float64)
    if (config.estimate_scope == "scan") != (estimate is not None):
        raise ValueError(f"an estimate is an input exactly with estimate_scope='scan'; got "
                         f"{'one' if estimate is not None else 'none'} with "
                         f"{config.estimate_scope!r}")
    if estimate is not None:
        estimate = np.asarray(estimate, np.complex128)
    elif config.backprop_estimate:
        estimate = backprop_estimate(x_nchw, _probe(config, weights))
    h = _network_images(config, x_nchw, estimate)
    features = []                                # each encoder level's output before pooling
    for i in range(N_LEVELS):
        h = conv_relu(conv_relu(h, f"enc{i}.conv1"), f"enc{i}.conv2")
        features.append(h)
        h, arg = maxpool2(h)
        if tape is not None:
            tape.pools.append(arg)
    heads, skips = {}, skip_widths(config)
    for branch in BRANCHES:
        g = h
        for j in range(len(decoder_widths(config))):
            g = upsample2(g)
            if skips[j]:
                g = np.concatenate([g, features[skip_level(j)]], axis=-1)
            g = conv_relu(conv_relu(g, f"{branch}.dec{j}.conv1"), f"{branch}.dec{j}.conv2")
        if tape is not None:
            tape.feats[branch] = g
        names = [f"{branch}.head"] + ([f"{branch}.border_head"] if has_border_heads(config) else [])
        for name in names:
            feat, q, _ = _head_input(config, name, g)
            pre = conv2d(feat, _w(weights, name + ".kernel"), _w(weights, name + ".bias"))
            heads[name] = np.pad(pre, ((0, 0), (q, q), (q, q), (0, 0)))
    if tape is not None:
        tape.heads = heads
    act = config.amp_activation
    amp = activation(act, heads["amp.head"])
    phase = math.pi * np.tanh(heads["phase.head"])
    n = config.N
    if has_border_heads(config):
        inside = central_mask(n)[None, :, :, None] > 0
        amp = np.where(inside, amp, activation(act, heads["amp.border_head"]))
        phase = np.where(inside, phase, math.pi * np.tanh(heads["phase.border_head"]))
    elif config.pad_object:
        amp = amp * object_support(n, True, False)[None, :, :, None]
    amp, phase = _to_groups(config, amp), _to_groups(config, phase)
    if estimate is None:
        return amp, phase
    estimate = np.transpose(estimate, (0, 2, 3, 1))
    magnitude, angle = estimate_magnitude_phase(estimate)
    if tape is not None:
        tape.estimate, tape.amp_activated = estimate, amp
    return (magnitude * amp if config.estimate_amplitude == "scale" else amp), angle + phase


class _IntensityMatch:
    """``match_intensity``: the factor ``s = sqrt((M + e) / (S + e))`` per patch, with
    ``M = sum x^2`` (the pattern) and ``S = sum |P|^2 a^2`` (what the patch sends through
    the probe), and its exact backward pass. Without ``match_intensity``, ``s = 1``."""

    def __init__(self, config: ModelConfig, amp: np.ndarray, x: np.ndarray, probe: np.ndarray):
        self.on = config.match_intensity
        self.amp, self.x, self.probe = amp, x, probe
        self.w = (np.abs(probe) ** 2)[None, :, :, None]
        b, c = x.shape[:2]
        self.m = np.sum(x ** 2, axis=(-2, -1)).reshape(b, 1, 1, c) + INTENSITY_MATCH_EPSILON
        self.s_sum = np.sum(self.w * amp ** 2, axis=(1, 2), keepdims=True) \
            + INTENSITY_MATCH_EPSILON
        self.scale = np.sqrt(self.m / self.s_sum) if self.on else 1.0

    def backward(self, g_scaled: np.ndarray, absolute: bool = False):
        """From d/d(s a) (B, N, N, C): d/da, d/dx (B, C, N, N), d/dP (N, N) complex. With
        ``absolute``, ``g_scaled`` is a magnitude and so are the results (each sum taken
        over absolute terms)."""
        if not self.on:
            return g_scaled, 0.0, 0.0
        amp, s = self.amp, self.scale
        t = np.sum(g_scaled * amp, axis=(1, 2), keepdims=True)
        if absolute:
            t = np.abs(t)
        g_amp = s * g_scaled + (1 if absolute else -1) * t * s / self.s_sum * self.w * amp
        g_x = np.transpose(t * s / self.m, (0, 3, 1, 2)) * self.x
        g_w = np.sum(t * s / (2 * self.s_sum) * amp ** 2, axis=(0, 3))
        g_probe = 2 * g_w * (np.abs(self.probe) if absolute else -self.probe)
        return g_amp, (np.abs(g_x) if absolute else g_x), g_probe


def network_patches(config: ModelConfig, weights: Mapping[str, np.ndarray],
                    x: np.ndarray, estimate: Optional[np.ndarray] = None) -> np.ndarray:
    """Complex patches (B, C, N, N) complex128 from the network input ``x`` (normalised
    amplitudes, i.e. ``diffraction / exp(log_intensity_scale)``) and, with
    ``estimate_scope="scan"``, the scan's ``estimate`` in the same units."""
    x = np.asarray(x, np.float64)
    amp, phase = _network(config, weights, x, None, estimate)
    probe = _probe(config, weights)
    amp = amp * _IntensityMatch(config, amp, x, probe).scale
    return np.transpose(amp * np.exp(1j * phase), (0, 3, 1, 2))


def predict(config: ModelConfig, weights: Mapping[str, np.ndarray],
            diffraction: np.ndarray, estimate: Optional[np.ndarray] = None) -> np.ndarray:
    """The reference of ``BackendModel.predict``: patches from diffraction (and, with
    ``estimate_scope="scan"``, the scan's estimate) in photon units."""
    scale = math.exp(float(np.asarray(weights["log_intensity_scale"], np.float64)))
    if estimate is not None:
        estimate = np.asarray(estimate, np.complex128) / scale
    return network_patches(config, weights, np.asarray(diffraction, np.float64) / scale,
                           estimate)


def _network_backward(config: ModelConfig, weights, tape: _Tape, g_amp: np.ndarray,
                      g_phase: np.ndarray, m_amp: Optional[np.ndarray] = None,
                      m_phase: Optional[np.ndarray] = None
                      ) -> tuple[dict, np.ndarray, Optional[np.ndarray]]:
    """Gradients of the network's entries, of its input (B, C, N, N) and of a given estimate
    (:func:`_input_backward`), from the gradients of the activated amplitude and of the
    phase (B, N, N, C).

    With the magnitudes ``m_amp``, ``m_phase`` of those (bounds on their terms: amplitude and
    phase gradients can cancel at the heads), returns instead each entry's term magnitudes:
    its final reduction (over batch and pixels) taken over absolute values,
    ``sum |input| |delta|``; and ``|d input|``. This is the scale of the float32 round-off of
    that final sum. (A full absolute-value backward pass would bound the error of every layer
    but is so loose, 1e5 x the gradient, that it would hide real faults.)
    """
    absolute = m_amp is not None
    g_estimate = None
    if config.backprop_estimate:
        if absolute and config.estimate_amplitude == "scale":
            m_amp = m_amp * estimate_magnitude_phase(tape.estimate)[0]
        g_amp, g_estimate = _estimate_backward(config, tape.estimate, tape.amp_activated,
                                               g_amp, g_phase)
    g_amp, g_phase = _to_network(config, _nchw(g_amp)), _to_network(config, _nchw(g_phase))
    if absolute:
        m_amp, m_phase = _to_network(config, _nchw(m_amp)), _to_network(config, _nchw(m_phase))
    grads: dict[str, np.ndarray] = {}
    mags: dict[str, np.ndarray] = {}

    def conv_back(inp, name, g, g_mag=None):
        k = _w(weights, name + ".kernel")
        gx, grads[name + ".kernel"], grads[name + ".bias"] = conv2d_backward(inp, k, g)
        if absolute:
            _, mags[name + ".kernel"], mags[name + ".bias"] = conv2d_backward(
                np.abs(inp), k, np.abs(g) if g_mag is None else g_mag)
        return gx

    act, n = config.amp_activation, config.N

    def heads(g_amp, g_phase, d_act):
        out = {}
        if has_border_heads(config):
            inside = (central_mask(n)[None, :, :, None] > 0).astype(np.float64)
            t, tb = np.tanh(tape.heads["phase.head"]), np.tanh(tape.heads["phase.border_head"])
            out["amp.head"] = g_amp * inside * d_act(tape.heads["amp.head"])
            out["amp.border_head"] = g_amp * (1 - inside) * d_act(tape.heads["amp.border_head"])
            out["phase.head"] = g_phase * inside * math.pi * (1 - t ** 2)
            out["phase.border_head"] = g_phase * (1 - inside) * math.pi * (1 - tb ** 2)
        else:
            sup = object_support(n, True, False)[None, :, :, None] if config.pad_object else 1.0
            out["amp.head"] = g_amp * sup * d_act(tape.heads["amp.head"])
            out["phase.head"] = g_phase * math.pi * (1 - np.tanh(tape.heads["phase.head"]) ** 2)
        return out

    head_grads = heads(g_amp, g_phase, lambda pre: activation_grad(act, pre))
    head_mags = heads(m_amp, m_phase,
                      lambda pre: np.abs(activation_grad(act, pre))) if absolute else {}
    convs = {name: (inp, pre) for name, inp, pre in tape.convs}
    g_enc = 0.0
    g_skip: dict[int, np.ndarray] = {}      # encoder level -> gradient from the decoders' skips
    skips = skip_widths(config)
    for branch in BRANCHES:
        feat = tape.feats[branch]
        g = np.zeros_like(feat)
        for name, gh in head_grads.items():
            if name.startswith(branch + "."):
                inp, q, adjoint = _head_input(config, name, feat)
                # the zero padding's adjoint: keep the gradient where the conv's output is
                crop = (slice(None), slice(q, n - q), slice(q, n - q))
                gm = head_mags.get(name)
                g = g + adjoint(conv_back(inp, name, gh[crop], None if gm is None else gm[crop]))
        for j in reversed(range(len(decoder_widths(config)))):
            for part in ("conv2", "conv1"):
                name = f"{branch}.dec{j}.{part}"
                inp, pre = convs[name]
                g = conv_back(inp, name, g * (pre > 0))
            skip = skips[j]
            if skip:        # the concatenated encoder features' share goes to their level
                level = skip_level(j)
                g_skip[level] = g_skip.get(level, 0.0) + g[..., -skip:]
                g = g[..., :-skip]
            g = upsample2_backward(g)
        g_enc = g_enc + g
    g = g_enc
    for i in reversed(range(N_LEVELS)):
        g = maxpool2_backward(tape.pools[i], g) + g_skip.get(i, 0.0)
        for part in ("conv2", "conv1"):
            name = f"enc{i}.{part}"
            inp, pre = convs[name]
            g = conv_back(inp, name, g * (pre > 0))
    g_x, g_input_estimate = _input_backward(config, weights, g, absolute, g_estimate)
    return (mags, np.abs(g_x), g_input_estimate) if absolute else (grads, g_x, g_input_estimate)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 3, 1, 2))


# -- the model: network + physics + losses -------------------------------------------------------
def _constrain(config: ModelConfig, patches: np.ndarray, rel: np.ndarray, m: int) -> np.ndarray:
    if config.gridsize > 1 and config.object_big:
        support = object_support(config.N, config.pad_object, config.probe_big)
        return overlap_constraint(patches, rel, m, support)
    return patches


def network_input(batch: Batch) -> np.ndarray:
    """The batch's diffraction with masked (bad) pixels read as zero (float64)."""
    d = np.asarray(batch.diffraction, np.float64)
    if batch.mask is None:
        return d
    return np.where(np.broadcast_to(np.asarray(batch.mask) != 0, d.shape), d, 0.0)


def forward(config: ModelConfig, weights: Mapping[str, np.ndarray], batch: Batch) -> dict:
    """The reference of ``BackendModel.forward``: object, object_constrained, pred_amplitude."""
    patches = predict(config, weights, network_input(batch), batch.estimate)
    rel = np.asarray(batch.rel_offsets, np.float64)
    constrained = _constrain(config, patches, rel, batch.canvas_size)
    scale = math.exp(float(np.asarray(weights["log_intensity_scale"], np.float64)))
    probe = _probe(config, weights)
    pred = far_field_amplitude(probe * constrained) * scale
    return {"object": patches, "object_constrained": constrained, "pred_amplitude": pred}


def forward_scales(config: ModelConfig, weights: Mapping[str, np.ndarray], batch: Batch,
                   ref: Mapping[str, np.ndarray]) -> tuple:
    """The scales a float32 model's ``object`` and ``object_constrained`` are compared to
    :func:`forward`'s ``ref`` at (tolerance ``network.forward``): each one's largest magnitude;
    with each pattern's own estimate (``backprop_estimate``, ``estimate_scope="pattern"``) and
    ``estimate_amplitude="input"`` also, per element, ``|O| max|E| / |E|`` (``max`` over the
    pattern), carried through the overlap constraint. The model computes ``E`` in float32, and
    ``arg E``, which the phase adds, is then off by ``E``'s absolute round-off (a fraction of
    the pattern's ``max |E|``) over ``|E|``: where ``|E|`` is small a large angle, at the
    head's full amplitude (with ``"scale"`` the amplitude ``|E| a`` cancels the ratio; a
    given scan estimate is the same float32 numbers in both)."""
    obj, con = np.asarray(ref["object"]), np.asarray(ref["object_constrained"])
    top_obj = max(float(np.abs(obj).max()), 1e-3)
    top_con = max(top_obj, float(np.abs(con).max()))
    if not (config.backprop_estimate and config.estimate_amplitude == "input"
            and config.estimate_scope == "pattern"):
        return top_obj, top_con
    scale = math.exp(float(np.asarray(weights["log_intensity_scale"], np.float64)))
    magnitude = np.abs(backprop_estimate(network_input(batch) / scale, _probe(config, weights)))
    peak = magnitude.max(axis=(-2, -1), keepdims=True)
    budget = np.abs(obj) * peak / np.maximum(magnitude, np.finfo(np.float64).tiny)
    # the constraint averages patches with non-negative weights: it carries a bound to a bound
    carried = np.abs(_constrain(config, budget.astype(np.complex128),
                                np.asarray(batch.rel_offsets, np.float64), batch.canvas_size))
    return top_obj + budget, top_con + carried


def losses(config: ModelConfig, weights: Mapping[str, np.ndarray], batch: Batch,
           settings: LossSettings) -> dict[str, float]:
    """The reference of ``BackendModel.losses`` (:func:`ptycho.physics.total_loss`)."""
    out = forward(config, weights, batch)
    return total_loss(out["pred_amplitude"], np.asarray(batch.diffraction, np.float64),
                      out["object"], out["object_constrained"], settings, batch.mask)


def loss_scales(config: ModelConfig, weights: Mapping[str, np.ndarray], batch: Batch,
                settings: LossSettings) -> dict[str, float]:
    """The magnitude each loss term's float32 error is relative to (tolerance scale 'given').

    nll: mean of ``I + k`` (the photon counts whose difference it sums); mae: mean of
    ``pred + obs``; realspace: mean of ``|p|^2 + |p'|^2``; total: the weighted sum.
    """
    out = forward(config, weights, batch)
    pred, obs = out["pred_amplitude"], np.asarray(batch.diffraction, np.float64)
    s = {"nll": masked_mean(pred ** 2 + obs ** 2, batch.mask),
         "mae": masked_mean(pred + obs, batch.mask),
         "realspace": float(np.mean(np.abs(out["object"]) ** 2
                                    + np.abs(out["object_constrained"]) ** 2))}
    s["total"] = settings.weighted_total(s)
    return s


def gradients(config: ModelConfig, weights: Mapping[str, np.ndarray], batch: Batch,
              settings: LossSettings, magnitudes: bool = False):
    """Loss terms and exact float64 gradients of ``total`` for every trainable entry.

    Returns ``(terms, grads)``; ``grads`` follows :func:`ptycho.weights.trainable_names`
    (the probe's gradient is complex, ``d/d real + 1j d/d imag``). With ``magnitudes``,
    returns ``(terms, grads, mags)`` where ``mags[name]`` (real, the entry's shape) is the
    sum of the magnitudes of the terms that make up that gradient (the backward pass on
    absolute values, from the object patches' gradient down; for the probe and the intensity
    scale, their final sums): the scale of its float32 round-off, which can exceed the
    gradient itself by orders of magnitude when its terms cancel (a bias, the phase of a
    patch whose global phase the far field cannot see).
    """
    n = config.N
    lis = float(np.asarray(weights["log_intensity_scale"], np.float64))
    scale = math.exp(lis)
    obs = np.asarray(batch.diffraction, np.float64)
    x = network_input(batch) / scale
    estimate = None if batch.estimate is None else np.asarray(batch.estimate, np.complex128) / scale
    tape = _Tape()
    amp, phase = _network(config, weights, x, tape, estimate)
    probe = _probe(config, weights)
    match = _IntensityMatch(config, amp, x, probe)
    amp_scaled = amp * match.scale
    e = np.exp(1j * phase)
    patches = np.transpose(amp_scaled * e, (0, 3, 1, 2))
    rel = np.asarray(batch.rel_offsets, np.float64)
    m = int(batch.canvas_size)
    constrained = _constrain(config, patches, rel, m)
    psi = probe * constrained
    f = np.fft.fftshift(np.fft.fft2(psi, axes=(-2, -1), norm="ortho"), axes=(-2, -1))
    a0 = np.abs(f)
    pred = a0 * scale
    terms = total_loss(pred, obs, patches, constrained, settings, batch.mask)
    # d total / d pred: the pixel losses are means over the measured pixels
    measured = (np.ones(pred.shape, bool) if batch.mask is None
                else np.broadcast_to(np.asarray(batch.mask) != 0, pred.shape))
    cnt = np.count_nonzero(measured)
    obs = np.where(measured, obs, 0.0)
    i_pred, k = pred ** 2, obs ** 2
    g_pred = settings.nll_weight * (1.0 - k / (i_pred + settings.epsilon)) * 2 * pred / cnt
    g_pred = g_pred + settings.mae_weight * np.sign(pred - obs) / cnt
    g_pred = np.where(measured, g_pred, 0.0)
    g_lis = float(np.sum(g_pred * pred))                     # pred = a0 * exp(lis)
    m_lis = float(np.sum(np.abs(g_pred * pred)))
    g_a0 = g_pred * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(a0 > 0, f / np.where(a0 > 0, a0, 1.0), 0.0)
    g_f = g_a0 * unit
    g_psi = np.fft.ifft2(np.fft.ifftshift(g_f, axes=(-2, -1)), axes=(-2, -1), norm="ortho")
    g_constrained = np.conj(probe) * g_psi
    g_probe = np.sum(np.conj(constrained) * g_psi, axis=(0, 1))
    m_probe = np.sum(np.abs(constrained) * np.abs(g_psi), axis=(0, 1))
    if config.probe_mask:
        g_probe = g_probe * probe_disk_mask(n)
        m_probe = m_probe * probe_disk_mask(n)
    d = patches - constrained
    g_patches = settings.realspace_weight * 2 * d / d.size
    g_constrained = g_constrained - settings.realspace_weight * 2 * d / d.size
    if config.gridsize > 1 and config.object_big:
        g_patches = g_patches + _constrain(config, g_constrained, rel, m)   # self-adjoint
    else:
        g_patches = g_patches + g_constrained
    g_obj = np.transpose(g_patches, (0, 2, 3, 1))
    g_amp, g_x_match, g_probe_match = match.backward(np.real(np.conj(g_obj) * e))
    g_phase = np.real(np.conj(g_obj) * 1j * amp_scaled * e)
    grads, g_x, g_estimate = _network_backward(config, weights, tape, g_amp, g_phase)
    g_x = g_x + g_x_match
    g_lis += float(np.sum(g_x * -x))                        # x = obs * exp(-lis)
    if g_estimate is not None:                              # E / exp(lis) likewise
        g_lis -= float(np.sum(np.real(np.conj(g_estimate) * estimate)))
    grads["probe"] = g_probe + _masked_probe(config, g_probe_match)
    grads["log_intensity_scale"] = np.asarray(g_lis)
    names = trainable_names(config)
    if not magnitudes:
        return terms, {name: grads[name] for name in names}
    # magnitudes at the heads: |g_obj| bounds both parts (the phase gradient cancels when
    # the far field cannot see a patch's global phase)
    m_amp, m_x_match, m_probe_match = match.backward(np.abs(g_obj), absolute=True)
    mags, m_x, m_estimate = _network_backward(config, weights, tape, g_amp, g_phase,
                                              m_amp, np.abs(g_obj) * np.abs(amp_scaled))
    m_x = m_x + m_x_match
    if m_estimate is not None:
        m_lis += float(np.sum(m_estimate * np.abs(estimate)))
    mags["probe"] = m_probe + _masked_probe(config, m_probe_match)
    mags["log_intensity_scale"] = np.asarray(m_lis + float(np.sum(m_x * np.abs(x))))
    return terms, {name: grads[name] for name in names}, {name: mags[name] for name in names}


def _masked_probe(config: ModelConfig, g_probe):
    """A gradient with respect to the effective probe, taken back to the raw probe."""
    return g_probe * probe_disk_mask(config.N) if config.probe_mask else g_probe


def perturb(weights: Mapping[str, np.ndarray], name: str, direction: np.ndarray,
            h: float) -> dict[str, np.ndarray]:
    """A float64 copy of ``weights`` with ``name`` moved by ``h * direction``."""
    out = {k: np.asarray(v, np.complex128 if np.iscomplexobj(v) else np.float64)
           for k, v in weights.items()}
    out[name] = out[name] + h * direction
    return out


def directional_derivative(config: ModelConfig, weights: Mapping[str, np.ndarray], batch: Batch,
                           settings: LossSettings, name: str, direction: np.ndarray,
                           h: float = 1e-5) -> float:
    """Central finite difference of the float64 total loss along ``direction`` of entry ``name``.

    For a complex entry the result equals ``Re(sum(conj(g) * direction))`` with ``g`` the
    gradient in the ``d/d real + 1j d/d imag`` convention.
    """
    plus = losses(config, perturb(weights, name, direction, h), batch, settings)["total"]
    minus = losses(config, perturb(weights, name, direction, -h), batch, settings)["total"]
    return (plus - minus) / (2 * h)


# -- Adam (Keras 3 form, see docs/conventions.md) ------------------------------------------------
@dataclass
class AdamState:
    """Adam moments in float64, per trainable entry; ``t`` counts completed steps."""

    beta1: float
    beta2: float
    epsilon: float
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    t: int = 0

    @classmethod
    def from_config(cls, training: TrainingConfig) -> "AdamState":
        return cls(training.adam_beta1, training.adam_beta2, training.adam_epsilon)


def _split(x: np.ndarray) -> np.ndarray:
    """Complex -> (2, ...) real parts (the probe is optimised as two real tensors)."""
    x = np.asarray(x)
    return np.stack([x.real, x.imag]).astype(np.float64) if np.iscomplexobj(x) else x.astype(np.float64)


def _join(x: np.ndarray, complex_: bool) -> np.ndarray:
    return x[0] + 1j * x[1] if complex_ else x


def adam_step(state: AdamState, weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
              learning_rate: float) -> dict[str, np.ndarray]:
    """One Adam step in float64 on every entry of ``grads``; returns the new weights (float64).

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``alpha = lr sqrt(1-b2^t) / (1-b1^t)``,
    ``w -= alpha m / (sqrt(v) + eps)``; the probe's real and imaginary parts are separate
    parameters. Entries not in ``grads`` are returned unchanged.
    """
    state.t += 1
    t, b1, b2 = state.t, state.beta1, state.beta2
    alpha = learning_rate * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    out = {k: np.asarray(v, np.complex128 if np.iscomplexobj(v) else np.float64)
           for k, v in weights.items()}
    for name, g in grads.items():
        complex_ = np.iscomplexobj(weights[name])
        g2 = _split(g)
        m = state.m.get(name, np.zeros_like(g2))
        v = state.v.get(name, np.zeros_like(g2))
        m = b1 * m + (1 - b1) * g2
        v = b2 * v + (1 - b2) * g2 ** 2
        state.m[name], state.v[name] = m, v
        out[name] = _join(_split(weights[name]) - alpha * m / (np.sqrt(v) + state.epsilon), complex_)
    return out


def adam_sensitivity(grads: list[Mapping[str, np.ndarray]], noise: list[Mapping[str, np.ndarray]],
                     training: TrainingConfig, learning_rate: float,
                     max_patterns: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """How far k Adam steps can move each weight when each step's gradient is off by ``noise``.

    Replays Adam (fresh moments) on the gradient sequence ``grads`` (one mapping per step)
    and on ``grads[j] + s_j * noise[j]`` for sign patterns ``s`` in {-1, +1}^k (all of them
    for k <= 6, else ``max_patterns`` random ones), holding the gradients otherwise fixed;
    returns, per entry, the largest deviation of the total displacement (the same shape as
    the entry; complex entries deviate in real and imaginary parts, combined by modulus).

    This is the part of the weights' disagreement after k steps that the gradients'
    tolerance explains: Adam divides each gradient by its running RMS, so where a gradient is
    within its noise of zero, or where the first moment cancels across steps, a tiny gradient
    difference moves the weight by up to ~lr per step.
    """
    k = len(grads)
    if k == 0:
        return {}
    if k <= 6:
        import itertools
        patterns = [np.array(p, dtype=np.float64) for p in itertools.product((-1.0, 1.0), repeat=k)]
    else:
        rng = np.random.default_rng(seed)
        patterns = [rng.choice((-1.0, 1.0), size=k) for _ in range(max_patterns)]

    def displacement(signs) -> dict[str, np.ndarray]:
        state = AdamState.from_config(training)
        zero = {n: np.zeros(np.shape(g), np.complex128 if np.iscomplexobj(g) else np.float64)
                for n, g in grads[0].items()}
        w = dict(zero)
        for j in range(k):
            step = {n: np.asarray(grads[j][n]) + (0 if signs is None else signs[j]) * noise[j][n]
                    for n in grads[j]}
            w = adam_step(state, w, step, learning_rate)
        return w

    base = displacement(None)
    dev = {n: np.zeros(np.shape(v), np.float64) for n, v in base.items()}
    for p in patterns:
        other = displacement(p)
        for n in dev:
            dev[n] = np.maximum(dev[n], np.abs(other[n] - base[n]))
    return dev


# -- physics refinement (the object, optionally the probe, against the data) --------------------
def _extraction(positions: np.ndarray, n: int, shape: tuple[int, int]):
    """Bilinear patch extraction at scan positions and its adjoint, on an object of ``shape``.

    ``extract(obj) -> (B, N, N)``: ``patch[r, c] = obj(y - N//2 + r, x - N//2 + c)``, zero
    outside; ``adjoint(g (B, N, N)) -> (H, W)``: the splat of ``g`` back onto the object.
    """
    h, w = shape
    top = np.asarray(positions, np.float64)[:, ::-1] - n // 2
    i0 = np.floor(top).astype(np.int64)
    fy, fx = [(top - i0)[:, k, None, None] for k in (0, 1)]
    r = i0[:, 0, None] + np.arange(n + 1)
    c = i0[:, 1, None] + np.arange(n + 1)
    inside = ((r >= 0) & (r < h))[:, :, None] & ((c >= 0) & (c < w))[:, None, :]
    rr = np.broadcast_to(np.clip(r, 0, h - 1)[:, :, None], inside.shape)
    cc = np.broadcast_to(np.clip(c, 0, w - 1)[:, None, :], inside.shape)
    coef = {(0, 0): (1 - fy) * (1 - fx), (0, 1): (1 - fy) * fx, (1, 0): fy * (1 - fx),
            (1, 1): fy * fx}

    def extract(obj: np.ndarray) -> np.ndarray:
        win = np.where(inside, obj[rr, cc], 0.0)
        return sum(k * win[:, a:a + n, b:b + n] for (a, b), k in coef.items())

    def adjoint(g: np.ndarray) -> np.ndarray:
        g_win = np.zeros(inside.shape, np.result_type(g, np.float64))
        for (a, b), k in coef.items():
            g_win[:, a:a + n, b:b + n] += k * g
        out = np.zeros(shape, g_win.dtype)
        np.add.at(out, (rr[inside], cc[inside]), g_win[inside])
        return out

    return extract, adjoint


def refine_gradients(obj: np.ndarray, probe: np.ndarray, log_intensity_scale: float,
                     positions: np.ndarray, diffraction: np.ndarray, eps: float,
                     mask: Optional[np.ndarray] = None, probe_mask: bool = False) -> dict:
    """Refinement's loss and its exact float64 gradients, derived by hand.

    For each pattern at ``(x, y)``: ``patch = bilinear(obj)`` at rows ``y - N//2 + r``,
    columns ``x - N//2 + c`` (zero outside); ``pred = |fftshift(fft2(P_eff patch))| / N *
    exp(log_intensity_scale)``; ``nll`` = the Poisson NLL over the measured pixels
    (:func:`ptycho.physics.poisson_nll`). Returns ``nll``, ``object`` and ``probe`` (the raw
    probe's), gradients as ``d/d real + 1j d/d imag``. The backward pass: ``d nll / d pred``
    per pixel, the far field's adjoint (unit phase, inverse orthonormal FFT), ``conj(P)`` for
    the patch and ``conj(patch)`` for the probe, and bilinear extraction's adjoint (a splat).
    """
    obj = np.asarray(obj, np.complex128)
    probe_raw = np.asarray(probe, np.complex128)
    n = probe_raw.shape[-1]
    obs = np.asarray(diffraction, np.float64)
    extract, adjoint = _extraction(positions, n, obj.shape)
    patch = extract(obj)
    p_eff = effective_probe(probe_raw, probe_mask)
    scale = math.exp(float(log_intensity_scale))
    f = np.fft.fftshift(np.fft.fft2(p_eff * patch, axes=(-2, -1), norm="ortho"), axes=(-2, -1))
    a0 = np.abs(f)
    pred = a0 * scale
    measured = (np.ones(pred.shape, bool) if mask is None
                else np.broadcast_to(np.asarray(mask) != 0, pred.shape))
    obs = np.where(measured, obs, 0.0)
    nll = poisson_nll(pred, obs, eps, measured)
    g_pred = np.where(measured, (1.0 - obs ** 2 / (pred ** 2 + eps)) * 2 * pred, 0.0)
    g_pred /= np.count_nonzero(measured)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(a0 > 0, f / np.where(a0 > 0, a0, 1.0), 0.0)
    g_psi = np.fft.ifft2(np.fft.ifftshift(g_pred * scale * unit, axes=(-2, -1)), axes=(-2, -1),
                         norm="ortho")
    g_probe = np.sum(np.conj(patch) * g_psi, axis=0)
    if probe_mask:
        g_probe = g_probe * probe_disk_mask(n)
    return {"nll": nll, "object": adjoint(np.conj(p_eff) * g_psi), "probe": g_probe,
            "count": int(np.count_nonzero(measured))}


class ReferenceRefiner:
    """:class:`backends.common.refine.Refiner` in float64 on :func:`refine_gradients` (the
    oracle of the refinement parity checks, and the stand-in backend's refiner): the same
    preconditioned step, ``O -= step * count * g / (4 s^2 (illumination + reg * max))`` with
    the illumination ``E^T(|P_eff|^2)`` and, for the probe, ``sum_k |patch_k|^2``."""

    def __init__(self, obj, probe, log_intensity_scale: float, probe_mask: bool = False, *,
                 refine_probe: bool = False, step: float, regularisation: float,
                 epsilon: float = 1e-6):
        self.w = {"object": np.asarray(obj, np.complex128), "probe": np.asarray(probe, np.complex128)}
        self.log_intensity_scale, self.probe_mask = float(log_intensity_scale), probe_mask
        self.refine_probe, self.epsilon = refine_probe, float(epsilon)
        self.step_size, self.regularisation = float(step), float(regularisation)

    def gradients(self, positions, diffraction, mask=None) -> dict:
        out = refine_gradients(self.w["object"], self.w["probe"], self.log_intensity_scale,
                               positions, diffraction, self.epsilon, mask, self.probe_mask)
        if not self.refine_probe:
            del out["probe"]
        return out

    def _precondition(self, g, weight, count):
        curvature = 4.0 * math.exp(2.0 * self.log_intensity_scale)
        floor = self.regularisation * max(float(np.max(weight)), 1e-30)
        return self.step_size * count * g / (curvature * (weight + floor))

    def step(self, positions, diffraction, mask=None) -> float:
        g = self.gradients(positions, diffraction, mask)
        if not math.isfinite(g["nll"]):
            return g["nll"]
        n = self.w["probe"].shape[-1]
        extract, adjoint = _extraction(positions, n, self.w["object"].shape)
        p_eff = effective_probe(self.w["probe"], self.probe_mask)
        illumination = adjoint(np.broadcast_to(np.abs(p_eff) ** 2, (len(positions), n, n)))
        update = {"object": self._precondition(g["object"], illumination, g["count"])}
        if self.refine_probe:
            lit = np.sum(np.abs(extract(self.w["object"])) ** 2, axis=0)
            update["probe"] = self._precondition(g["probe"], lit, g["count"])
        for name, delta in update.items():
            self.w[name] = self.w[name] - delta
        return g["nll"]

    def set_object(self, obj) -> None:
        self.w["object"] = np.asarray(obj, np.complex128)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w["object"].copy(), self.w["probe"].copy()


def as_float32(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast a float64 weight mapping back to the canonical float32 / complex64."""
    return {k: np.asarray(v).astype(np.complex64 if np.iscomplexobj(v) else np.float32)
            for k, v in weights.items()}


class ReferenceModel:
    """The float64 reference as a model the core's driver can train (:func:`ptycho.training.fit`).

    Holds float64 (complex128) weights and an :class:`AdamState`; implements the parts of
    :class:`backends.protocol.BackendModel` that training and reconstruction use. With
    ``store_dtype="float32"`` the weights are rounded to float32 after every step and the
    gradients before it, as a float32 backend would store them (see :mod:`parity.fake`).
    """

    backend_name = "reference"

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray],
                 store_dtype: str = "float64"):
        from ptycho.weights import validate_weights

        validate_weights(config, as_float32(weights))
        self.config = config
        self.store_dtype = store_dtype
        self._w = self._store(weights)
        self._adam: Optional[AdamState] = None
        self._settings: Optional[LossSettings] = None
        self._lr: Optional[float] = None

    def _store(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.store_dtype == "float32":
            return as_float32(weights)
        return {k: np.array(v, dtype=np.complex128 if np.iscomplexobj(v) else np.float64)
                for k, v in weights.items()}

    def get_weights(self, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        return {k: self._w[k].copy() for k in select_names(list(self._w), names)}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        from ptycho.weights import validate_weights

        validate_weights(self.config, as_float32(weights))
        self._w = self._store(weights)

    def predict(self, diffraction: np.ndarray, batch_size: int = 64,
                precision: str = "float32", estimate: Optional[np.ndarray] = None
                ) -> np.ndarray:
        d = np.asarray(diffraction)
        parts = [predict(self.config, self._w, d[i:i + batch_size],
                         None if estimate is None else estimate[i:i + batch_size])
                 for i in range(0, len(d), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(d.shape, np.complex128)

    def forward(self, batch: Batch) -> dict[str, np.ndarray]:
        return forward(self.config, self._w, batch)

    def constrain(self, patches: np.ndarray, rel_offsets: np.ndarray,
                  canvas_size: int) -> np.ndarray:
        return _constrain(self.config, np.asarray(patches, np.complex128),
                          np.asarray(rel_offsets, np.float64), int(canvas_size))

    def losses(self, batch: Batch, settings: LossSettings) -> dict[str, float]:
        return losses(self.config, self._w, batch, settings)

    def gradients(self, batch: Batch, settings: LossSettings) -> dict[str, np.ndarray]:
        return gradients(self.config, self._w, batch, settings)[1]

    def refiner(self, obj: np.ndarray, *, refine_probe: bool = False, step: Optional[float] = None,
                regularisation: Optional[float] = None, epsilon: float = 1e-6) -> ReferenceRefiner:
        """Refinement of ``obj`` with this model's probe and scale (the backends' defaults)."""
        from backends.common import refine as shared

        return ReferenceRefiner(
            obj, self._w["probe"], float(self._w["log_intensity_scale"]), self.config.probe_mask,
            refine_probe=refine_probe, step=shared.STEP if step is None else step,
            regularisation=shared.REGULARISATION if regularisation is None else regularisation,
            epsilon=epsilon)

    def configure_training(self, training: TrainingConfig) -> None:
        self._adam = AdamState.from_config(training)
        self._settings = LossSettings.from_config(training)

    def set_learning_rate(self, learning_rate: float) -> None:
        if self._adam is None:
            raise RuntimeError("set_learning_rate before configure_training")
        self._lr = float(learning_rate)

    def train_step(self, batch: Batch) -> dict[str, float]:
        if self._adam is None or self._lr is None:
            raise RuntimeError("train_step before configure_training / set_learning_rate")
        terms, grads = gradients(self.config, self._w, batch, self._settings)
        if self.store_dtype == "float32":
            grads = as_float32(grads)
        self._w = self._store(adam_step(self._adam, self._w, grads, self._lr))
        return terms


__all__ = [
    "AdamState", "ReferenceModel", "ReferenceRefiner", "activation", "adam_sensitivity", "adam_step", "as_float32",
    "conv2d",
    "directional_derivative", "forward", "gradients", "loss_scales", "losses",
    "network_patches", "perturb", "predict", "refine_gradients",
]
