"""Hypothesis strategies for the parity tests: configs and inputs (imports hypothesis).

Configs (:func:`model_configs`, :func:`training_configs`) cover N, gridsize 1-3, batch size,
n_filters_scale, the amplitude activation, object_big / probe_big / pad_object / probe_mask,
trainable probe and intensity scale, and nphotons over eight decades. Inputs
(:func:`complex_arrays`, :func:`probes`, :func:`offsets`, :func:`group_offsets`) are
float32 / complex64 with no subnormals (see :func:`flush_subnormals`), NaN or Inf; offsets are sub-pixel, integer and
negative. Sizes stay small (N 16 or 32, widths <= 8) so that one example runs in seconds.

Profiles: the standard ``ci`` / ``dev`` profiles (``tests/conftest.py``, chosen by
``HYPOTHESIS_PROFILE``) govern the cheap op-level tests. Whole-pipeline examples are costly
(each builds a model in both frameworks), so their example count comes from
:func:`parity_settings`: the derandomised ``parity-ci`` profile under ``ci`` (the default),
and ``parity-thorough`` (many random examples) under any other profile, e.g. ``dev``.

>>> from hypothesis import given
>>> @given(model_configs())
... def test(cfg):
...     assert cfg.N in (16, 32) and 1 <= cfg.gridsize <= 3
>>> test()
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptycho.config.schema import (AMP_ACTIVATIONS, ESTIMATE_AMPLITUDES, ESTIMATE_SCOPES,
                                  POSITIVE_AMP_ACTIVATIONS, ModelConfig, TrainingConfig)

#: Side lengths drawn for N (multiples of 8, small).
SIZES = (16, 32)

PROFILES = {
    "parity-ci": dict(derandomize=True, deadline=None, max_examples=4, print_blob=True,
                      database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.filter_too_much]),
    "parity-thorough": dict(deadline=None, max_examples=60, print_blob=True,
                            suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large]),
}
for _name, _kw in PROFILES.items():
    settings.register_profile(_name, **_kw)


def parity_profile_name() -> str:
    """``parity-ci`` under the ``ci`` profile (the default), else ``parity-thorough``."""
    return "parity-ci" if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else "parity-thorough"


def parity_settings(max_examples: Optional[int] = None) -> settings:
    """Settings for whole-pipeline parity examples (see the module docstring).

    ``max_examples`` caps the profile's count (useful for the heaviest tests in CI).
    """
    base = settings.get_profile(parity_profile_name())
    if max_examples is not None and parity_profile_name() == "parity-ci":
        return settings(base, max_examples=min(base.max_examples, max_examples))
    return base


# -- configs ------------------------------------------------------------------------------------
@st.composite
def model_configs(draw, sizes=SIZES, gridsizes=(1, 2, 3), max_width: int = 8) -> ModelConfig:
    """Small :class:`ModelConfig`\\ s; every boolean branch of the model is drawn."""
    n = draw(st.sampled_from(sizes))
    scale = draw(st.integers(1, 2))
    base = draw(st.integers(1, max(1, max_width // (4 * scale))))
    pad = draw(st.booleans())
    activation = draw(st.sampled_from(AMP_ACTIVATIONS))
    probe_trainable = draw(st.booleans())
    estimate = not probe_trainable and draw(st.booleans())
    return ModelConfig(
        N=n, gridsize=draw(st.sampled_from(gridsizes)), n_filters_scale=scale, base_filters=base,
        amp_activation=activation, per_pattern_network=draw(st.booleans()),
        central_decoder=draw(st.booleans()),
        match_intensity=activation in POSITIVE_AMP_ACTIVATIONS and draw(st.booleans()),
        object_big=draw(st.booleans()), pad_object=pad,
        probe_big=draw(st.booleans()),
        probe_mask=draw(st.booleans()), probe_scale=draw(st.sampled_from([1.0, 4.0])),
        probe_trainable=probe_trainable, intensity_scale_trainable=draw(st.booleans()),
        backprop_estimate=estimate,
        estimate_scope=draw(st.sampled_from(ESTIMATE_SCOPES)) if estimate else "pattern",
        estimate_amplitude=draw(st.sampled_from(ESTIMATE_AMPLITUDES)) if estimate else "input",
        skip_connections=draw(st.booleans()))


def nphotons() -> st.SearchStrategy[float]:
    """Mean photons per pattern from 1e1 to 1e9 (log-uniform), eight decades."""
    return st.floats(1.0, 9.0).map(lambda e: float(10.0 ** round(e, 2)))


@st.composite
def training_configs(draw, models=None, max_batch: int = 4) -> TrainingConfig:
    """A :class:`TrainingConfig` around a drawn model: batch size, nphotons, loss weights.

    ``neighbor_count`` is chosen between gridsize**2 and 16 (the parity scan has 16 points).
    """
    model = draw(models if models is not None else model_configs())
    c = model.n_channels
    mae = draw(st.sampled_from([0.0, 0.1, 1.0]))
    return TrainingConfig(
        model=model, batch_size=draw(st.integers(1, max_batch)), nepochs=2,
        learning_rate=draw(st.sampled_from([1e-4, 1e-3, 1e-2])),
        nll_weight=1.0 if mae == 0.0 else draw(st.sampled_from([0.0, 1.0])),
        mae_weight=mae, realspace_weight=draw(st.sampled_from([0.0, 0.5])),
        loss_epsilon=draw(st.sampled_from([1e-6, 1e-3])),
        nphotons=draw(nphotons()), neighbor_count=draw(st.integers(max(c, 4), 16)),
        seed=draw(st.integers(0, 2 ** 16)))


# -- inputs -------------------------------------------------------------------------------------
def _floats32(lo: float, hi: float) -> st.SearchStrategy[float]:
    """float32-representable floats in [lo, hi] (bounds rounded inwards), no subnormals."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if lo32 < lo:
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if hi32 > hi:
        hi32 = np.nextafter(hi32, np.float32(-np.inf))
    return st.floats(float(lo32), float(hi32), width=32, allow_nan=False, allow_infinity=False,
                     allow_subnormal=False)


def real_arrays(shape, lo: float = -1.0, hi: float = 1.0) -> st.SearchStrategy[np.ndarray]:
    """float32 arrays of ``shape`` with elements in [lo, hi] (no subnormals)."""
    return hnp.arrays(np.float32, shape, elements=_floats32(lo, hi))


def flush_subnormals(x: np.ndarray) -> np.ndarray:
    """Real and imaginary parts below float32's smallest normal set to zero.

    Inputs are kept free of subnormals (as array-api-tests does): TensorFlow's CPU kernels
    treat subnormal inputs as zero (DAZ) and torch does not, a difference of no physical
    meaning that would otherwise dominate every shrunk counterexample.
    """
    tiny = np.finfo(np.float32).tiny
    x = np.array(x, copy=True)
    if np.iscomplexobj(x):
        x.real[np.abs(x.real) < tiny] = 0
        x.imag[np.abs(x.imag) < tiny] = 0
    else:
        x[np.abs(x) < tiny] = 0
    return x


@st.composite
def complex_arrays(draw, shape, max_amplitude: float = 1.0) -> np.ndarray:
    """complex64 arrays: amplitude in [0, max_amplitude], any phase (no subnormal parts)."""
    amp = draw(hnp.arrays(np.float32, shape, elements=_floats32(0.0, max_amplitude)))
    phase = draw(hnp.arrays(np.float32, shape, elements=_floats32(-math.pi, math.pi)))
    return flush_subnormals((amp * np.exp(1j * phase.astype(np.float64))).astype(np.complex64))


@st.composite
def probes(draw, n: int) -> np.ndarray:
    """A normalised (N, N) complex64 probe: soft disk of drawn radius and defocus, or noise."""
    from ptycho.data import normalise_probe

    from parity.inputs import make_probe
    kind = draw(st.sampled_from(["disk", "random"]))
    scale = draw(st.sampled_from([1.0, 4.0]))
    if kind == "disk":
        return flush_subnormals(make_probe(n, scale, radius=draw(st.floats(n / 8, n / 3)),
                                           curvature=draw(st.floats(0.0, 0.1))))
    raw = draw(complex_arrays((n, n)))
    if not np.any(np.abs(raw) > 0):
        raw = raw + np.complex64(1.0)
    return flush_subnormals(normalise_probe(raw, scale))


def _offset_values(max_shift: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.integers(-int(max_shift), int(max_shift)).map(float),          # integer shifts
        _floats32(-max_shift, max_shift),                                    # sub-pixel
        st.sampled_from([-0.5, 0.5, -1e-3, 1e-3]))                         # edge cases


def offsets(shape, max_shift: float) -> st.SearchStrategy[np.ndarray]:
    """float32 (..., 2) = (dx, dy) offsets: integer, sub-pixel and negative, |d| <= max_shift."""
    return hnp.arrays(np.float32, tuple(shape) + (2,), elements=_offset_values(max_shift))


@st.composite
def group_offsets(draw, n_groups: int, gridsize: int, n: int) -> np.ndarray:
    """(B, C, 2) float32 offsets of a group around its centre (mean zero, sub-pixel),
    spread up to N/4 (the canvas stays at most 1.5 N)."""
    c = gridsize * gridsize
    off = draw(offsets((n_groups, c), max_shift=n / 4.0)).astype(np.float64)
    off = off - off.mean(axis=1, keepdims=True)
    return np.clip(off, -n / 4.0, n / 4.0).astype(np.float32)
