"""Bad pixels, data side: the mask in the contract and NPZ files, the normalisation, grouping
(batches carry the mask, the network input never sees a bad pixel) and reconstruction.

The losses honouring ``Batch.mask`` belong to the backends (``tests/backends/test_model.py``
checks them against the float64 reference); the test at the end drives them from grouped data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from parity.fake import NumpyBackend
from ptycho.batch import Batch
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data import RawData, group_data, load_npz, normalisation_factor, save_npz
from ptycho.errors import DataError
from ptycho.physics.losses import LossSettings
from ptycho.weights import init_weights
from ptycho.workflows import reconstruct
from ptycho.workflows.model import PtychoModel

M, N = 6, 16
GARBAGE = 3.0e4


def scan(mask=None, seed=0) -> RawData:
    rng = np.random.default_rng(seed)
    diff = np.sqrt(rng.poisson(20.0, (M, N, N))).astype(np.float32)
    return RawData(diff, np.ones((N, N), np.complex64), np.arange(M, dtype=float) * 3 + 20,
                   np.full(M, 20.0), object_guess=np.ones((48, 48), np.complex64), mask=mask)


def shared_mask() -> np.ndarray:
    m = np.ones((N, N), bool)
    m[3, 5] = m[10, 2] = False
    m[0, :4] = False
    return m


def per_pattern_mask() -> np.ndarray:
    m = np.ones((M, N, N), bool)
    for k in range(M):
        m[k, k, k] = False
        m[k, (3 * k) % N, 1] = False
    return m


def with_garbage(raw: RawData, mask: np.ndarray, keep_mask: bool = True) -> RawData:
    """``raw`` with every bad pixel of ``mask`` overwritten by a huge value (and masked, or not)."""
    diff = raw.diffraction.copy()
    diff[~np.broadcast_to(mask, diff.shape)] = GARBAGE
    return RawData(diff, raw.probe, raw.xcoords, raw.ycoords, raw.object_guess,
                   mask=mask if keep_mask else None)


# --------------------------------------------------------------------------------------------
# the contract


@pytest.mark.parametrize("make", [shared_mask, per_pattern_mask])
def test_mask_is_validated_and_cast_to_bool(make):
    m = make()
    raw = scan(m.astype(np.uint8))
    assert raw.mask.dtype == np.bool_ and np.array_equal(raw.mask, m)


def test_mask_errors_name_the_key_and_the_shapes():
    with pytest.raises(DataError, match=r"'mask': expected shape \(16, 16\) .* or \(6, 16, 16\) "
                                        r".*got shape \(16, 8\)"):
        scan(np.ones((N, 8), bool))
    with pytest.raises(DataError, match=r"'mask': 1 values are neither 0 nor 1"):
        bad = np.ones((N, N)); bad[2, 2] = 0.5
        scan(bad)
    with pytest.raises(DataError, match=r"'mask': expected a bool .* got dtype complex"):
        scan(np.ones((N, N), complex))
    with pytest.raises(DataError, match=r"every pixel is masked"):
        scan(np.zeros((N, N), bool))
    dead = np.ones((M, N, N), bool); dead[2] = dead[4] = False
    with pytest.raises(DataError, match=r"2 patterns have no measured pixel \(first: \[2, 4\]\)"):
        scan(dead)


def test_subset_slices_a_per_pattern_mask_and_keeps_a_shared_one():
    m = per_pattern_mask()
    sub = scan(m).subset([4, 1])
    assert np.array_equal(sub.mask, m[[4, 1]])
    assert scan(shared_mask()).subset([0]).mask.shape == (N, N)


@pytest.mark.parametrize("make", [shared_mask, per_pattern_mask])
@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_npz_round_trip_keeps_the_mask(tmp_path, make, mmap_mode):
    raw = scan(make())
    save_npz(raw, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["mask"].dtype == np.bool_
    back = load_npz(tmp_path / "s.npz", mmap_mode=mmap_mode)
    assert np.array_equal(back.mask, raw.mask)


def test_bad_pixels_key_is_the_complement_and_must_agree_with_mask(tmp_path):
    raw = scan()
    m = shared_mask()
    arrays = raw.to_arrays()
    np.savez(tmp_path / "bp.npz", bad_pixels=~m, **arrays)
    assert np.array_equal(load_npz(tmp_path / "bp.npz").mask, m)
    np.savez(tmp_path / "both.npz", bad_pixels=~m, mask=m, **arrays)
    assert np.array_equal(load_npz(tmp_path / "both.npz").mask, m)
    np.savez(tmp_path / "clash.npz", bad_pixels=m, mask=m, **arrays)
    with pytest.raises(DataError, match=r"both 'mask' and 'bad_pixels' are present and they "
                                        r"disagree"):
        load_npz(tmp_path / "clash.npz")


# --------------------------------------------------------------------------------------------
# normalisation


def test_normalisation_ignores_what_bad_pixels_hold():
    m = shared_mask()
    raw = scan(m)
    assert normalisation_factor(with_garbage(raw, m).diffraction, m) == \
        normalisation_factor(raw.diffraction, m)
    p = per_pattern_mask()
    assert normalisation_factor(with_garbage(raw, p).diffraction, p) == \
        normalisation_factor(raw.diffraction, p)


def test_normalisation_counts_a_bad_pixel_as_the_mean_measured_intensity():
    """The documented rule: mean total = N**2 x the mean measured intensity, pooled."""
    a = np.zeros((2, 4, 4))
    a[0] = 1.0          # intensity 1 everywhere
    a[1] = 2.0          # intensity 4 everywhere
    m = np.ones((2, 4, 4), bool)
    m[1, :, :2] = False   # pattern 1 keeps 8 of its 16 pixels
    # measured intensities: 16 x 1 and 8 x 4 -> mean 48 / 24 = 2 per pixel -> total 32
    assert math.isclose(normalisation_factor(a, m), math.sqrt(2.0 ** 2 / 32.0))
    assert math.isclose(normalisation_factor(a), math.sqrt(4.0 / ((16 + 64) / 2)))
    with pytest.raises(DataError, match=r"mask must be \(4, 4\) \(shared\) or \(2, 4, 4\)"):
        normalisation_factor(a, np.ones((3, 4, 4), bool))


# --------------------------------------------------------------------------------------------
# grouping and batches


@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("make", [shared_mask, per_pattern_mask])
def test_grouping_zeroes_bad_pixels_and_batches_carry_the_mask(gridsize, make):
    m = make()
    raw = scan(m)
    cfg = ModelConfig(N=N, gridsize=gridsize)
    gd = group_data(raw, cfg, nphotons=1e4, neighbor_count=4, seed=1)
    garbage = group_data(with_garbage(raw, m), cfg, nphotons=1e4, neighbor_count=4, seed=1)
    assert np.array_equal(gd.diffraction, garbage.diffraction)
    assert gd.normalisation == garbage.normalisation
    full = np.broadcast_to(gd.mask, gd.diffraction.shape)
    assert np.all(gd.diffraction[~full] == 0) and np.any(gd.diffraction[full] > 0)
    b = gd.batch(np.array([3, 0]))
    if m.ndim == 2:
        assert b.mask is gd.mask
    else:
        assert b.mask.shape == (2, gridsize ** 2, N, N)
        assert np.array_equal(b.mask, m[gd.indices[[3, 0]]])
    assert gd.batch(slice(0, 2)).take(slice(1, 2)).mask is not None


def test_unmasked_scan_groups_as_before():
    raw = scan()
    gd = group_data(raw, ModelConfig(N=N), nphotons=1e4)
    assert gd.mask is None and gd.batch(0).mask is None
    expected = raw.diffraction * np.float32(normalisation_factor(raw.diffraction)
                                            * math.sqrt(1e4) / (N / 2))
    assert np.allclose(gd.diffraction[:, 0], expected, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# reconstruction (on the numpy stand-in backend: no framework needed)


@pytest.mark.parametrize("make", [shared_mask, per_pattern_mask])
def test_reconstruction_ignores_what_bad_pixels_hold(make):
    m = make()
    cfg = TrainingConfig(model=ModelConfig(N=N, base_filters=2, n_filters_scale=1), nphotons=1e4)
    weights = init_weights(cfg.model, 0, np.ones((N, N), np.complex64), math.log(12.5))
    model = PtychoModel(NumpyBackend("np").build_model(cfg.model, weights), cfg)
    raw = scan(m)
    clean = reconstruct(model, raw).obj
    assert np.array_equal(reconstruct(model, with_garbage(raw, m)).obj, clean)
    assert not np.allclose(reconstruct(model, with_garbage(raw, m, keep_mask=False)).obj, clean)


# --------------------------------------------------------------------------------------------
# the losses (the backends' side)

BACKENDS = [pytest.param("tensorflow", marks=pytest.mark.tensorflow),
            pytest.param("torch", marks=pytest.mark.torch)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_pixels_change_neither_the_loss_nor_the_gradients(backend):
    """Garbage in the bad pixels of a Batch: identical loss terms and gradients.

    Needs the backend to leave bad pixels out of the losses and out of the network input.
    """
    from backends import get_backend

    cfg = TrainingConfig(model=ModelConfig(N=N, gridsize=2, base_filters=2, n_filters_scale=1),
                         nphotons=1e4, realspace_weight=1.0)
    gd = group_data(scan(per_pattern_mask()), cfg.model, cfg.nphotons, neighbor_count=4)
    batch = gd.batch(np.arange(3))
    noisy = batch.diffraction.copy()
    noisy[~batch.mask] = GARBAGE
    garbage = Batch(noisy, batch.rel_offsets, batch.canvas_size, batch.mask)
    weights = init_weights(cfg.model, 0, gd.probe, math.log(gd.intensity_scale))
    model = get_backend(backend).build_model(cfg.model, weights)
    settings = LossSettings.from_config(cfg)
    clean_loss, dirty_loss = model.losses(batch, settings), model.losses(garbage, settings)
    assert clean_loss == pytest.approx(dirty_loss, rel=1e-5)
    clean, dirty = model.gradients(batch, settings), model.gradients(garbage, settings)
    for name in clean:
        scale = float(np.max(np.abs(clean[name]))) or 1.0
        assert np.allclose(clean[name], dirty[name], rtol=0, atol=1e-5 * scale), name
