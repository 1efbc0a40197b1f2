"""Scale factors: normalisation, intensity scale, probe normalisation (units pinned by numbers)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ptycho.data.scaling as scaling
from ptycho.data.scaling import (initial_log_intensity_scale, intensity_scale,
                                 normalisation_factor, normalise_probe)
from ptycho.errors import ConfigError, DataError


def test_doctests():
    result = doctest.testmod(scaling)
    assert result.attempted > 0 and result.failed == 0


@given(n=st.sampled_from([8, 16, 32]), m=st.integers(1, 6),
       gain=st.floats(1e-3, 1e4), seed=st.integers(0, 2 ** 16))
def test_normalised_mean_total_intensity_is_half_n_squared(n, m, gain, seed):
    a = (np.random.default_rng(seed).random((m, n, n)) * gain).astype(np.float32)
    s = normalisation_factor(a)
    mean_total = np.mean(np.sum((a.astype(np.float64) * s) ** 2, axis=(1, 2)))
    assert mean_total == pytest.approx((n / 2) ** 2, rel=1e-6)


@given(n=st.sampled_from([16, 64]), nphotons=st.floats(1.0, 1e12), seed=st.integers(0, 99))
def test_normalised_times_intensity_scale_gives_nphotons_counts(n, nphotons, seed):
    a = np.random.default_rng(seed).random((4, n, n)).astype(np.float32) + 0.1
    photon_amp = a.astype(np.float64) * normalisation_factor(a) * intensity_scale(nphotons, n)
    counts = np.sum(photon_amp ** 2, axis=(1, 2))
    assert np.mean(counts) == pytest.approx(nphotons, rel=1e-6)


def test_normalisation_is_invariant_to_the_raw_gain():
    a = np.random.default_rng(1).random((3, 16, 16))
    assert normalisation_factor(a) == pytest.approx(7.0 * normalisation_factor(7.0 * a))


def test_normalisation_accepts_grouped_layout_and_averages_over_all_patterns():
    a = np.random.default_rng(2).random((3, 4, 16, 16))
    assert normalisation_factor(a) == pytest.approx(normalisation_factor(a.reshape(12, 16, 16)))


def test_intensity_scale_value_and_log():
    assert intensity_scale(1e6, 64) == pytest.approx(1000.0 / 32.0)
    assert initial_log_intensity_scale(1e6, 64) == pytest.approx(math.log(1000.0 / 32.0))


@pytest.mark.parametrize("n_phot, n, msg", [
    (0.0, 64, r"nphotons must be a finite number > 0, got 0.0"),
    (float("nan"), 64, r"nphotons must be a finite number > 0, got nan"),
    ("1e9", 64, r"nphotons must be a positive number, got '1e9'"),
    (1e9, 0, r"N must be a positive int \(pattern side in pixels\), got 0"),
    (1e9, 64.0, r"N must be a positive int .* got 64.0"),
])
def test_intensity_scale_rejects_bad_arguments(n_phot, n, msg):
    with pytest.raises(ConfigError, match=msg):
        intensity_scale(n_phot, n)


@given(scale=st.floats(0.01, 100.0), seed=st.integers(0, 999))
def test_normalised_probe_power(scale, seed):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(16, 16)) + 1j * rng.normal(size=(16, 16))
    q = normalise_probe(p, scale)
    assert q.dtype == np.complex64
    assert np.sum(np.abs(q.astype(np.complex128)) ** 2) == pytest.approx((scale * 8) ** 2,
                                                                       rel=1e-5)
    # the shape of the probe is unchanged (only a real positive factor)
    ratio = q / p.astype(np.complex64)
    assert np.allclose(ratio.imag, 0, atol=1e-4) and np.all(ratio.real > 0)


@pytest.mark.parametrize("probe, scale, err, msg", [
    (np.zeros((16, 16), np.complex64), 1.0, DataError, r"the probe is zero everywhere"),
    (np.ones((16, 8)), 1.0, DataError, r"expected a square \(N, N\) probe, got shape \(16, 8\)"),
    (np.full((4, 4), np.nan), 1.0, DataError, r"the probe holds NaN or Inf"),
    (np.ones((4, 4)), 0.0, ConfigError, r"probe_scale must be a finite number > 0, got 0.0"),
    (np.ones((4, 4), bool), 1.0, DataError, r"expected a numeric probe, got dtype bool"),
])
def test_normalise_probe_rejects_bad_input(probe, scale, err, msg):
    with pytest.raises(err, match=msg):
        normalise_probe(probe, scale)


@pytest.mark.parametrize("diff, msg", [
    (np.zeros((3, 8, 8)), r"every diffraction pattern is zero"),
    (np.ones((8, 8)), r"expected diffraction \(..., N, N\) .* got shape \(8, 8\)"),
    (np.ones((2, 8, 6)), r"got shape \(2, 8, 6\)"),
    (np.ones((0, 8, 8)), r"no patterns"),
    (np.full((2, 8, 8), np.inf), r"NaN or Inf"),
    (np.ones((2, 8, 8), np.complex64), r"expected real amplitudes, got dtype complex64"),
])
def test_normalisation_factor_rejects_bad_input(diff, msg):
    with pytest.raises(DataError, match=msg):
        normalisation_factor(diff)
