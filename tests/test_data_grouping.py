"""Grouping scan points and building the scaled GroupedData."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ptycho.data.grouping as grouping
from ptycho.batch import Batch
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data import (GroupedData, RawData, group_data, group_data_for_training, group_scan,
                         intensity_scale, normalisation_factor)
from ptycho.errors import ConfigError, DataError
from ptycho.physics import canvas_size

N = 16


def scan(m: int = 40, seed: int = 0, x_span: float = 30.0, y_span: float = 30.0):
    rng = np.random.default_rng(seed)
    return rng.random(m) * x_span, rng.random(m) * y_span


def raw_scan(m: int = 40, seed: int = 0, **kw) -> RawData:
    x, y = scan(m, seed, **kw)
    rng = np.random.default_rng(seed + 1)
    return RawData(rng.random((m, N, N)).astype(np.float32) * 3,
                   np.exp(1j * rng.random((N, N))).astype(np.complex64), x, y,
                   object_guess=np.ones((64, 64), np.complex64))


def test_doctests():
    result = doctest.testmod(grouping)
    assert result.attempted > 0 and result.failed == 0


def test_gridsize_one_each_pattern_alone_in_scan_order():
    x, y = scan(12)
    g = group_scan(x, y, gridsize=1, neighbor_count=4)
    assert g.dtype == np.int64 and g.tolist() == [[i] for i in range(12)]


def test_gridsize_one_subset_is_seeded_sorted_and_unique():
    x, y = scan(50)
    a = group_scan(x, y, 1, 1, n_groups=10, seed=3)
    assert a.shape == (10, 1)
    assert np.array_equal(a, group_scan(x, y, 1, 1, n_groups=10, seed=3))
    flat = a.ravel()
    assert np.all(np.diff(flat) > 0)  # sorted, no repeats
    assert not np.array_equal(a, group_scan(x, y, 1, 1, n_groups=10, seed=4))


def test_reproducible_with_seed_and_different_seeds_differ():
    x, y = scan(60)
    a = group_scan(x, y, gridsize=2, neighbor_count=7, seed=11)
    b = group_scan(x, y, gridsize=2, neighbor_count=7, seed=11)
    c = group_scan(x, y, gridsize=2, neighbor_count=7, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@given(m=st.integers(9, 60), k=st.integers(4, 9), g=st.sampled_from([2, 3]),
       seed=st.integers(0, 1000))
def test_members_are_distinct_and_among_the_k_nearest_of_their_seed(m, k, g, seed):
    k = max(k, g * g)
    if m < k:
        m = k
    x, y = scan(m, seed)
    groups = group_scan(x, y, gridsize=g, neighbor_count=k, seed=seed)
    assert groups.shape == (m, g * g)
    pos = np.stack([x, y], axis=1)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    kth = np.sort(d, axis=1)[:, k - 1]
    for s, members in enumerate(groups):
        assert len(set(members.tolist())) == g * g
        assert np.all(d[s, members] <= kth[s] + 1e-12)


def test_n_groups_draws_seeds_and_can_oversample():
    x, y = scan(20)
    assert group_scan(x, y, 2, 4, n_groups=5, seed=0).shape == (5, 4)
    big = group_scan(x, y, 2, 4, n_groups=50, seed=0)
    assert big.shape == (50, 4) and big.max() < 20


def test_group_scan_errors():
    x, y = scan(3)
    with pytest.raises(DataError, match=r"too few scan points to group: gridsize 2 with "
                                        r"neighbor_count K = 4 needs at least 4 points, got M = 3"):
        group_scan(x, y, 2, 4)
    with pytest.raises(ConfigError, match=r"neighbor_count must be >= gridsize\*\*2 = 9, got 4"):
        group_scan(*scan(20), 3, 4)
    with pytest.raises(DataError, match=r"n_groups = 5 exceeds the 3 scan points"):
        group_scan(x, y, 1, 1, n_groups=5)
    with pytest.raises(DataError, match=r"'xcoords' and 'ycoords' must have the same length, "
                                        r"got 3 and 2"):
        group_scan(x, y[:2], 1, 1)
    with pytest.raises(DataError, match=r"positions must be finite"):
        group_scan(np.array([0.0, np.nan]), np.zeros(2), 1, 1)
    with pytest.raises(ConfigError, match=r"gridsize must be an int >= 1, got 0"):
        group_scan(x, y, 0, 1)
    with pytest.raises(ConfigError, match=r"n_groups must be an int >= 1, got 2.5"):
        group_scan(x, y, 1, 1, n_groups=2.5)


def test_group_data_scales_to_photon_units():
    raw = raw_scan(30)
    gd = group_data(raw, ModelConfig(N=N, gridsize=1), nphotons=1e5)
    assert gd.diffraction.dtype == np.float32 and gd.diffraction.shape == (30, 1, N, N)
    counts = np.sum(gd.diffraction.astype(np.float64) ** 2, axis=(-2, -1))
    assert np.mean(counts) == pytest.approx(1e5, rel=1e-5)
    factor = normalisation_factor(raw.diffraction) * intensity_scale(1e5, N)
    assert gd.normalisation * gd.intensity_scale == pytest.approx(factor)
    np.testing.assert_allclose(gd.diffraction[:, 0], raw.diffraction * factor, rtol=1e-6)
    assert np.all(gd.rel_offsets == 0) and gd.canvas_size == N
    assert np.sum(np.abs(gd.probe.astype(np.complex128)) ** 2) == pytest.approx(
        (4.0 * N / 2) ** 2, rel=1e-5)
    assert gd.object_guess is raw.object_guess


def test_group_offsets_centre_and_rel_offsets_sum_to_zero():
    """Positions off any common pixel grid: the centre is the members' mean."""
    raw = raw_scan(40)
    gd = group_data(raw, ModelConfig(N=N, gridsize=2), nphotons=1e6, neighbor_count=6, seed=5)
    pos = np.stack([raw.xcoords, raw.ycoords], axis=1)[gd.indices]
    np.testing.assert_allclose(gd.global_offsets, pos.mean(axis=1))
    assert gd.rel_offsets.dtype == np.float32 and gd.global_offsets.dtype == np.float64
    np.testing.assert_allclose(gd.rel_offsets.sum(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(gd.rel_offsets + gd.global_offsets[:, None], pos, atol=1e-4)
    assert gd.canvas_size == canvas_size(N, gd.rel_offsets) > N
    np.testing.assert_allclose(
        gd.diffraction[3, 2], raw.diffraction[gd.indices[3, 2]].astype(np.float64)
        * gd.normalisation * gd.intensity_scale, rtol=1e-6)
    assert gd.diffraction.dtype == np.float32


def test_x_is_column_and_y_is_row_not_swapped():
    # anisotropic scan: a line along x (columns) at a fixed row y = 7
    x = np.arange(0.0, 60.0, 3.0)
    raw = RawData(np.ones((x.size, N, N), np.float32), np.ones((N, N)), x, np.full(x.size, 7.0))
    gd = group_data(raw, ModelConfig(N=N, gridsize=2), nphotons=1e4, neighbor_count=4)
    assert np.all(gd.rel_offsets[..., 1] == 0)  # no spread along y
    assert np.ptp(gd.rel_offsets[..., 0]) > 0  # the spread is along x
    assert np.all(gd.global_offsets[:, 1] == 7.0)
    # whole-pixel positions: whole offsets, a centre within half a pixel of the mean x
    assert np.all(gd.rel_offsets == np.round(gd.rel_offsets))
    assert np.all(np.abs(gd.global_offsets[:, 0] - x[gd.indices].mean(axis=1)) <= 0.5)


def test_b_groups_stay_b_and_batches():
    raw = raw_scan(25)
    gd = group_data(raw, ModelConfig(N=N, gridsize=2), nphotons=1e4, n_groups=7, seed=2)
    assert len(gd) == 7 and gd.diffraction.shape == (7, 4, N, N) and gd.indices.shape == (7, 4)
    assert gd.global_offsets.shape == (7, 2) and gd.rel_offsets.shape == (7, 4, 2)
    b = gd.batch(slice(2, 5))
    assert isinstance(b, Batch) and b.size == 3 and b.canvas_size == gd.canvas_size
    np.testing.assert_array_equal(b.diffraction, gd.diffraction[2:5])
    one = gd.batch(4)
    assert one.diffraction.shape == (1, 4, N, N)
    np.testing.assert_array_equal(one.rel_offsets[0], gd.rel_offsets[4])
    assert gd.batch(np.array([6, 0])).size == 2


def test_group_data_for_training_uses_the_config():
    raw = raw_scan(30)
    cfg = TrainingConfig(model=ModelConfig(N=N, gridsize=2), n_groups=9, neighbor_count=5,
                         seed=8, nphotons=1e3)
    gd = group_data_for_training(raw, cfg)
    direct = group_data(raw, cfg.model, 1e3, n_groups=9, neighbor_count=5, seed=8)
    np.testing.assert_array_equal(gd.indices, direct.indices)
    assert len(gd) == 9 and gd.intensity_scale == pytest.approx(intensity_scale(1e3, N))
    with pytest.raises(ConfigError, match=r"expected a TrainingConfig, got ModelConfig"):
        group_data_for_training(raw, cfg.model)


def test_group_data_errors():
    raw = raw_scan(10)
    with pytest.raises(DataError, match=r"pattern size N = 16 does not match ModelConfig.N = 32"):
        group_data(raw, ModelConfig(N=32), 1e4)
    with pytest.raises(DataError, match=r"expected a RawData, got dict"):
        group_data({}, ModelConfig(N=N), 1e4)
    with pytest.raises(ConfigError, match=r"nphotons must be a finite number > 0, got -1"):
        group_data(raw, ModelConfig(N=N), -1)


def test_grouped_data_checks_shapes():
    with pytest.raises(DataError, match=r"GroupedData.rel_offsets: expected shape \(2, 1, 2\), "
                                        r"got \(2, 2\)"):
        GroupedData(np.zeros((2, 1, N, N), np.float32), np.zeros((2, 2)), np.zeros((2, 2)),
                    np.zeros((2, 1), np.int64), np.ones((N, N), np.complex64), 1.0, 1.0, N)
