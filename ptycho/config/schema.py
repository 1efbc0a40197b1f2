"""Typed, frozen configuration dataclasses, validated on construction.

Every invalid value raises :class:`ptycho.errors.ConfigError` naming the field and the
allowed range. The dataclasses are immutable; use :func:`dataclasses.replace` to derive a
changed copy (it re-runs validation).

>>> cfg = TrainingConfig(model=ModelConfig(N=32, gridsize=2), nepochs=5)
>>> cfg.model.N, cfg.model.n_channels
(32, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from ptycho.errors import ConfigError

AMP_ACTIVATIONS = ("sigmoid", "swish", "softplus", "relu")
#: The amplitude activations whose output is positive everywhere, which the intensity match
#: (ModelConfig.match_intensity) divides by: swish goes negative and relu to exactly zero,
#: where the match's scale is undefined or its gradient ill-conditioned (measured: swish
#: gradients off by 1e-2 of their scale in float32).
POSITIVE_AMP_ACTIVATIONS = ("sigmoid", "softplus")
LR_SCHEDULES = ("constant", "exponential", "cosine")
TRACKERS = (None, "mlflow")
PRECISIONS = ("float32", "bfloat16")
#: ModelConfig.estimate_scope: the back-propagated estimate of one pattern, or of the scan.
ESTIMATE_SCOPES = ("pattern", "scan")
#: ModelConfig.estimate_amplitude: the amplitude head gives the amplitude itself, its
#: estimate only an input; or it scales the estimate's magnitude.
ESTIMATE_AMPLITUDES = ("input", "scale")

#: Number of 2x down-sampling levels of the encoder (and up-sampling levels of each decoder).
N_LEVELS = 3


def _check_int(owner: str, name: str, value: Any, lo: int, hi: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{owner}.{name} must be in {rng}, got {value}")


def _check_float(owner: str, name: str, value: Any, lo: float, hi: float,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{owner}.{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = (not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi))
    if bad:
        rng = ("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]")
        raise ConfigError(f"{owner}.{name} must be a finite number in {rng}, got {value!r}")


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}.{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_choice(owner: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")


def _check_backend_name(owner: str, value: Any) -> None:
    """A backend name is checked for form here; which names exist is the backend registry's
    business (``backends.registry``, a layer above this one), checked where a backend is
    selected, with this field named in the error."""
    if value is not None and (not isinstance(value, str) or not value.strip()
                              or not value.replace("_", "").replace("-", "").isalnum()):
        raise ConfigError(f"{owner}.backend must be a backend name (letters, digits, '-', '_') "
                          f"or None, got {value!r}")


def _check_opt_str(owner: str, name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{owner}.{name} must be a non-empty string or None, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network and physics model.

    N: side of a diffraction pattern / object patch in pixels (multiple of 8, 16..512).
    gridsize: patterns per group along each axis; a group holds ``gridsize**2`` patterns.
    n_filters_scale, base_filters: the encoder widths are
        ``base_filters * n_filters_scale * (1, 2, 4)``; decoders mirror them.
    amp_activation: activation of the amplitude head.
    object_big: for gridsize > 1, enforce the overlap constraint (reassemble the group's
        patches on one canvas, average, re-extract) before predicting diffraction.
    pad_object: restrict the object support to the central N/2 x N/2 region.
    probe_big: with pad_object, predict the border region with a separate head instead of
        zero-filling it.
    central_decoder: with pad_object, the decoders stop at N/2, where the main heads give
        the central N/2 x N/2 square pixel for pixel (as PtychoPINN's network does); the
        border heads see the last decoder features up-sampled x2. 1/1.6 of the full
        decoder's FLOPs (which goes up to N and cuts the central square from its full-size
        output), for a somewhat weaker network alone at N=32 (benchmarks/README.md, "At the
        peer's size"). No effect without pad_object.
    probe_mask: multiply the probe by a disk of radius N/4 centred in the patch.
    probe_scale: the probe is normalised so that ``sum |P|^2 = (probe_scale * N / 2) ** 2``
        (see :func:`ptycho.data.scaling.normalise_probe`); dimensionless.
    probe_trainable, intensity_scale_trainable: whether those parameters are optimised.
    per_pattern_network: for gridsize > 1, the network maps each pattern of a group to its
        own patch (one input channel, one output channel, the same weights for every member)
        instead of the group's C patterns to C patches at once; the group's members are then
        coupled only through the overlap constraint, so each patch is a function of its own
        pattern, as at inference on any scan. (In training the network runs C times per
        group; ``reconstruct`` runs it once per distinct pattern and shares the patch.)
    match_intensity: (needs a positive ``amp_activation``: sigmoid or softplus) scale each object patch so that the intensity it sends through the
        probe equals its pattern's measured total, ``sum |P O|^2 = sum x^2`` with ``x`` the
        normalised amplitudes (Parseval: the far field keeps the total). The scale is the
        one thing a single pattern measures exactly; the network then learns only the shape
        of the amplitude, not its level (see ``backends.common.network.object_patches``).
    backprop_estimate: the network starts from the object each pattern gives when
        back-propagated with the probe's far-field phase
        (:func:`ptycho.physics.model.backprop_estimate`, ``E``): it sees ``E``'s real and
        imaginary parts beside the pattern (three input channels per pattern instead of one)
        and its heads correct it, phase ``arg E + pi tanh(h)``, amplitude as
        ``estimate_amplitude`` says (before the intensity match). ``E`` is in real space,
        pixel for pixel where the object is, so the network refines an image instead of
        learning a Fourier inversion;
        on held-out natural images it scores far above the plain network, on the demo's
        random fields far below (benchmarks/README.md, "The back-propagated estimate").
        Needs ``probe_trainable=False``.
    estimate_scope: with ``backprop_estimate``, which estimate the network starts from:
        ``"pattern"`` its own pattern's, computed inside the model; ``"scan"`` the estimate
        of every pattern of the scan stitched into one object and cut out at this pattern's
        position (:mod:`ptycho.scan_estimate`), where neighbours' twin images partly cancel.
        With ``"scan"`` the estimate is an input of the model (``Batch.estimate``,
        ``predict(..., estimate=)``) that the workflows compute from the whole scan.
    estimate_amplitude: with ``backprop_estimate``, what the amplitude head gives:
        ``"input"`` the amplitude itself, ``act(h)``, the estimate being only an input;
        ``"scale"`` a factor on the estimate's magnitude, ``|E| act(h)``. The phase is
        ``arg E + pi tanh(h)`` either way. With ``"scale"`` the amplitude cannot rise above
        ``|E|`` times the patch's level, so where the estimate's twin images darken a pixel
        it stays dark: trained on four objects it fitted their amplitudes to SSIM 0.47-0.80
        against 0.69-0.96 with ``"input"``, and on held-out natural images carried the
        estimate's pixel-scale grain into the object (benchmarks/README.md, "The amplitude
        head"). Bundles written before this field existed used ``"scale"``.
    skip_connections: each decoder level also sees the encoder's features of its own size
        (a U-Net): ``{branch}.dec{j}.conv1`` takes the up-sampled features and, concatenated
        after them, the output of the encoder level at that size (``enc{L-1-j}``, before
        its pooling). Without them every detail the heads give has passed through the
        N/8 x N/8 bottleneck: on held-out natural images (gridsize 1, the back-propagated
        estimate, eight training objects) the network alone lifts from amplitude / phase
        SSIM 0.606-0.688 / 0.727-0.839 to 0.729-0.767 / 0.763-0.944 in both backends, at
        ~1.3x the parameters and 1.2-2x the network's time (benchmarks/README.md, "Skip
        connections"). Opt-in; bundles written before this field existed had none.
    """

    N: int = 64
    gridsize: int = 1
    n_filters_scale: int = 2
    base_filters: int = 16
    amp_activation: str = "sigmoid"
    object_big: bool = True
    probe_big: bool = True
    probe_mask: bool = False
    pad_object: bool = True
    central_decoder: bool = False
    probe_scale: float = 4.0
    probe_trainable: bool = False
    intensity_scale_trainable: bool = True
    per_pattern_network: bool = True
    match_intensity: bool = True
    backprop_estimate: bool = False
    estimate_scope: str = "pattern"
    estimate_amplitude: str = "input"
    skip_connections: bool = False

    def __post_init__(self) -> None:
        o = "ModelConfig"
        _check_int(o, "N", self.N, 16, 512)
        if self.N % (2 ** N_LEVELS):
            raise ConfigError(f"{o}.N must be a multiple of {2 ** N_LEVELS}, got {self.N}")
        _check_int(o, "gridsize", self.gridsize, 1, 4)
        _check_int(o, "n_filters_scale", self.n_filters_scale, 1, 16)
        _check_int(o, "base_filters", self.base_filters, 1, 256)
        _check_choice(o, "amp_activation", self.amp_activation, AMP_ACTIVATIONS)
        for b in ("object_big", "probe_big", "probe_mask", "pad_object", "central_decoder",
                  "probe_trainable", "intensity_scale_trainable", "per_pattern_network",
                  "match_intensity", "backprop_estimate", "skip_connections"):
            _check_bool(o, b, getattr(self, b))
        _check_float(o, "probe_scale", self.probe_scale, 0.0, 1e6, lo_open=True)
        _check_choice(o, "estimate_scope", self.estimate_scope, ESTIMATE_SCOPES)
        _check_choice(o, "estimate_amplitude", self.estimate_amplitude, ESTIMATE_AMPLITUDES)
        if self.estimate_scope != "pattern" and not self.backprop_estimate:
            raise ConfigError(f"{o}.estimate_scope={self.estimate_scope!r} needs "
                              "backprop_estimate=True (it says which estimate the network "
                              "starts from)")
        if self.estimate_amplitude != "input" and not self.backprop_estimate:
            raise ConfigError(f"{o}.estimate_amplitude={self.estimate_amplitude!r} needs "
                              "backprop_estimate=True (it says how the amplitude head uses "
                              "the estimate)")
        if self.match_intensity and self.amp_activation not in POSITIVE_AMP_ACTIVATIONS:
            raise ConfigError(
                f"{o}.match_intensity needs a positive amplitude activation "
                f"{list(POSITIVE_AMP_ACTIVATIONS)}, got amp_activation={self.amp_activation!r} "
                "(its output can be negative or zero, where the match is undefined); "
                "set match_intensity=False to use it")
        if self.backprop_estimate and self.probe_trainable:
            raise ConfigError(
                f"{o}.backprop_estimate needs a fixed probe (probe_trainable=False): the "
                "estimate divides the back-propagated wave by the probe, a constant of the "
                "network's input")

    @property
    def n_channels(self) -> int:
        """Patterns per group, ``C = gridsize**2``."""
        return self.gridsize ** 2

    @property
    def network_channels(self) -> int:
        """Input (and head output) channels of one network pass: 1 with
        ``per_pattern_network``, else ``C``."""
        return 1 if self.per_pattern_network else self.n_channels

    @property
    def input_channels(self) -> int:
        """Input channels of one network pass: ``network_channels`` images, and with
        ``backprop_estimate`` their estimates' real and imaginary parts."""
        return self.network_channels * (3 if self.backprop_estimate else 1)

    @property
    def network_passes(self) -> int:
        """Network passes per group: ``C`` with ``per_pattern_network``, else 1."""
        return self.n_channels // self.network_channels

    @property
    def widths(self) -> tuple[int, ...]:
        """Encoder channel widths per level, shallow to deep."""
        w = self.base_filters * self.n_filters_scale
        return tuple(w * 2 ** i for i in range(N_LEVELS))


@dataclass(frozen=True)
class TrainingConfig:
    """Training: optimiser, schedule, losses, data grouping, and run settings.

    nphotons: mean total photon count per diffraction pattern; sets the intensity scale
        (:func:`ptycho.data.scaling.intensity_scale`).
    n_groups: number of groups drawn from the scan (None: one group per scan point).
    neighbor_count: K, the number of nearest neighbours a group of gridsize**2 is drawn from.
    lr_schedule: ``constant``; ``exponential`` (lr * lr_decay_rate**epoch); ``cosine``
        (from learning_rate to lr_min over nepochs).
    early_stopping_patience: stop after this many epochs without improvement of the
        monitored loss by more than early_stopping_min_delta (None: never stop early).
    average_epochs: the trained model's weights are the mean of the weights at the end of
        each of the last ``average_epochs`` epochs (stochastic weight averaging, Izmailov et
        al. 2018), from epoch ``nepochs - average_epochs`` on; 0: the last epoch's weights.
        At a constant learning rate one epoch's end is one draw from where Adam wanders
        (held-out SSIM moved by up to 0.046 from one epoch to the next); the mean of the
        draws is steadier (three trainings' mean SSIM 0.789-0.794 with 8 of 32 epochs against
        0.768-0.792; benchmarks/README.md). A run that stops before
        the last epoch (early stopping, Ctrl-C) averages the epochs it completed from there.
    nll_weight, mae_weight, realspace_weight: weights of the Poisson NLL, the amplitude MAE
        and the real-space overlap-consistency term of the total loss.
    loss_epsilon: added to the predicted intensity inside the log of the Poisson NLL
        (photon-count units).
    precision: of the network's convolutions in the training step: ``float32``, or
        ``bfloat16`` (mixed precision: every convolution, the heads' included, computes in
        bfloat16 from float32 weights; the heads' output, the physics, the loss, the
        weights' gradients and Adam are float32). With bfloat16 matrix units (Intel AMX,
        recent GPUs) it trains 2.4-2.9x faster with the same reconstructions
        (benchmarks/README.md); the gain depends on the hardware. Evaluation, inference and
        refinement run in float32 unless asked otherwise.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 16
    nepochs: int = 50
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    lr_decay_rate: float = 0.95
    lr_min: float = 0.0
    early_stopping_patience: Optional[int] = None
    early_stopping_min_delta: float = 0.0
    average_epochs: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-7
    nll_weight: float = 1.0
    mae_weight: float = 0.0
    realspace_weight: float = 0.0
    loss_epsilon: float = 1e-6
    nphotons: float = 1e9
    n_groups: Optional[int] = None
    neighbor_count: int = 4
    seed: int = 0
    train_data_file: Optional[str] = None
    test_data_file: Optional[str] = None
    output_dir: Optional[str] = None
    backend: Optional[str] = None
    tracking: Optional[str] = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        o = "TrainingConfig"
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"{o}.model must be a ModelConfig, got {type(self.model).__name__}")
        _check_int(o, "batch_size", self.batch_size, 1, 1 << 16)
        _check_int(o, "nepochs", self.nepochs, 1, 1 << 20)
        _check_float(o, "learning_rate", self.learning_rate, 0.0, 10.0, lo_open=True)
        _check_choice(o, "lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_float(o, "lr_decay_rate", self.lr_decay_rate, 0.0, 1.0, lo_open=True)
        _check_float(o, "lr_min", self.lr_min, 0.0, float(self.learning_rate))
        if self.early_stopping_patience is not None:
            _check_int(o, "early_stopping_patience", self.early_stopping_patience, 1)
        _check_float(o, "early_stopping_min_delta", self.early_stopping_min_delta, 0.0, 1e30)
        _check_int(o, "average_epochs", self.average_epochs, 0, self.nepochs)
        _check_float(o, "adam_beta1", self.adam_beta1, 0.0, 1.0, hi_open=True)
        _check_float(o, "adam_beta2", self.adam_beta2, 0.0, 1.0, hi_open=True)
        _check_float(o, "adam_epsilon", self.adam_epsilon, 0.0, 1.0, lo_open=True)
        for w in ("nll_weight", "mae_weight", "realspace_weight"):
            _check_float(o, w, getattr(self, w), 0.0, 1e6)
        if self.nll_weight == 0 and self.mae_weight == 0:
            raise ConfigError(f"{o}: at least one of nll_weight, mae_weight must be > 0")
        _check_float(o, "loss_epsilon", self.loss_epsilon, 0.0, 1.0, lo_open=True)
        _check_float(o, "nphotons", self.nphotons, 0.0, 1e15, lo_open=True)
        if self.n_groups is not None:
            _check_int(o, "n_groups", self.n_groups, 1)
        _check_int(o, "neighbor_count", self.neighbor_count, 1, 1024)
        if self.neighbor_count < self.model.n_channels:
            raise ConfigError(
                f"{o}.neighbor_count must be >= gridsize**2 = {self.model.n_channels}, "
                f"got {self.neighbor_count}")
        _check_int(o, "seed", self.seed, 0, 2 ** 32 - 1)
        for s in ("train_data_file", "test_data_file", "output_dir"):
            _check_opt_str(o, s, getattr(self, s))
        _check_backend_name(o, self.backend)
        _check_choice(o, "tracking", self.tracking, TRACKERS)
        _check_choice(o, "precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class InferenceConfig:
    """Inference with a trained model: where it is, which data, batch size, precision."""

    model: ModelConfig = field(default_factory=ModelConfig)
    model_path: Optional[str] = None
    test_data_file: Optional[str] = None
    batch_size: int = 64
    precision: str = "float32"
    nphotons: float = 1e9
    seed: int = 0
    output_dir: Optional[str] = None
    backend: Optional[str] = None

    def __post_init__(self) -> None:
        o = "InferenceConfig"
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"{o}.model must be a ModelConfig, got {type(self.model).__name__}")
        _check_int(o, "batch_size", self.batch_size, 1, 1 << 16)
        _check_choice(o, "precision", self.precision, PRECISIONS)
        _check_float(o, "nphotons", self.nphotons, 0.0, 1e15, lo_open=True)
        _check_int(o, "seed", self.seed, 0, 2 ** 32 - 1)
        for s in ("model_path", "test_data_file", "output_dir"):
            _check_opt_str(o, s, getattr(self, s))
        _check_backend_name(o, self.backend)


def field_names(cls: type) -> tuple[str, ...]:
    """The field names of a config dataclass, in declaration order."""
    return tuple(f.name for f in fields(cls))
