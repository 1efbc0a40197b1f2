"""The canonical weight specification of the network, and its seeded numpy initialiser.

One ordered mapping ``name -> (shape, dtype)`` per :class:`ptycho.config.ModelConfig`, in one
layout that both backends import and export: conv kernels ``(kh, kw, in, out)``, biases
``(out,)``; plus the non-network state, ``probe`` (N, N) complex64 and
``log_intensity_scale`` () float32.

Architecture (every conv is 3x3, stride 1, zero "same" padding of 1 on each side):

* encoder, level i = 0, 1, 2 with width ``w_i = widths[i]``:
  ``enc{i}.conv1`` (in -> w_i), relu, ``enc{i}.conv2`` (w_i -> w_i), relu, max-pool 2x2;
  the first input has ``config.input_channels`` channels: C = gridsize**2, or 1 with
  ``per_pattern_network`` (the network then runs once per pattern of a group); three times
  that with ``backprop_estimate`` (each pattern, then its estimate's real and imaginary parts).
* two decoders, ``amp`` and ``phase``, level j with widths ``(w_1, w_0, w_0)``:
  nearest up-sampling x2, ``{branch}.dec{j}.conv1``, relu, ``{branch}.dec{j}.conv2``, relu.
  With ``skip_connections`` the input of ``{branch}.dec{j}.conv1`` is the up-sampled
  features and, after them along the channels, the output of ``enc{2-j}.conv2`` (its relu,
  before the pooling): ``w_{2-j}`` more input channels.
  Three levels (back to N); two (to N/2, widths ``(w_1, w_0)``) with ``central_decoder``
  (:func:`has_central_decoder`).
* heads from each decoder's last features to ``network_channels`` channels: ``amp.head`` (then
  the configured amplitude activation) and ``phase.head`` (then ``pi * tanh``). With
  ``pad_object`` and ``probe_big`` also ``amp.border_head`` / ``phase.border_head``, whose
  output replaces the main heads' outside the central N/2 x N/2 square. With ``pad_object``
  alone the object is zero outside that square. With ``central_decoder`` the main heads'
  N/2 x N/2 output is that square (zero-padded to N), and the border heads run on the last
  features up-sampled x2 (nearest) to N. With ``match_intensity`` each patch's amplitude is then scaled
  (no weights) so that ``sum |P O|^2`` equals its pattern's ``sum x^2``.

>>> from ptycho.config import ModelConfig
>>> spec = weight_spec(ModelConfig(N=32, base_filters=2, n_filters_scale=1, probe_big=False))
>>> spec["enc0.conv1.kernel"].shape, spec["probe"].dtype
((3, 3, 1, 2), 'complex64')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from ptycho.config.schema import N_LEVELS, ModelConfig
from ptycho.errors import WeightsError

KERNEL_SIZE = 3


@dataclass(frozen=True)
class WeightEntry:
    """Shape and dtype (numpy dtype name) of one canonical entry."""

    shape: tuple[int, ...]
    dtype: str


def _conv_entries(name: str, cin: int, cout: int) -> list[tuple[str, WeightEntry]]:
    k = KERNEL_SIZE
    return [(f"{name}.kernel", WeightEntry((k, k, cin, cout), "float32")),
            (f"{name}.bias", WeightEntry((cout,), "float32"))]


def has_central_decoder(config: ModelConfig) -> bool:
    """Whether the decoders stop at N/2 (``central_decoder`` with ``pad_object``)."""
    return bool(config.pad_object and config.central_decoder)


def decoder_widths(config: ModelConfig) -> tuple[int, ...]:
    """Output widths of the decoder levels, deep to shallow: ``(w_1, w_0, w_0)``, or
    ``(w_1, w_0)`` with a central decoder (which stops at N/2)."""
    w = config.widths
    levels = N_LEVELS - 1 if has_central_decoder(config) else N_LEVELS
    return tuple(w[max(N_LEVELS - 2 - j, 0)] for j in range(levels))


def skip_level(j: int) -> int:
    """The encoder level whose features decoder level ``j`` also takes with
    ``skip_connections``: the one of its size."""
    return N_LEVELS - 1 - j


def skip_widths(config: ModelConfig) -> tuple[int, ...]:
    """Channels each decoder level's first conv takes beside the up-sampled features, deep to
    shallow: the widths of the encoder levels of its size with ``skip_connections``, else 0."""
    return tuple(config.widths[skip_level(j)] if config.skip_connections else 0
                 for j in range(len(decoder_widths(config))))


@dataclass(frozen=True)
class ConvLayer:
    """One 3x3 conv of the network: its canonical name, the side of the square it runs on,
    and its input and output channels."""

    name: str
    side: int
    cin: int
    cout: int

    @property
    def macs(self) -> int:
        """Multiply-adds of one pass (one image)."""
        return KERNEL_SIZE * KERNEL_SIZE * self.side * self.side * self.cin * self.cout


def conv_layers(config: ModelConfig) -> list[ConvLayer]:
    """Every conv of one network pass, in canonical order (the spec's, the cost models')."""
    layers: list[ConvLayer] = []
    c, cin = config.network_channels, config.input_channels
    side = config.N
    for i, w in enumerate(config.widths):
        layers += [ConvLayer(f"enc{i}.conv1", side, cin, w), ConvLayer(f"enc{i}.conv2", side, w, w)]
        cin, side = w, side // 2
    for branch in ("amp", "phase"):
        cin, side = config.widths[-1], config.N >> N_LEVELS
        for j, (w, skip) in enumerate(zip(decoder_widths(config), skip_widths(config))):
            side *= 2
            layers += [ConvLayer(f"{branch}.dec{j}.conv1", side, cin + skip, w),
                       ConvLayer(f"{branch}.dec{j}.conv2", side, w, w)]
            cin = w
        layers.append(ConvLayer(f"{branch}.head", side, cin, c))
        if has_border_heads(config):
            layers.append(ConvLayer(f"{branch}.border_head", config.N, cin, c))
    return layers


def network_weight_spec(config: ModelConfig) -> dict[str, WeightEntry]:
    """The network's entries only (kernels and biases), in canonical order."""
    entries: list[tuple[str, WeightEntry]] = []
    for layer in conv_layers(config):
        entries += _conv_entries(layer.name, layer.cin, layer.cout)
    return dict(entries)


def has_border_heads(config: ModelConfig) -> bool:
    """Whether the border branch exists (``pad_object`` and ``probe_big``)."""
    return bool(config.pad_object and config.probe_big)


def weight_spec(config: ModelConfig) -> dict[str, WeightEntry]:
    """Every canonical entry: the network's, then ``probe`` and ``log_intensity_scale``."""
    spec = network_weight_spec(config)
    spec["probe"] = WeightEntry((config.N, config.N), "complex64")
    spec["log_intensity_scale"] = WeightEntry((), "float32")
    return spec


def trainable_names(config: ModelConfig) -> list[str]:
    """Canonical names that the optimiser updates, in canonical order."""
    names = list(network_weight_spec(config))
    if config.probe_trainable:
        names.append("probe")
    if config.intensity_scale_trainable:
        names.append("log_intensity_scale")
    return names


def init_weights(config: ModelConfig, seed: int, probe: np.ndarray,
                 log_intensity_scale: float) -> dict[str, np.ndarray]:
    """Seeded initial weights, drawn once in numpy and loaded into whichever backend.

    Kernels: Glorot uniform, limit ``sqrt(6 / (fan_in + fan_out))`` with
    ``fan = kh * kw * channels``, drawn in canonical order from ``numpy.random.default_rng(seed)``.
    Biases: zero. ``probe`` (already normalised, see :mod:`ptycho.data.scaling`) and
    ``log_intensity_scale`` are passed through as complex64 / float32.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, entry in network_weight_spec(config).items():
        if name.endswith(".kernel"):
            kh, kw, cin, cout = entry.shape
            limit = np.sqrt(6.0 / (kh * kw * (cin + cout)))
            out[name] = rng.uniform(-limit, limit, size=entry.shape).astype(np.float32)
        else:
            out[name] = np.zeros(entry.shape, dtype=np.float32)
    out["probe"] = np.asarray(probe, dtype=np.complex64).copy()
    out["log_intensity_scale"] = np.asarray(log_intensity_scale, dtype=np.float32).reshape(())
    validate_weights(config, out)
    return out


def select_names(every: Sequence[str], names: Optional[Iterable[str]]) -> list[str]:
    """The entries a ``get_weights(names)`` call reads: ``names`` (in their order), or
    ``every`` when None; a name not in ``every`` is a :class:`WeightsError` naming it.

    >>> select_names(["a", "probe"], ["probe"])
    ['probe']
    """
    if names is None:
        return list(every)
    names, known = list(names), set(every)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise WeightsError(f"no weight entries named {unknown} in this model (it has "
                           f"{len(every)}: {list(every)[:2]} ... {list(every)[-2:]})")
    return names


def validate_weights(config: ModelConfig, weights: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`WeightsError` unless ``weights`` matches the spec exactly.

    Names every missing, extra or misshapen entry (and wrong dtypes, and non-finite values).
    """
    spec = weight_spec(config)
    missing = [k for k in spec if k not in weights]
    extra = [k for k in weights if k not in spec]
    problems = []
    if missing:
        problems.append(f"missing entries {missing}")
    if extra:
        problems.append(f"unexpected entries {extra}")
    for name, entry in spec.items():
        if name not in weights:
            continue
        arr = np.asarray(weights[name])
        if tuple(arr.shape) != entry.shape:
            problems.append(f"{name!r}: expected shape {entry.shape}, got {tuple(arr.shape)}")
        elif arr.dtype != np.dtype(entry.dtype):
            problems.append(f"{name!r}: expected dtype {entry.dtype}, got {arr.dtype}")
        elif not np.all(np.isfinite(arr)):
            problems.append(f"{name!r}: contains NaN or Inf")
    if problems:
        raise WeightsError("weights do not match the canonical spec for this config: "
                           + "; ".join(problems))
