"""Tests of ptycho.stitching: exact reassembly, the bilinear splat, streaming, speed."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho.physics import central_mask, translate
from ptycho.simulate import grf_object, object_patches
from ptycho.simulate.probes import diffuser_probe, disk_probe
from ptycho.stitching import (Stitcher, extent_of, make_window, probe_window, sparse_scan,
                              stitch_patches)

seeds = st.integers(0, 2**32 - 1)


def _object(rng, shape=(40, 44)):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _crops(obj, pos, n):
    """Exact integer crops: patch pixel (r, c) = obj[y - N//2 + r, x - N//2 + c]."""
    return np.stack([obj[int(y) - n // 2:int(y) - n // 2 + n, int(x) - n // 2:int(x) - n // 2 + n]
                     for x, y in pos])


def _integer_positions(rng, shape, n, m):
    h, w = shape
    return np.stack([rng.integers(n // 2, w - n + n // 2 + 1, m),
                     rng.integers(n // 2, h - n + n // 2 + 1, m)], axis=-1).astype(float)


# -- windows -----------------------------------------------------------------------------------

def test_default_window_is_the_models_central_support():
    for n in (8, 16, 64):
        np.testing.assert_array_equal(make_window(n), central_mask(n))
        assert make_window(n).sum() == (n // 2) ** 2


def test_integer_window_is_centred_on_the_centre_pixel():
    w = make_window(9, 3)
    assert w.sum() == 9 and w[4, 4] == 1 and w[3:6, 3:6].sum() == 9
    assert make_window(8, "full").sum() == 64 and make_window(8, 8).sum() == 64


@pytest.mark.parametrize("bad, match", [
    (0, r"window side"), (9, r"window side"), ("middle", "window must be"),
    (np.ones((4, 4)), r"shape \(8, 8\)"), (-np.ones((8, 8)), ">= 0"), (np.zeros((8, 8)), "zero"),
])
def test_window_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        make_window(8, bad)


# -- exactness ---------------------------------------------------------------------------------

@given(seed=seeds, n=st.sampled_from([4, 5, 8, 9, 16]), window=st.sampled_from([None, "full", 3]),
       subpixel=st.sampled_from(["bilinear", "round"]))
def test_stitching_exact_crops_returns_the_object_over_the_covered_area(seed, n, window, subpixel):
    rng = np.random.default_rng(seed)
    obj = _object(rng)
    pos = _integer_positions(rng, obj.shape, n, 25)
    st_ = Stitcher(obj.shape, n, window=window, subpixel=subpixel)
    st_.add(_crops(obj, pos, n), pos)
    out = st_.result(fill_value=np.nan)
    covered = st_.coverage > 0
    assert covered.sum() > 0
    np.testing.assert_allclose(out[covered], obj[covered], rtol=1e-6, atol=1e-6)
    assert np.all(np.isnan(out[~covered]))


def test_coverage_counts_the_windows_that_reach_a_pixel():
    n = 8
    pos = np.array([[4.0, 4.0], [6.0, 4.0], [6.0, 4.0]])
    st_ = Stitcher((12, 16), n, window="full")
    st_.add(np.ones((3, n, n)), pos)
    cov = st_.coverage
    assert cov[0, 0] == 1 and cov[0, 3] == 3 and cov[0, 9] == 2 and cov[0, 10] == 0
    assert cov.sum() == 3 * n * n
    assert st_.count == 3


def test_round_mode_rounds_to_the_nearest_pixel():
    rng = np.random.default_rng(1)
    obj = _object(rng, (30, 30))
    pos = _integer_positions(rng, obj.shape, 8, 10)
    jitter = rng.uniform(-0.49, 0.49, pos.shape)
    st_ = Stitcher(obj.shape, 8, window="full", subpixel="round")
    st_.add(_crops(obj, pos, 8), pos + jitter)
    covered = st_.coverage > 0
    np.testing.assert_allclose(st_.result()[covered], obj[covered], atol=1e-6)


@given(seed=seeds, n=st.sampled_from([4, 5, 8]), window=st.sampled_from([None, "full", 3]))
def test_bilinear_splat_equals_translating_the_padded_patches(seed, n, window):
    """Definition of the sub-pixel mode: sum_k T_k(pad(w p_k)) / sum_k T_k(pad(w))."""
    rng = np.random.default_rng(seed)
    shape = (20, 23)
    m = 6
    pos = np.stack([rng.uniform(n // 2, shape[1] - n + n // 2 - 1, m),
                    rng.uniform(n // 2, shape[0] - n + n // 2 - 1, m)], axis=-1)
    patches = _object(rng, (m, n, n))
    wdw = make_window(n, window)
    num = np.zeros(shape, complex)
    den = np.zeros(shape)
    for p, (x, y) in zip(patches, pos):
        canvas = np.zeros(shape, complex)
        canvas[:n, :n] = p * wdw
        weight = np.zeros(shape)
        weight[:n, :n] = wdw
        shift = np.array([x - n // 2, y - n // 2])
        num += translate(canvas, shift)
        den += translate(weight, shift)
    st_ = Stitcher(shape, n, window=window)
    st_.add(patches, pos)
    np.testing.assert_allclose(st_.coverage, den, atol=1e-6)   # float32 weights for complex64
    expected = np.where(den > 1e-6, num / np.where(den > 1e-6, den, 1), 0)
    np.testing.assert_allclose(st_.result(), expected, rtol=1e-5, atol=1e-5)


def test_bilinear_recovers_a_linear_object_from_one_sub_pixel_crop():
    yy, xx = np.mgrid[0:30, 0:30]
    obj = (0.3 * xx - 0.2 * yy + 1j * (0.1 * yy + 2)).astype(np.complex64)
    pos = np.array([[14.3, 12.7]])
    patch = object_patches(obj, pos, 16)
    st_ = Stitcher(obj.shape, 16, window="full")
    st_.add(patch, pos)
    out = st_.result()
    # interior of the splatted box: rows floor(12.7 - 8) + 1 ... + 15, likewise columns
    np.testing.assert_allclose(out[5:20, 7:22], obj[5:20, 7:22], atol=1e-4)


def test_sub_pixel_crops_of_a_smooth_object_stitch_back_closely():
    rng = np.random.default_rng(0)
    obj = grf_object((64, 64), rng, correlation_length=6.0)
    pos = np.stack([rng.uniform(8, 56, 400), rng.uniform(8, 56, 400)], axis=-1)
    st_ = Stitcher(obj.shape, 16)
    st_.add(object_patches(obj, pos, 16), pos)
    out = st_.result()
    inner = (slice(12, 52), slice(12, 52))
    err = np.abs(out[inner] - obj[inner]).max()
    assert err < 0.03, err
    assert np.abs(out[inner] - obj[inner]).mean() < 0.005


# -- streaming, clipping, grouping --------------------------------------------------------------

def test_streaming_in_batches_equals_adding_everything_at_once():
    rng = np.random.default_rng(3)
    obj = _object(rng, (50, 50))
    pos = np.stack([rng.uniform(8, 42, 300), rng.uniform(8, 42, 300)], axis=-1)
    patches = object_patches(obj, pos, 16)
    whole = Stitcher(obj.shape, 16)
    whole.add(patches, pos)
    streamed = Stitcher(obj.shape, 16)
    order = rng.permutation(300)
    for chunk in np.array_split(order, 7):
        streamed.add(patches[chunk], pos[chunk])
    np.testing.assert_allclose(streamed.result(), whole.result(), atol=1e-5)
    np.testing.assert_allclose(streamed.coverage, whole.coverage, atol=1e-10)


def test_parts_outside_the_canvas_are_dropped():
    obj = _object(np.random.default_rng(4), (20, 20))
    n = 8
    big = np.pad(obj, 12)
    pos = np.array([[2.0, 3.0], [17.5, 18.25], [-6.0, 5.0]])     # partly / wholly outside
    patches = object_patches(big, pos + 12, n)
    st_ = Stitcher(obj.shape, n, window="full")
    st_.add(patches, pos)
    assert st_.coverage[0, 0] > 0 and st_.coverage.sum() < 3 * n * n
    single = Stitcher(obj.shape, n, window="full")
    single.add(patches[:1], pos[:1])
    covered = single.coverage > 0
    np.testing.assert_allclose(single.result()[covered], obj[covered], atol=1e-6)


def test_stitch_patches_uses_global_plus_relative_offsets():
    rng = np.random.default_rng(5)
    obj = _object(rng, (40, 40))
    n = 8
    glob = np.array([[10.0, 12.0], [25.0, 20.0]])
    rel = np.array([[[0, 0], [2, 0], [0, 3], [2, 3]], [[-1, -1], [1, -1], [-1, 1], [1, 1]]],
                   dtype=float)
    pos = (glob[:, None] + rel).reshape(-1, 2)
    patches = _crops(obj, pos, n).reshape(2, 4, n, n)
    out = stitch_patches(patches, glob, rel, window="full", fill_value=np.nan)
    assert out.shape == extent_of(pos, n) == (int(pos[:, 1].max()) + 4, int(pos[:, 0].max()) + 4)
    covered = ~np.isnan(out)
    np.testing.assert_allclose(out[covered], obj[:out.shape[0], :out.shape[1]][covered], atol=1e-6)
    out2 = stitch_patches(patches, glob, rel, shape=(40, 40))
    assert out2.shape == (40, 40) and out2.dtype == np.complex64


@pytest.mark.parametrize("call, match", [
    (lambda: Stitcher((10, 10), 4, subpixel="cubic"), "subpixel"),
    (lambda: Stitcher((0, 10), 4), "positive"),
    (lambda: Stitcher((10, 10), 4, dtype=np.float64), "complex64 or complex128"),
    (lambda: Stitcher((10, 10), 4).add(np.zeros((2, 5, 5)), np.zeros((2, 2))), r"\(P, 4, 4\)"),
    (lambda: Stitcher((10, 10), 4).add(np.zeros((2, 4, 4)), np.zeros((3, 2))), r"\(2, 2\)"),
    (lambda: Stitcher((10, 10), 4).add(np.zeros((1, 4, 4)), np.array([[np.nan, 1.0]])),
     "non-finite"),
    (lambda: stitch_patches(np.zeros((2, 4, 4)), np.zeros((2, 2)), np.zeros((2, 1, 2))),
     r"\(B, C, N, N\)"),
    (lambda: stitch_patches(np.zeros((2, 3, 4, 4)), np.zeros((2, 2)), np.zeros((2, 2, 2))),
     "rel_offsets"),
])
def test_stitching_errors_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_result_can_be_taken_midway_and_accumulation_continues():
    obj = _object(np.random.default_rng(6), (30, 30))
    pos = _integer_positions(np.random.default_rng(7), obj.shape, 8, 20)
    st_ = Stitcher(obj.shape, 8)
    st_.add(_crops(obj, pos[:10], 8), pos[:10])
    first = st_.result()
    st_.add(_crops(obj, pos[10:], 8), pos[10:])
    assert (st_.coverage > 0).sum() > (first != 0).sum()
    covered = st_.coverage > 0
    np.testing.assert_allclose(st_.result()[covered], obj[covered], atol=1e-6)


def test_complex64_accumulators_agree_with_complex128():
    rng = np.random.default_rng(8)
    obj = _object(rng, (40, 40))
    pos = np.stack([rng.uniform(8, 32, 100), rng.uniform(8, 32, 100)], axis=-1)
    patches = object_patches(obj, pos, 16)
    a, b = Stitcher(obj.shape, 16), Stitcher(obj.shape, 16, dtype=np.complex64)
    a.add(patches, pos)
    b.add(patches, pos)
    np.testing.assert_allclose(b.result(), a.result(), atol=1e-5)


# -- a sparse subset of a scan ------------------------------------------------------------------

def _reached(positions, window, shape):
    """Pixels a stitch of patches at ``positions`` reaches (coverage above zero)."""
    st_ = Stitcher(shape, window.shape[0], window=window, subpixel="round")
    st_.add(np.ones((len(positions),) + window.shape, np.complex64), positions)
    return st_.coverage > 0


def test_sparse_scan_of_a_raster_keeps_every_kth_row_and_column_with_the_last():
    xy = np.stack(np.meshgrid(np.arange(16) * 6.0, np.arange(16) * 6.0), -1).reshape(-1, 2) + 32
    window = make_window(64)                                   # the central 32 x 32 square
    assert len(sparse_scan(xy, 6, window)) == 256              # the scan's own step: all
    kept = sparse_scan(xy, 18, window)
    np.testing.assert_array_equal(np.unique(xy[kept, 0]) - 32, [0, 18, 36, 54, 72, 90])
    assert len(kept) == 36 and np.all(np.diff(kept) > 0)
    assert np.array_equal(_reached(xy[kept], window, (160, 160)), _reached(xy, window, (160, 160)))


@given(seeds, st.floats(2.0, 40.0), st.sampled_from([8, 12, 16]))
def test_a_stitch_of_the_sparse_subset_reaches_every_pixel_the_whole_scan_does(seed, spacing, side):
    """Whatever the scan (random points, clusters, gaps) and however sparse, no hole opens:
    the points the target grid misses are added back where their patch reaches a pixel no
    kept patch does."""
    rng = np.random.default_rng(seed)
    n = 16
    xy = rng.uniform(n // 2, 60, (int(rng.integers(1, 80)), 2))
    window = make_window(n, side)
    kept = sparse_scan(xy, spacing, window)
    assert len(kept) >= 1 and np.array_equal(kept, np.unique(kept))
    shape = (80, 80)
    assert np.array_equal(_reached(xy[kept], window, shape), _reached(xy, window, shape))


@pytest.mark.parametrize("positions, spacing, window, match", [
    (np.zeros((0, 2)), 4, np.ones((8, 8)), r"positions must be .* shape \(0, 2\)"),
    (np.full((3, 2), np.nan), 4, np.ones((8, 8)), "finite"),
    (np.zeros((3, 2)), 0, np.ones((8, 8)), "spacing must be a positive number of pixels, got 0"),
    (np.zeros((3, 2)), float("inf"), np.ones((8, 8)), "spacing"),
    (np.zeros((3, 2)), True, np.ones((8, 8)), "spacing"),
    (np.zeros((3, 2)), 4, np.zeros((8, 8)), "some weight above zero"),
    (np.zeros((3, 2)), 4, np.ones((8, 6)), r"shape \(8, 6\)"),
    (np.zeros((3, 2)), 4, np.float64(1.0), r"shape \(\)"),
])
def test_sparse_scan_errors(positions, spacing, window, match):
    with pytest.raises(ValueError, match=match):
        sparse_scan(positions, spacing, window)


# -- the stitching weight of a probe ----------------------------------------------------------

def _neighbour_ratio(window):
    """Median |log| of the ratio of horizontally adjacent weights where both are above 0."""
    both = (window[:, 1:] > 0) & (window[:, :-1] > 0)
    log = np.log(np.where(window > 0, window, 1.0))
    return float(np.median(np.abs(np.diff(log, axis=1))[both]))


def test_smoothing_the_probe_window_follows_the_envelope_and_keeps_the_support():
    speckled = diffuser_probe(64)
    raw = probe_window(speckled)
    np.testing.assert_array_equal(probe_window(speckled, smoothing=0.0), raw)
    smooth = probe_window(speckled, smoothing=1.0)
    assert smooth.max() == 1.0 and np.array_equal(smooth > 0, raw > 0)
    assert _neighbour_ratio(raw) > 0.5 > 0.35 > _neighbour_ratio(smooth)   # 2x -> 1.3x, median
    disk = disk_probe(32)            # exactly 0 outside its disk: still 0 there, smoothed or not
    assert np.array_equal(probe_window(disk, False, smoothing=2.0) > 0,
                          probe_window(disk, False) > 0)


@pytest.mark.parametrize("smoothing", [-1.0, float("nan"), float("inf"), True, "1"])
def test_probe_window_smoothing_errors(smoothing):
    with pytest.raises(ValueError, match=f"smoothing must be a number of pixels >= 0, got "
                                         f"{smoothing!r}".replace("(", r"\(")):
        probe_window(np.ones((8, 8)), smoothing=smoothing)


def test_a_sparse_stitch_weighed_by_the_envelope_averages_out_errors_that_ignore_the_speckle():
    """Why the stitch smooths the probe's intensity: patches whose errors grow where the
    illumination's envelope is weak, not pixel by pixel with its speckle, stitch closest to
    the object with the smoothed weight; the raw speckle makes neighbouring pixels come from
    different patches, and a flat weight gives dim edges as much say as the bright centre."""
    rng = np.random.default_rng(0)
    n = 32
    probe = diffuser_probe(n, radius=8)
    envelope = probe_window(probe, smoothing=1.0)
    truth = grf_object((96, 96), rng)
    grid = np.arange(n // 2, 96 - n // 2 + 1, 4.0)
    xy = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    xy = xy[sparse_scan(xy, 12.0, envelope)]
    clean = object_patches(truth, xy, n)
    noise = rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)
    patches = (clean + 0.2 * noise / np.sqrt(np.maximum(envelope, 1e-3))).astype(np.complex64)
    errors = {}
    for name, window in {"speckle": probe_window(probe), "envelope": envelope,
                         "flat": make_window(n)}.items():
        st_ = Stitcher(truth.shape, n, window=window)
        st_.add(patches, xy)
        error = np.abs(st_.result() - truth)[12:84, 12:84]     # inside every patch's reach
        errors[name] = float(np.sqrt(np.mean(error ** 2)))
    # 0.35 against 0.38 (speckle) and 0.36 (flat)
    assert errors["envelope"] < min(errors["speckle"], errors["flat"]), errors


def test_a_models_stitch_window_is_its_probes_envelope():
    """reconstruct's weight (:func:`window_of`) averages the effective probe's intensity over
    ``STITCH_SMOOTHING_PX``: not the speckle pixel by pixel."""
    from ptycho.config import ModelConfig
    from ptycho.physics import effective_probe
    from ptycho.workflows.reconstruct import STITCH_SMOOTHING_PX, window_of

    cfg = ModelConfig(N=32)
    probe = diffuser_probe(32, radius=8)
    eff = effective_probe(probe, cfg.probe_mask)
    got = window_of(cfg, probe)
    assert STITCH_SMOOTHING_PX > 0
    np.testing.assert_array_equal(got, probe_window(eff, cfg.pad_object,
                                                    smoothing=STITCH_SMOOTHING_PX))
    assert np.abs(got - probe_window(eff, cfg.pad_object)).max() > 0.05


# -- memory -----------------------------------------------------------------------------------
# Time per pattern is measured in the benchmarks (`stitching` section, 100k against 1k), never
# here: a timed test fails on a busy machine. Traced memory is deterministic, so it is a test.

def _stream_peak(n_patterns: int, batch: np.ndarray, rng) -> int:
    """Peak traced bytes to stream ``n_patterns`` through a Stitcher."""
    n = batch.shape[-1]
    shape = (512, 512)
    st_ = Stitcher(shape, n)
    tracemalloc.start()
    for _ in range(n_patterns // len(batch)):
        pos = np.stack([rng.uniform(n // 2, shape[1] - n // 2, len(batch)),
                        rng.uniform(n // 2, shape[0] - n // 2, len(batch))], axis=-1)
        st_.add(batch, pos)
    st_.result()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert st_.count == n_patterns
    return peak


def test_stitching_memory_does_not_grow_with_the_number_of_patterns():
    rng = np.random.default_rng(0)
    batch = _object(rng, (1000, 64, 64))
    peak_small = _stream_peak(1000, batch, rng)
    peak_big = _stream_peak(50_000, batch, rng)
    assert peak_big < 1.5 * peak_small + 2**20, (peak_small, peak_big)
