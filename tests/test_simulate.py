"""Tests of ptycho.simulate: objects, probes, scans, photon noise and whole datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho.data.contract import RawData, load_npz, save_npz
from ptycho.physics import far_field_amplitude, translate
from ptycho.simulate import (check_inside, complex_object, defocused_probe, diffraction_intensity,
                             diffuser_probe, disk_probe, fresnel_propagate, gaussian_probe,
                             gaussian_random_field, grf_object, grid_scan, image_object,
                             jittered_grid_scan, lines_object, lines_pattern, load_image,
                             make_probe, make_scan,
                             mean_total_intensity, object_patches, photon_scale,
                             poisson_amplitudes, position_bounds, random_scan, scan_extent,
                             simulate_dataset)
from ptycho.simulate.scans import grid_dims

seeds = st.integers(0, 2**32 - 1)


# -- objects -----------------------------------------------------------------------------------

@pytest.mark.parametrize("maker", [lines_object, grf_object])
def test_objects_respect_the_amplitude_and_phase_ranges(maker):
    obj = maker((48, 40), np.random.default_rng(0), amplitude_range=(0.3, 0.9),
                phase_range=(-1.0, 0.5))
    assert obj.shape == (48, 40) and obj.dtype == np.complex64
    amp, ph = np.abs(obj), np.angle(obj)
    assert amp.min() == pytest.approx(0.3, abs=1e-5) and amp.max() == pytest.approx(0.9, abs=1e-5)
    assert ph.min() >= -1.0 - 1e-5 and ph.max() <= 0.5 + 1e-5
    assert ph.max() - ph.min() > 1.0          # the range is actually used


def test_lines_object_shares_the_pattern_between_amplitude_and_phase():
    obj = lines_object((40, 40), np.random.default_rng(2), amplitude_range=(0.5, 1.0),
                       phase_range=(0.0, 1.0))
    a = (np.abs(obj) - 0.5) / 0.5
    np.testing.assert_allclose(np.angle(obj), a, atol=1e-5)


def test_lines_pattern_marks_each_line_once_and_crossings_add():
    # one horizontal line without blur: every marked pixel carries the same weight
    p = lines_pattern((20, 30), np.random.default_rng(0), n_lines=1, blur=0.0)
    assert set(np.unique(p).tolist()) == {0.0, 1.0}
    assert (p > 0).sum() >= 2


def test_grf_correlation_length_controls_smoothness():
    rng = np.random.default_rng(5)
    rough = gaussian_random_field((128, 128), rng, correlation_length=1.0)
    smooth = gaussian_random_field((128, 128), rng, correlation_length=6.0)
    assert np.abs(np.diff(smooth, axis=1)).mean() < 0.5 * np.abs(np.diff(rough, axis=1)).mean()
    assert rough.min() == 0.0 and rough.max() == 1.0


def test_complex_object_maps_patterns_linearly():
    a = np.array([[0.0, 0.25], [0.5, 1.0]])
    o = complex_object(a, 1 - a, amplitude_range=(0.2, 1.0), phase_range=(-2.0, 2.0))
    np.testing.assert_allclose(np.abs(o), 0.2 + 0.8 * a, atol=1e-6)
    np.testing.assert_allclose(np.angle(o), -2.0 + 4.0 * (1 - a), atol=1e-6)


@pytest.mark.parametrize("bad", [np.array([[1.5]]), np.array([[-0.1]]), np.array([[np.nan]])])
def test_complex_object_rejects_patterns_outside_unit_range(bad):
    with pytest.raises(ValueError, match="amplitude_pattern"):
        complex_object(bad)


def test_complex_object_rejects_bad_ranges():
    with pytest.raises(ValueError, match="amplitude_range"):
        complex_object(np.zeros((2, 2)), amplitude_range=(1.0, 0.5))
    with pytest.raises(ValueError, match="phase_range"):
        complex_object(np.zeros((2, 2)), phase_range=(0.0, math.inf))


def test_image_object_from_real_rgb_and_complex_images():
    img = np.array([[0.0, 1.0], [2.0, 4.0]])
    o = image_object(img, amplitude_range=(0.5, 1.0), phase_range=(0.0, 2.0))
    np.testing.assert_allclose(np.abs(o), 0.5 + 0.5 * img / 4, atol=1e-6)
    np.testing.assert_allclose(np.angle(o), 2.0 * img / 4, atol=1e-6)
    rgb = np.stack([img, img, img], axis=-1)
    np.testing.assert_allclose(image_object(rgb), image_object(img), atol=1e-6)
    c = np.array([[1 + 1j, 2j]])
    np.testing.assert_array_equal(image_object(c), c.astype(np.complex64))
    with pytest.raises(ValueError, match="2-D"):
        image_object(np.zeros((2, 2, 2, 2)))


def test_image_object_takes_separate_amplitude_and_phase_images():
    amp_img = np.array([[0.0, 1.0], [2.0, 4.0]])
    ph_img = np.array([[10.0, 30.0], [20.0, 10.0]])          # its own range: 10 .. 30
    o = image_object(amp_img, (0.5, 1.0), (-1.0, 1.0), phase_image=ph_img)
    np.testing.assert_allclose(np.abs(o), 0.5 + 0.5 * amp_img / 4, atol=1e-6)
    np.testing.assert_allclose(np.angle(o), -1.0 + 2.0 * (ph_img - 10) / 20, atol=1e-6)
    rgb = np.stack([ph_img] * 3, axis=-1)
    np.testing.assert_allclose(image_object(amp_img, phase_image=rgb),
                               image_object(amp_img, phase_image=ph_img), atol=1e-6)
    with pytest.raises(ValueError, match=r"amplitude image \(2, 2\) and phase image \(2, 3\)"):
        image_object(amp_img, phase_image=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="already is an object"):
        image_object(amp_img.astype(complex), phase_image=ph_img)
    with pytest.raises(ValueError, match="phase image must be real"):
        image_object(amp_img, phase_image=ph_img.astype(complex))
    with pytest.raises(ValueError, match="phase image must be a numeric"):
        image_object(amp_img, phase_image=np.array([["a", "b"]]))


def test_load_image_reads_png_and_npy(tmp_path):
    import matplotlib.image

    img = np.linspace(0, 1, 12 * 10).reshape(12, 10)
    png = tmp_path / "obj.png"
    matplotlib.image.imsave(png, img, cmap="gray")
    got = load_image(png)
    assert got.shape == (12, 10)
    assert np.corrcoef(got.ravel(), img.ravel())[0, 1] > 0.99
    npy = tmp_path / "obj.npy"
    np.save(npy, img)
    np.testing.assert_array_equal(load_image(npy), img)
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    np.save(tmp_path / "obj3.npy", np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        load_image(tmp_path / "obj3.npy")


# -- probes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [16, 17, 64])
@pytest.mark.parametrize("kind", ["disk", "gaussian", "defocus"])
def test_probes_are_centred_complex_and_n_by_n(kind, n):
    p = make_probe(kind, n)
    assert p.shape == (n, n) and p.dtype == np.complex64
    intensity = np.abs(p) ** 2
    r = np.arange(n)
    cy = (intensity.sum(axis=1) * r).sum() / intensity.sum()
    cx = (intensity.sum(axis=0) * r).sum() / intensity.sum()
    assert cy == pytest.approx(n // 2, abs=0.05) and cx == pytest.approx(n // 2, abs=0.05)


def test_disk_probe_radius_and_gaussian_sigma():
    d = disk_probe(32, radius=5, edge=0)
    assert abs(d[16, 21]) == 1.0 and abs(d[16, 22]) == 0.0 and abs(d[21, 16]) == 1.0
    g = gaussian_probe(32, sigma=4.0)
    assert abs(g[16, 20]) == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_fresnel_propagation_is_unitary_and_reversible():
    f = disk_probe(32, 6).astype(complex)
    g = fresnel_propagate(f, 15.0)
    assert np.sum(np.abs(g) ** 2) == pytest.approx(np.sum(np.abs(f) ** 2), rel=1e-10)
    assert not np.allclose(g, f, atol=1e-3)
    np.testing.assert_allclose(fresnel_propagate(g, -15.0), f, atol=1e-10)


def test_defocused_probe_has_curved_phase_and_keeps_its_energy_inside():
    p = defocused_probe(64, radius=8)
    aperture = disk_probe(128, 8, edge=1.0)
    # almost all the energy of the propagated aperture stays in the N x N window
    assert np.sum(np.abs(p) ** 2) > 0.95 * np.sum(np.abs(aperture) ** 2)
    inner = np.abs(p) > 0.2 * np.abs(p).max()
    assert np.ptp(np.angle(p[inner])) > 0.3
    assert not np.allclose(defocused_probe(64, 8, 4.0), p)


def _turned(p: np.ndarray) -> np.ndarray:
    """``p`` turned by 180 degrees about pixel (N // 2, N // 2) (even N)."""
    return np.roll(p[::-1, ::-1], 1, axis=(0, 1))


@pytest.mark.parametrize("kind", ["disk", "gaussian", "defocus"])
def test_the_plain_probes_are_centro_symmetric(kind):
    """The property that gives every single pattern a twin object (diffuser_probe's reason)."""
    p = make_probe(kind, 64).astype(complex)
    np.testing.assert_allclose(_turned(p), p, atol=1e-6 * np.abs(p).max())


def test_diffuser_probe_is_not_centro_symmetric_and_stays_centred():
    p = diffuser_probe(64)
    assert np.abs(_turned(p) - p).max() > 0.3 * np.abs(p).max()
    intensity = np.abs(p) ** 2
    r = np.arange(64)
    cy = (intensity.sum(axis=1) * r).sum() / intensity.sum()
    cx = (intensity.sum(axis=0) * r).sum() / intensity.sum()
    assert abs(cy - 32) < 0.5 and abs(cx - 32) < 0.5      # the screen's tilt is removed
    radius = np.hypot(*np.meshgrid(r - 32, r - 32))
    assert intensity[radius < 16].sum() > 0.98 * intensity.sum()   # inside the object support


def test_diffuser_probe_is_its_seed_and_without_a_screen_the_defocused_probe():
    np.testing.assert_array_equal(diffuser_probe(32, seed=4), make_probe("diffuser", 32, seed=4))
    assert not np.allclose(diffuser_probe(32, seed=4), diffuser_probe(32, seed=5))
    np.testing.assert_allclose(diffuser_probe(64, strength=0.0), defocused_probe(64), atol=1e-6)
    p = diffuser_probe(64, strength=1.0)
    aperture = np.abs(defocused_probe(64, distance=1e-9)) > 0.5      # the bare disk, unpropagated
    screen = np.angle(fresnel_propagate(p, -16.0)[aperture])
    assert 0.5 < np.std(np.angle(np.exp(1j * (screen - screen.mean())))) < 1.5


@pytest.mark.parametrize("call, match", [
    (lambda: make_probe("airy", 16), "unknown probe kind"),
    (lambda: diffuser_probe(16, strength=-1.0), "strength"),
    (lambda: diffuser_probe(16, correlation=0.0), "correlation"),
    (lambda: diffuser_probe(16, pad=0), "pad"),
    (lambda: disk_probe(16, radius=-1), "radius"),
    (lambda: gaussian_probe(1), "N must be an int"),
    (lambda: defocused_probe(16, pad=0), "pad"),
])
def test_probe_errors_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- scans -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["grid", "jitter", "random"])
@pytest.mark.parametrize("n", [16, 17])
def test_scans_keep_every_patch_inside_the_object(kind, n):
    pos, shape = make_scan(kind, 23, n, np.random.default_rng(1), step=3.5)
    assert pos.shape == (23, 2) and pos.dtype == np.float64
    check_inside(pos, shape, n)                    # raises if not
    xmin, xmax, ymin, ymax = position_bounds(shape, n)
    assert pos[:, 0].min() >= xmin and pos[:, 0].max() <= xmax
    assert pos[:, 1].min() >= ymin and pos[:, 1].max() <= ymax


def test_grid_scan_is_a_raster_with_the_step():
    pos = grid_scan(3, 4, 5.0, 16)
    assert pos[0].tolist() == [8.0, 8.0] and pos[1].tolist() == [13.0, 8.0]
    assert pos[4].tolist() == [8.0, 13.0]
    assert scan_extent(pos, 16) == (8 + 10 + 8, 8 + 15 + 8)


@pytest.mark.parametrize("m", [5, 10, 23, 250, 257, 500])
def test_a_grid_of_any_size_covers_its_rectangle_without_a_notch(m):
    from ptycho.stitching import Stitcher

    n = 16
    pos, shape = make_scan("grid", m, n, np.random.default_rng(0), step=4.0)
    assert len(pos) == m
    rows = np.unique(pos[:, 1])
    rows_, cols = grid_dims(m)
    assert len(rows) == rows_
    for y in rows:                         # every row spans the full width: no short last row
        xs = np.sort(pos[pos[:, 1] == y, 0])
        assert xs[0] == pos[:, 0].min() and xs[-1] == pos[:, 0].max()
        assert len(xs) in (cols, cols - 1) and np.diff(xs).max() <= 4.0 * (cols - 1) / (cols - 2) + 1e-9
    # the centres of the patches (the object support) cover the scanned box without a hole
    st_ = Stitcher(shape, n)
    st_.add(np.ones((m, n, n), np.complex64), pos)
    r0, c0 = int(pos[:, 1].min()) - n // 4, int(pos[:, 0].min()) - n // 4
    r1, c1 = int(pos[:, 1].max()) + n // 4, int(pos[:, 0].max()) + n // 4
    assert (st_.coverage[r0:r1, c0:c1] > 0).all()


def test_a_non_square_scan_through_simulate_dataset_has_no_notch():
    raw, obj = simulate_dataset(250, 16, seed=0, nphotons=1e4)
    x, y = raw.xcoords, raw.ycoords
    last = y == y.max()
    assert x[last].min() == x.min() and x[last].max() == x.max()       # was 10 of 16 columns
    raw, _ = simulate_dataset(250, 16, scan="jitter", seed=0, nphotons=1e4)
    last = raw.ycoords > raw.ycoords.max() - 2
    assert raw.xcoords[last].max() > raw.xcoords.max() - 4


def test_jittered_grid_moves_points_by_at_most_the_jitter():
    rng = np.random.default_rng(3)
    p = jittered_grid_scan(5, 5, 6.0, 16, 2.0, rng)
    d = p - grid_scan(5, 5, 6.0, 16, origin=10.0)
    assert np.abs(d).max() <= 2.0 and np.abs(d).max() > 1.0
    assert len(np.unique(d.round(6))) > 20            # independent draws


def test_random_scan_covers_the_allowed_region():
    p = random_scan(2000, (100, 60), 20, np.random.default_rng(0))
    assert p[:, 0].min() == pytest.approx(10, abs=0.5) and p[:, 0].max() == pytest.approx(50, abs=0.5)
    assert p[:, 1].min() == pytest.approx(10, abs=0.5) and p[:, 1].max() == pytest.approx(90, abs=0.5)


def test_check_inside_names_the_offending_position():
    with pytest.raises(ValueError, match=r"index 1 \(x=40, y=8\)"):
        check_inside(np.array([[8.0, 8.0], [40.0, 8.0]]), (32, 32), 16)
    with pytest.raises(ValueError, match="smaller than one"):
        position_bounds((8, 40), 16)


def test_make_scan_with_a_too_small_object_fails_clearly():
    with pytest.raises(ValueError, match="outside"):
        make_scan("grid", 100, 16, np.random.default_rng(0), step=4, object_shape=(20, 20))
    with pytest.raises(ValueError, match="unknown scan kind"):
        make_scan("spiral", 10, 16, np.random.default_rng(0))


# -- patches and intensities -------------------------------------------------------------------

@given(seed=seeds, n=st.sampled_from([4, 5, 8, 9]), integer=st.booleans())
def test_object_patches_match_the_translate_reference(seed, n, integer):
    rng = np.random.default_rng(seed)
    obj = (rng.standard_normal((20, 23)) + 1j * rng.standard_normal((20, 23))).astype(np.complex64)
    xmin, xmax, ymin, ymax = position_bounds(obj.shape, n)
    pos = np.stack([rng.uniform(xmin, xmax, 6), rng.uniform(ymin, ymax, 6)], axis=-1)
    pos[0] = (xmax, ymax)                               # the extreme corner is allowed
    if integer:
        pos = np.round(pos)
    got = object_patches(obj, pos, n)
    for m, (x, y) in enumerate(pos):
        ref = translate(obj, np.array([n // 2 - x, n // 2 - y]))[:n, :n]
        np.testing.assert_allclose(got[m], ref, atol=2e-5)


def test_object_patch_centre_lands_on_the_position():
    obj = np.zeros((30, 30), np.complex64)
    obj[12, 17] = 1.0
    p = object_patches(obj, np.array([[17.0, 12.0]]), 8)
    assert p[0, 4, 4] == 1.0 and np.abs(p).sum() == 1.0


@pytest.mark.parametrize("n", [8, 9, 16])
def test_diffraction_intensity_matches_the_reference_far_field(n):
    rng = np.random.default_rng(n)
    obj = lines_object((40, 40), rng)
    probe = defocused_probe(n)
    pos, _ = make_scan("random", 300, n, rng, object_shape=(40, 40))
    got = diffraction_intensity(obj, probe, pos, workers=2)
    ref = far_field_amplitude(probe * object_patches(obj, pos, n).astype(np.complex128)) ** 2
    assert got.dtype == np.float32 and got.shape == (300, n, n)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * ref.max())
    # Parseval per pattern
    np.testing.assert_allclose(got.sum(axis=(1, 2)),
                               (np.abs(probe * object_patches(obj, pos, n)) ** 2).sum(axis=(1, 2)),
                               rtol=1e-4)


# -- noise -------------------------------------------------------------------------------------

def test_photon_scale_and_noise_free_amplitudes_hit_nphotons_exactly():
    rng = np.random.default_rng(0)
    i = rng.random((7, 8, 8)).astype(np.float32)
    assert mean_total_intensity(i) == pytest.approx(i.sum() / 7, rel=1e-6)
    assert photon_scale(i, 500.0) == pytest.approx(500.0 * 7 / i.sum(), rel=1e-6)
    a = poisson_amplitudes(i, 500.0, noise=False)
    assert (a.astype(np.float64) ** 2).sum(axis=(1, 2)).mean() == pytest.approx(500.0, rel=1e-5)
    np.testing.assert_allclose(a ** 2 / i, (a ** 2 / i).flat[0], rtol=1e-5)   # one scale


def test_poisson_counts_are_integers_with_poisson_statistics():
    i = np.full((600, 16, 16), 1.0, np.float32)             # 20 photons per pixel expected
    a = poisson_amplitudes(i, 20.0 * 256, seed=4)
    counts = a.astype(np.float64) ** 2
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    assert counts.mean() == pytest.approx(20.0, rel=0.01)
    assert counts.var() == pytest.approx(20.0, rel=0.03)


def test_noise_is_reproducible_and_independent_of_workers():
    i = np.random.default_rng(1).random((700, 8, 8)).astype(np.float32)
    a1 = poisson_amplitudes(i, 1e4, seed=9, workers=1)
    a3 = poisson_amplitudes(i, 1e4, seed=9, workers=3)
    np.testing.assert_array_equal(a1, a3)
    ss = np.random.SeedSequence(9)
    np.testing.assert_array_equal(poisson_amplitudes(i, 1e4, seed=ss), a1)
    np.testing.assert_array_equal(poisson_amplitudes(i, 1e4, seed=ss), a1)   # ss not consumed
    assert not np.array_equal(poisson_amplitudes(i, 1e4, seed=10), a1)


@pytest.mark.parametrize("nphotons", [0.0, -5.0, math.nan, math.inf])
def test_poisson_rejects_bad_photon_counts(nphotons):
    with pytest.raises(ValueError, match="nphotons"):
        poisson_amplitudes(np.ones((1, 4, 4)), nphotons)


def test_poisson_rejects_negative_or_zero_intensity():
    with pytest.raises(ValueError, match=">= 0"):
        poisson_amplitudes(-np.ones((1, 4, 4)), 10.0)
    with pytest.raises(ValueError, match="mean total intensity"):
        poisson_amplitudes(np.zeros((1, 4, 4)), 10.0)


# -- datasets ----------------------------------------------------------------------------------

def test_simulated_dataset_follows_the_forward_model_exactly_without_noise():
    raw, obj = simulate_dataset(30, 16, scan="jitter", probe="defocus", object="grf",
                                nphotons=1e6, seed=2, noise=False)
    pos = np.stack([raw.xcoords, raw.ycoords], axis=-1)
    assert np.any(pos != np.round(pos))                      # sub-pixel positions exercised
    patches = np.stack([translate(obj, np.array([8 - x, 8 - y]))[:16, :16] for x, y in pos])
    intensity = far_field_amplitude(raw.probe * patches) ** 2
    expected = np.sqrt(1e6 * intensity / intensity.sum(axis=(1, 2)).mean())
    np.testing.assert_allclose(raw.diffraction, expected, rtol=2e-4, atol=1e-3 * expected.max())
    assert raw.object_guess is not None and np.array_equal(raw.object_guess, obj)


def test_simulated_counts_average_nphotons_per_pattern():
    raw, _ = simulate_dataset(400, 16, nphotons=1e5, seed=0)
    totals = (raw.diffraction.astype(np.float64) ** 2).sum(axis=(1, 2))
    assert totals.mean() == pytest.approx(1e5, rel=0.01)
    counts = raw.diffraction.astype(np.float64) ** 2
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)


def test_dataset_is_seeded_and_reproducible():
    a, oa = simulate_dataset(50, 16, scan="random", nphotons=1e4, seed=11, workers=1)
    b, ob = simulate_dataset(50, 16, scan="random", nphotons=1e4, seed=11, workers=2)
    c, _ = simulate_dataset(50, 16, scan="random", nphotons=1e4, seed=12)
    np.testing.assert_array_equal(a.diffraction, b.diffraction)
    np.testing.assert_array_equal(a.xcoords, b.xcoords)
    np.testing.assert_array_equal(oa, ob)
    assert not np.array_equal(a.diffraction, c.diffraction)
    assert not np.array_equal(a.xcoords, c.xcoords)


def test_dataset_with_given_object_probe_and_positions():
    rng = np.random.default_rng(0)
    obj = grf_object((40, 50), rng)
    probe = gaussian_probe(16, 3.0)
    pos = np.array([[8.0, 8.0], [20.5, 15.25], [42.0, 32.0]])
    raw, gt = simulate_dataset(N=16, object=obj, probe=probe, scan=pos, nphotons=1e3, seed=1)
    assert gt is not obj and np.array_equal(gt, obj)
    np.testing.assert_array_equal(raw.xcoords, pos[:, 0])
    np.testing.assert_array_equal(raw.probe, probe)
    with pytest.raises(ValueError, match="outside"):
        simulate_dataset(N=16, object=obj, scan=np.array([[43.0, 8.0]]))


def test_grid_over_a_given_object_spans_it():
    obj = image_object(np.random.default_rng(0).random((70, 90)))
    raw, _ = simulate_dataset(16, 16, object=obj, scan="grid", nphotons=1e3, seed=0)
    check_inside(np.stack([raw.xcoords, raw.ycoords], -1), obj.shape, 16)
    assert raw.xcoords.max() - raw.xcoords.min() >= 90 - 16 - 3
    assert raw.ycoords.max() - raw.ycoords.min() >= 70 - 16 - 3


def test_jittered_grid_over_a_given_object_leaves_room_for_the_jitter():
    obj = grf_object((60, 70), np.random.default_rng(1))
    raw, _ = simulate_dataset(25, 16, object=obj, scan="jitter", jitter=2.5, nphotons=1e3, seed=0)
    pos = np.stack([raw.xcoords, raw.ycoords], -1)
    check_inside(pos, obj.shape, 16)
    assert np.any(pos != np.round(pos))
    assert pos[:, 0].max() - pos[:, 0].min() > 70 - 16 - 2 * 2.5 - 8


@pytest.mark.parametrize("kwargs, match", [
    (dict(scan="grid"), "n_patterns is required"),
    (dict(n_patterns=4, scan="spiral"), "unknown scan kind"),
    (dict(n_patterns=4, object="stars"), "unknown object kind"),
    (dict(n_patterns=4, probe="airy"), "unknown probe kind"),
    (dict(n_patterns=4, probe=np.ones((8, 8))), r"probe must have shape \(16, 16\)"),
    (dict(n_patterns=4, nphotons=0.0), "nphotons"),
    (dict(n_patterns=0), "n_positions"),
    (dict(n_patterns=3, scan=np.zeros((2, 2)) + 8), "contradicts"),
    (dict(n_patterns=400, object=np.ones((20, 20))), "do not fit"),
])
def test_dataset_errors_name_the_problem(kwargs, match):
    kwargs.setdefault("N", 16)
    with pytest.raises(ValueError, match=match):
        simulate_dataset(**kwargs)


def test_dataset_round_trips_through_the_npz_contract(tmp_path):
    raw, obj = simulate_dataset(20, 16, scan="jitter", nphotons=1e4, seed=5)
    assert isinstance(raw, RawData)
    path = tmp_path / "sim.npz"
    save_npz(raw, path)
    back = load_npz(path)
    np.testing.assert_array_equal(back.diffraction, raw.diffraction)
    np.testing.assert_array_equal(back.probe, raw.probe)
    np.testing.assert_array_equal(back.ycoords, raw.ycoords)
    np.testing.assert_array_equal(back.object_guess, obj)
