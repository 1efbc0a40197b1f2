"""Tests of ptycho.metrics with known answers and an independent SSIM reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho.metrics import (METRIC_COVERAGE_THRESHOLD, NOT_RESOLVED, align_amplitude, align_phase,
                            amplitude_scale, compare_objects, data_range, describe_resolution,
                            fit_phase_ramp, frc, frc_resolution, mae, metric_mask, metric_region,
                            mse, psnr, scanned_area, ssim)
from ptycho.simulate import gaussian_random_field, grf_object

seeds = st.integers(0, 2**32 - 1)


def _img(seed=0, shape=(32, 32)):
    return gaussian_random_field(shape, np.random.default_rng(seed), correlation_length=2.0)


# -- pointwise ---------------------------------------------------------------------------------

def test_mae_mse_psnr_known_values():
    ref = np.array([[0.0, 1.0], [2.0, 4.0]])
    img = ref + np.array([[0.5, -0.5], [0.0, 1.0]])
    assert mae(img, ref) == pytest.approx(0.5)
    assert mse(img, ref) == pytest.approx((0.25 + 0.25 + 0 + 1) / 4)
    assert data_range(ref) == 4.0
    assert psnr(img, ref) == pytest.approx(10 * math.log10(16 / 0.375))
    assert psnr(img, ref, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.375))
    assert psnr(ref, ref) == math.inf


def test_mae_and_mse_accept_complex_images():
    assert mae(np.array([1j]), np.array([0.0])) == 1.0
    assert mse(np.array([3 + 4j]), np.array([0j])) == 25.0


def test_psnr_peak_is_the_reference_range_not_the_image_range():
    ref = np.array([0.0, 1.0, 0.5, 0.2])
    img = ref * 10          # larger range in the image must not change the peak
    assert psnr(img, ref) == pytest.approx(10 * math.log10(1.0 / mse(img, ref)))


@pytest.mark.parametrize("call, match", [
    (lambda: mae(np.zeros(3), np.zeros(4)), "same shape"),
    (lambda: mse(np.array([np.nan]), np.zeros(1)), "non-finite"),
    (lambda: psnr(np.zeros(3), np.ones(3)), "data range"),
    (lambda: psnr(np.zeros(2, complex), np.arange(2.0)), "real"),
    (lambda: ssim(np.zeros((8, 8)), np.random.default_rng(0).random((8, 8))), "11 x 11"),
    (lambda: ssim(np.zeros(20), np.arange(20.0)), "2-D"),
])
def test_metric_errors_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- SSIM --------------------------------------------------------------------------------------

def _ssim_reference(a, b, rng):
    """Direct Wang et al. SSIM over interior pixels with explicit 11 x 11 Gaussian weights."""
    k = np.arange(-5, 6)
    g = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    vals = []
    for r in range(5, a.shape[0] - 5):
        for c in range(5, a.shape[1] - 5):
            wa, wb = a[r - 5:r + 6, c - 5:c + 6], b[r - 5:r + 6, c - 5:c + 6]
            ma, mb = (g * wa).sum(), (g * wb).sum()
            va = (g * (wa - ma) ** 2).sum()
            vb = (g * (wb - mb) ** 2).sum()
            cov = (g * (wa - ma) * (wb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1)
                                                               * (va + vb + c2)))
    return float(np.mean(vals))


@given(seed=seeds, noise=st.floats(0.01, 1.0))
def test_ssim_matches_a_direct_implementation(seed, noise):
    rng = np.random.default_rng(seed)
    ref = _img(seed % 1000, (20, 23))
    img = ref + noise * rng.standard_normal(ref.shape)
    assert ssim(img, ref) == pytest.approx(_ssim_reference(img, ref, data_range(ref)), abs=1e-10)


def test_ssim_known_answers():
    ref = _img(1)
    assert ssim(ref, ref) == 1.0
    assert ssim(1 - ref, ref) < -0.5      # contrast inverted at the same mean level
    noisy = ref + 0.3 * np.random.default_rng(2).standard_normal(ref.shape)
    assert 0 < ssim(noisy, ref) < ssim(0.5 * noisy + 0.5 * ref, ref) < 1
    assert ssim(ref, noisy) == pytest.approx(ssim(noisy, ref), rel=0.2)   # nearly symmetric


# -- FRC ---------------------------------------------------------------------------------------

def test_frc_of_identical_images_is_one_and_of_negated_is_minus_one():
    img = _img(3, (40, 40)) + 1j * _img(4, (40, 40))
    f, c = frc(img, img)
    assert f[0] == 0 and f[-1] == 0.5 and len(f) == 21
    np.testing.assert_allclose(c, 1.0)
    np.testing.assert_allclose(frc(img, -img)[1], -1.0)
    assert frc_resolution(f, c, 0.5) == 0.5


def test_frc_of_independent_noise_is_small_and_noisy_copy_decays():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 64, 64))
    f, c = frc(a, b)
    assert np.abs(c[3:]).max() < 0.4 and np.abs(c[3:]).mean() < 0.1
    smooth = gaussian_random_field((64, 64), rng, correlation_length=3.0)
    noisy = smooth + 0.02 * rng.standard_normal((64, 64))
    f, c = frc(noisy, smooth)
    assert c[1] > 0.9 and c[-1] < 0.5
    r50, r17 = frc_resolution(f, c, 0.5), frc_resolution(f, c, 1 / 7)
    assert 0 < r50 <= r17 < 0.5


def test_frc_rectangular_images_use_the_shorter_side():
    img = _img(5, (24, 40))
    f, c = frc(img, img, apodize=True)
    assert len(f) == 13 and f[1] == pytest.approx(1 / 24)
    np.testing.assert_allclose(c, 1.0)


def test_frc_resolution_interpolates_and_handles_no_crossing():
    f = np.array([0.0, 0.1, 0.2, 0.3])
    assert frc_resolution(f, np.array([1.0, 0.9, 0.3, 0.1]), 0.5) == pytest.approx(0.1 + 0.1 * 4 / 6)
    assert frc_resolution(f, np.array([1.0, 0.9, 0.8, 0.7]), 0.5) == 0.3
    with pytest.raises(ValueError, match="equal length"):
        frc_resolution(f, np.ones(3), 0.5)


def test_frc_below_the_threshold_from_the_first_ring_is_not_resolved():
    f = np.array([0.0, 0.1, 0.2, 0.3])
    # the zero-frequency ring is ~1 for any two positive images; interpolating from it gave
    # a "resolution" of 1 / 0.03 = 33 px for a 10 px image before
    assert frc_resolution(f, np.array([1.0, 0.45, 0.3, 0.1]), 0.5) is None
    assert frc_resolution(f, np.array([1.0, 0.5, 0.3, 0.1]), 0.5) == pytest.approx(0.1)
    assert describe_resolution(math.inf) == describe_resolution(None) == NOT_RESOLVED
    assert describe_resolution(3.25) == "3.25 px"


@given(seed=seeds, noise=st.floats(0.0, 5.0))
def test_an_frc_resolution_is_never_coarser_than_the_image(seed, noise):
    rng = np.random.default_rng(seed)
    truth = grf_object((40, 56), rng)
    rec = truth + noise * (rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape))
    m = compare_objects(rec, truth)
    for part in ("amplitude", "phase"):
        for name in ("frc50", "frc17"):
            px, cycles = m[part][f"{name}_px"], m[part][f"{name}_cycles_per_px"]
            if math.isinf(px):
                assert cycles == 0.0                  # "not resolved"
            else:
                assert 2.0 <= px <= 40.0 and cycles == pytest.approx(1 / px)


def test_compare_objects_says_not_resolved_for_an_unrelated_reconstruction():
    rng = np.random.default_rng(7)
    truth = grf_object((48, 48), rng, correlation_length=6.0)
    unrelated = grf_object((48, 48), rng, correlation_length=6.0)
    m = compare_objects(unrelated, truth)
    assert m["amplitude"]["frc50_px"] == math.inf and m["amplitude"]["frc50_cycles_per_px"] == 0.0
    assert m["phase"]["frc50_px"] == math.inf
    json.dumps(m)


# -- the scored region -------------------------------------------------------------------------

def test_metric_region_leaves_out_the_faint_tails_of_the_probe():
    cov = np.full((60, 80), 1e-7)                          # a defocused probe's tails everywhere
    cov[10:50, 12:70] = 0.05                               # lit by the edge of the probe only
    cov[14:46, 16:66] = 4.0                                # well lit
    assert METRIC_COVERAGE_THRESHOLD == 0.1
    assert metric_region(cov) == (14, 46, 16, 66)
    assert metric_region(cov, threshold=0.01) == (10, 50, 12, 70)
    assert metric_region(cov, threshold=1e-9) == (0, 60, 0, 80)
    np.testing.assert_array_equal(metric_mask(cov), cov >= 0.4)
    assert metric_region(np.zeros((20, 20))) is None
    small = np.zeros((40, 40))
    small[5:15, 5:30] = 1.0                                # 10 rows: below the SSIM window
    assert metric_region(small) is None
    assert metric_region(small, min_side=10) == (5, 15, 5, 30)
    with pytest.raises(ValueError, match="threshold"):
        metric_region(cov, threshold=0.0)
    with pytest.raises(ValueError, match="2-D"):
        metric_mask(np.ones(4))


def test_the_scanned_area_fills_the_holes_a_structured_probe_leaves_inside_the_scan():
    """A diffuser's dark speckles, repeated by a raster scan (the demo's: N=32, radius 8,
    8 px steps), leave isolated pixels below the threshold inside the scan: figures show
    them (they are in the scored box) and still leave out the faint tails outside."""
    from ptycho.simulate import diffuser_probe
    from ptycho.stitching import Stitcher
    from ptycho.stitching import probe_window

    axis = np.arange(24.0, 136.0, 8.0)
    xy = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    stitcher = Stitcher((160, 160), 32, window=probe_window(diffuser_probe(32, radius=8)))
    stitcher.add(np.ones((len(xy), 32, 32), np.complex64), xy)      # what reconstruct weighs
    cov = stitcher.coverage
    lit, area = metric_mask(cov), scanned_area(cov)
    r0, r1, c0, c1 = metric_region(cov)
    inside = np.zeros_like(lit)
    inside[r0 + 8:r1 - 8, c0 + 8:c1 - 8] = True
    assert (~lit & inside).sum() > 100                     # the holes this test is about
    assert area[inside].all()                              # filled in the scanned area
    np.testing.assert_array_equal(area | lit, area)        # it only adds pixels
    assert not area[:r0].any() and not area[r1:].any()     # the tails stay out
    assert not area[:, :c0].any() and not area[:, c1:].any()


# -- alignment ---------------------------------------------------------------------------------

@given(seed=seeds, offset=st.floats(-10.0, 10.0))
def test_a_known_phase_offset_is_removed_exactly(seed, offset):
    ref = math.pi * (2 * _img(seed % 1000, (16, 16)) - 1) * 0.9
    c, gx, gy = fit_phase_ramp(ref + offset, ref)
    assert _wrapped_close(c, offset) and gx == 0 and gy == 0
    np.testing.assert_allclose(align_phase(ref + offset, ref), ref, atol=1e-9)


def _wrapped_close(a, b, tol=1e-9):
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi) < tol


@given(seed=seeds, c=st.floats(-3.0, 3.0), gx=st.floats(-1.5, 1.5), gy=st.floats(-1.5, 1.5))
def test_a_known_phase_plane_is_removed_exactly_even_when_it_wraps(seed, c, gx, gy):
    ref = 0.5 * _img(seed % 1000, (24, 20))
    yy, xx = np.mgrid[0:24, 0:20]
    phase = np.angle(np.exp(1j * (ref + c + gx * xx + gy * yy)))      # wrapped, as measured
    fc, fgx, fgy = fit_phase_ramp(phase, ref, plane=True)
    assert fgx == pytest.approx(gx, abs=1e-8) and fgy == pytest.approx(gy, abs=1e-8)
    assert _wrapped_close(fc, c, 1e-7)
    np.testing.assert_allclose(align_phase(phase, ref, plane=True), ref, atol=1e-7)


def test_phase_alignment_with_a_mask_ignores_the_rest():
    ref = np.zeros((16, 16))
    phase = ref + 0.7
    phase[:4] = 2.5                         # garbage outside the mask
    mask = np.ones((16, 16), bool)
    mask[:4] = False
    assert fit_phase_ramp(phase, ref, mask=mask)[0] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no pixels"):
        fit_phase_ramp(phase, ref, mask=np.zeros((16, 16), bool))


def test_amplitude_scale_is_the_least_squares_factor():
    rng = np.random.default_rng(0)
    g = rng.random((10, 10)) + 0.5
    assert amplitude_scale(0.25 * g, g) == pytest.approx(4.0)
    np.testing.assert_allclose(align_amplitude(0.25 * g, g), g)
    a = g + 0.1 * rng.standard_normal(g.shape)
    s = amplitude_scale(a, g)
    cost = lambda t: np.sum((t * a - g) ** 2)        # noqa: E731
    assert cost(s) < cost(s * 1.01) and cost(s) < cost(s * 0.99)
    with pytest.raises(ValueError, match="all-zero"):
        amplitude_scale(np.zeros(3), np.ones(3))


# -- compare_objects ---------------------------------------------------------------------------

def test_compare_identical_objects():
    gt = grf_object((32, 32), np.random.default_rng(0))
    m = compare_objects(gt, gt)
    for part in ("amplitude", "phase"):
        assert m[part]["ssim"] == 1.0
        assert m[part]["psnr"] == math.inf
        assert m[part]["mae"] == 0.0 and m[part]["mse"] == 0.0
        assert m[part]["frc50_cycles_per_px"] == 0.5 and m[part]["frc50_px"] == 2.0
        assert m[part]["frc17_px"] == 2.0
    assert m["amplitude_scale"] == 1.0 and m["phase_offset"] == 0.0
    json.dumps(m)                                           # plain numbers: serialisable


def test_compare_objects_removes_scale_offset_and_plane():
    gt = grf_object((32, 40), np.random.default_rng(1), phase_range=(-1.0, 1.0))
    yy, xx = np.mgrid[0:32, 0:40]
    rec = 3.0 * gt * np.exp(1j * (2.0 + 0.4 * xx - 0.25 * yy))
    m = compare_objects(rec, gt, phase_plane=True)
    assert m["amplitude_scale"] == pytest.approx(1 / 3)
    assert m["phase_offset"] == pytest.approx(2.0, abs=1e-5)
    assert m["phase_ramp"] == pytest.approx((0.4, -0.25), abs=1e-6)
    assert m["amplitude"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["phase"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["phase"]["mae"] < 1e-5
    # without the plane the ramp stays and the phase scores drop
    m2 = compare_objects(rec, gt)
    assert m2["phase"]["ssim"] < 0.5 and m2["phase"]["mae"] > 0.5


def test_compare_objects_on_a_region_and_with_noise():
    rng = np.random.default_rng(2)
    gt = grf_object((48, 48), rng)
    rec = gt.copy()
    rec[:12] = 0                                   # an unscanned border, outside the region
    rec[12:, :] += 0.02 * (rng.standard_normal((36, 48)) + 1j * rng.standard_normal((36, 48)))
    whole = compare_objects(rec, gt)
    inside = compare_objects(rec, gt, region=(12, 48, 0, 48))
    same = compare_objects(rec, gt, region=(slice(12, 48), slice(0, 48)))
    assert inside == same
    assert inside["amplitude"]["psnr"] > whole["amplitude"]["psnr"] + 3
    assert 0.5 < inside["amplitude"]["ssim"] < 1.0
    with pytest.raises(ValueError, match="selects no pixels"):
        compare_objects(rec, gt, region=(10, 10, 0, 48))
    with pytest.raises(ValueError, match="region must be"):
        compare_objects(rec, gt, region="centre")


def test_compare_objects_with_constant_reference_phase():
    amp = 0.5 + 0.5 * _img(6)
    gt = amp.astype(complex)                      # phase identically zero
    m = compare_objects(gt, gt)
    assert m["phase"]["psnr"] == math.inf and m["phase"]["ssim"] == 1.0
    m = compare_objects(gt * np.exp(0.1j * _img(7)), gt)
    assert math.isnan(m["phase"]["psnr"]) and m["phase"]["mae"] > 0
