"""Property-based tests of the numpy reference physics (``ptycho.physics``), the oracle.

Each property pins one convention of ``docs/conventions.md``: translation direction,
sum conservation and linearity of the bilinear shift, extract-after-reassemble, Parseval and
the DC position of the far field, the minimum of the Poisson NLL, and per-group canvases.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho.physics import (canvas_size, crop_center, extract_patches, far_field_amplitude,
                            overlap_constraint, pad_to_canvas, poisson_nll, reassemble_patches,
                            translate)
from ptycho.physics.patches import (central_mask, grid_layout, group_centres,
                                    overlap_constraint_on_grid)

# -- strategies --------------------------------------------------------------------------------

seeds = st.integers(0, 2**32 - 1)
small_n = st.sampled_from([4, 5, 6, 7, 8, 9, 12, 15, 16])   # odd and even sides


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _crc(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


# -- translation -------------------------------------------------------------------------------

@given(h=st.integers(3, 17), w=st.integers(3, 17), data=st.data())
def test_delta_moves_dx_columns_right_and_dy_rows_down(h, w, data):
    row = data.draw(st.integers(0, h - 1), label="row")
    col = data.draw(st.integers(0, w - 1), label="col")
    dy = data.draw(st.integers(-row, h - 1 - row), label="dy")
    dx = data.draw(st.integers(-col, w - 1 - col), label="dx")
    img = np.zeros((h, w))
    img[row, col] = 1.0
    out = translate(img, np.array([dx, dy], dtype=float))
    expected = np.zeros((h, w))
    expected[row + dy, col + dx] = 1.0
    np.testing.assert_array_equal(out, expected)


@given(h=st.integers(3, 12), w=st.integers(3, 12), data=st.data())
def test_delta_leaving_the_image_is_zero_filled(h, w, data):
    row = data.draw(st.integers(0, h - 1))
    col = data.draw(st.integers(0, w - 1))
    dx = data.draw(st.sampled_from([w - col, w - col + 3, -col - 1, -col - 5]))
    img = np.zeros((h, w))
    img[row, col] = 1.0
    assert np.all(translate(img, np.array([dx, 0.0])) == 0.0)


@given(seed=seeds, n=st.integers(8, 20),
       dx=st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False),
       dy=st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False))
def test_subpixel_translation_conserves_the_sum_of_an_interior_image(seed, n, dx, dy):
    rng = _rng(seed)
    img = np.zeros((n, n))
    img[3:n - 3, 3:n - 3] = rng.random((n - 6, n - 6))      # a 3-pixel empty border
    out = translate(img, np.array([dx, dy]))
    np.testing.assert_allclose(out.sum(), img.sum(), rtol=1e-12, atol=1e-12)
    # bilinear interpolation of non-negative data stays non-negative and bounded by the max
    assert out.min() >= -1e-15 and out.max() <= img.max() + 1e-12


@given(seed=seeds, a=st.floats(-3, 3), b=st.floats(-3, 3),
       dx=st.floats(-4.0, 4.0, allow_subnormal=False), dy=st.floats(-4.0, 4.0, allow_subnormal=False))
def test_translation_is_linear(seed, a, b, dx, dy):
    rng = _rng(seed)
    f, g = _crc(rng, (2, 9, 11))
    off = np.array([dx, dy])
    lhs = translate(a * f + b * g, off)
    rhs = a * translate(f, off) + b * translate(g, off)
    np.testing.assert_allclose(lhs, rhs, atol=1e-12 * (1 + abs(a) + abs(b)) * 20)


@given(seed=seeds, fx=st.floats(0.0, 1.0, exclude_max=True), fy=st.floats(0.0, 1.0, exclude_max=True))
def test_subpixel_translation_is_bilinear_interpolation(seed, fx, fy):
    """``out[r, c] = img[r - dy, c - dx]``, read bilinearly (a pinned formula, not a property)."""
    img = _rng(seed).random((6, 7))
    out = translate(img, np.array([fx, fy]))
    r, c = 3, 4
    expected = ((1 - fy) * (1 - fx) * img[r, c] + (1 - fy) * fx * img[r, c - 1]
                + fy * (1 - fx) * img[r - 1, c] + fy * fx * img[r - 1, c - 1])
    assert out[r, c] == pytest.approx(expected, abs=1e-12)


@given(seed=seeds)
def test_translation_broadcasts_one_offset_per_image(seed):
    rng = _rng(seed)
    imgs = rng.random((3, 2, 8, 8))
    offs = rng.uniform(-2, 2, (3, 2, 2))
    out = translate(imgs, offs)
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(out[i, j], translate(imgs[i, j], offs[i, j]), atol=1e-14)


def test_translate_rejects_offsets_without_a_pair_axis():
    with pytest.raises(ValueError, match="length 2"):
        translate(np.zeros((4, 4)), np.zeros(3))


# -- extraction after reassembly -----------------------------------------------------------------

def _grid_offsets(gridsize: int, step: int) -> np.ndarray:
    """(C, 2) integer (x, y) offsets of a centred gridsize x gridsize group."""
    k = np.arange(gridsize) * step
    k = k - (k.max() // 2)
    xx, yy = np.meshgrid(k, k)
    return np.stack([xx.ravel(), yy.ravel()], axis=-1).astype(float)


@given(seed=seeds, gridsize=st.sampled_from([1, 2, 3]), n=small_n, batch=st.integers(1, 3),
       data=st.data())
def test_extract_after_reassemble_returns_crops_of_one_object(seed, gridsize, n, batch, data):
    rng = _rng(seed)
    c = gridsize ** 2
    # integer offsets per group: a jittered grid, so the patches overlap by varying amounts
    step = data.draw(st.integers(1, max(1, n - 1)), label="step")
    rel = np.repeat(_grid_offsets(gridsize, step)[None], batch, axis=0)
    rel = rel + rng.integers(-1, 2, size=rel.shape)
    m = canvas_size(n, rel)
    obj = _crc(rng, (batch, m, m))
    # patch (b, k) is the crop of obj[b] centred at canvas pixel M//2 + rel[b, k]
    patches = extract_patches(obj, rel, n)
    for b in range(batch):
        for k in range(c):
            x0 = m // 2 + int(rel[b, k, 0]) - n // 2
            y0 = m // 2 + int(rel[b, k, 1]) - n // 2
            np.testing.assert_allclose(patches[b, k], obj[b, y0:y0 + n, x0:x0 + n], atol=1e-12)
    canvas = reassemble_patches(patches, rel, m)
    np.testing.assert_allclose(extract_patches(canvas, rel, n), patches, atol=1e-12)
    np.testing.assert_allclose(overlap_constraint(patches, rel, m), patches, atol=1e-12)


@given(seed=seeds, gridsize=st.sampled_from([2, 3]), n=small_n, data=st.data())
def test_groups_centred_on_their_pixel_grid_pass_one_objects_patches_unchanged(
        seed, gridsize, n, data):
    """Scan points that differ by whole pixels (a shared sub-pixel part allowed), grouped
    about :func:`group_centres`: every offset is whole and the overlap constraint returns
    patches cut from one object as they are. About the mean (a half pixel off the grid for
    most groups) the bilinear shift there and back blurs them: what it replaced. Points off
    a common grid keep the mean."""
    rng = _rng(seed)
    step = data.draw(st.integers(1, max(1, n - 1)), label="step")
    shared = data.draw(st.floats(0.0, 0.99), label="shared sub-pixel part")
    rel = _grid_offsets(gridsize, step) + rng.integers(-1, 2, size=(gridsize ** 2, 2))
    pos = (40.0 + shared + rng.permutation(rel))[None]
    centred = pos - group_centres(pos)[:, None]
    np.testing.assert_allclose(centred, np.round(centred), atol=1e-9)
    assert np.all(np.abs(group_centres(pos) - pos.mean(axis=1)) <= 0.5 + 1e-9)
    m = canvas_size(n, centred)
    patches = extract_patches(_crc(rng, (1, m, m)), np.round(centred), n)
    np.testing.assert_allclose(overlap_constraint(patches, centred, m), patches, atol=1e-9)
    jittered = pos + rng.uniform(-0.3, 0.3, pos.shape)       # off a common grid: the mean
    np.testing.assert_array_equal(group_centres(jittered), jittered.mean(axis=1))
    about_mean = pos - pos.mean(axis=1, keepdims=True)
    if np.any(np.abs(about_mean - np.round(about_mean)) > 1e-6):
        blurred = overlap_constraint(patches, about_mean, canvas_size(n, about_mean))
        assert np.abs(blurred - patches).max() > 1e-3


@given(seed=seeds, n=small_n)
def test_reassembly_averages_by_coverage(seed, n):
    rng = _rng(seed)
    rel = np.array([[[0.0, 0.0], [1.0, 0.0]]])
    m = canvas_size(n, rel)
    p = _crc(rng, (1, 2, n, n))
    canvas = reassemble_patches(p, rel, m)
    off = m // 2 - n // 2
    # a pixel covered by both patches holds their mean
    r, col = off + n // 2, off + n // 2 + 1
    expected = 0.5 * (p[0, 0, n // 2, n // 2 + 1] + p[0, 1, n // 2, n // 2])
    assert canvas[0, r, col] == pytest.approx(expected, abs=1e-12)
    # a pixel outside every patch is zero
    assert canvas[0, 0, 0] == 0


@given(seed=seeds, gridsize=st.sampled_from([1, 2, 3]), n=small_n, batch=st.integers(1, 4),
       support_kind=st.sampled_from(["ones", "central"]), data=st.data())
def test_overlap_constraint_on_grid_is_the_constraint_of_whole_pixel_scans(
        seed, gridsize, n, batch, support_kind, data):
    """Groups of whole-pixel scan positions (offsets from the group's mean: whole pixels
    plus one fraction per group, often 1/2) in different layouts in one batch (shuffled
    members, jitter, a drawn fraction): the slicing form equals the interpolating one, with
    or without a support, in float64 and in complex64 (which it keeps)."""
    rng = _rng(seed)
    step = data.draw(st.integers(1, max(1, n - 1)), label="step")
    rel = np.repeat(_grid_offsets(gridsize, step)[None], batch, axis=0)
    rel = rel + rng.integers(-1, 2, size=rel.shape)
    rel = np.stack([rng.permutation(group) for group in rel])
    rel = rel - rel.mean(axis=1, keepdims=True)       # about the mean: a fraction per group
    m = canvas_size(n, rel) + 2 * data.draw(st.integers(0, 2), label="extra margin")
    support = None if support_kind == "ones" else central_mask(n)
    patches = _crc(rng, (batch, gridsize ** 2, n, n))
    layout = grid_layout(rel, n, m)
    assert layout is not None and layout[0].shape == rel.shape
    want = overlap_constraint(patches, rel, m, support)
    np.testing.assert_allclose(overlap_constraint_on_grid(patches, *layout, m, support), want,
                               rtol=0, atol=1e-9 * np.abs(want).max())
    single = overlap_constraint_on_grid(patches.astype(np.complex64), *layout, m, support)
    assert single.dtype == np.complex64
    np.testing.assert_allclose(single, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_grid_layout_refuses_offsets_off_the_grid_and_off_the_canvas():
    rel = np.array([[[-2.0, 0.5], [2.0, -0.5]]])
    corners, fractions = grid_layout(rel, 8, 12)
    assert corners.tolist() == [[[2, 0], [1, 4]]] and fractions.tolist() == [[0.5, 0.0]]
    assert grid_layout(rel + [[0.5, 0.0], [0.0, 0.0]], 8, 14) is None   # fractions differ
    assert grid_layout(rel, 8, 10) is None                              # off the canvas
    assert grid_layout(np.array([[[0.0, 1.5]]]), 8, 10) is None        # interpolation too
    assert grid_layout(np.zeros((0, 2, 2)), 8, 8) is None               # nothing to place
    with pytest.raises(ValueError, match=r"corners must be \(1, 2, 2\) and fractions"):
        overlap_constraint_on_grid(np.zeros((1, 2, 8, 8)), np.zeros((1, 1, 2), int),
                                   np.zeros((1, 2)), 12)


@given(n=small_n, m_extra=st.integers(0, 5))
def test_pad_and_crop_are_inverse_and_keep_the_centre_pixel(n, m_extra):
    m = n + 2 * m_extra
    p = np.zeros((n, n))
    p[n // 2, n // 2] = 1.0
    padded = pad_to_canvas(p, m)
    assert padded[m // 2, m // 2] == 1.0 and padded.sum() == 1.0
    np.testing.assert_array_equal(crop_center(padded, n), p)


def test_pad_to_canvas_rejects_parity_mismatch():
    with pytest.raises(ValueError, match="parity"):
        pad_to_canvas(np.zeros((4, 4)), 7)


@given(seed=seeds, n=st.sampled_from([5, 8, 9]))
def test_a_batch_of_groups_keeps_one_canvas_per_group(seed, n):
    rng = _rng(seed)
    rel = rng.uniform(-2.5, 2.5, (3, 4, 2))
    m = canvas_size(n, rel)
    p = _crc(rng, (3, 4, n, n))
    base = reassemble_patches(p, rel, m)
    q = p.copy()
    q[0] = _crc(rng, (4, n, n))                 # change group 0 only
    changed = reassemble_patches(q, rel, m)
    assert base.shape == (3, m, m)
    assert not np.allclose(changed[0], base[0])
    np.testing.assert_array_equal(changed[1:], base[1:])
    # and each canvas equals that group reassembled alone
    for b in range(3):
        np.testing.assert_allclose(base[b], reassemble_patches(p[b:b + 1], rel[b:b + 1], m)[0],
                                   atol=1e-13)


# -- far field ---------------------------------------------------------------------------------

@given(seed=seeds, n=small_n)
def test_far_field_conserves_energy(seed, n):
    psi = _crc(_rng(seed), (2, n, n))
    a = far_field_amplitude(psi)
    assert a.shape == psi.shape and np.all(a >= 0)
    np.testing.assert_allclose((a ** 2).sum(axis=(-2, -1)), (np.abs(psi) ** 2).sum(axis=(-2, -1)),
                               rtol=1e-12)


@given(n=small_n, value=st.floats(0.1, 10.0))
def test_far_field_puts_dc_at_the_centre_pixel(n, value):
    a = far_field_amplitude(np.full((n, n), value, dtype=complex))
    assert a[n // 2, n // 2] == pytest.approx(value * n, rel=1e-12)   # |sum| / N
    a[n // 2, n // 2] = 0.0
    assert np.abs(a).max() < 1e-9 * value * n


@given(seed=seeds, n=small_n)
def test_far_field_of_a_shifted_exit_wave_has_the_same_amplitude(seed, n):
    psi = _crc(_rng(seed), (n, n))
    np.testing.assert_allclose(far_field_amplitude(np.roll(psi, (1, 2), axis=(0, 1))),
                               far_field_amplitude(psi), atol=1e-10)


# -- Poisson NLL -------------------------------------------------------------------------------

@given(seed=seeds, photons=st.sampled_from([1.0, 10.0, 1e3, 1e5]))
def test_poisson_nll_is_smallest_at_the_true_intensity(seed, photons):
    rng = _rng(seed)
    intensity = photons * rng.random((4, 8, 8)) + 0.5
    amp = np.sqrt(intensity)
    scales = np.linspace(0.5, 1.5, 41)                       # 1.0 is scales[20]
    losses = [poisson_nll(np.sqrt(s) * amp, amp, 1e-9) for s in scales]
    assert int(np.argmin(losses)) == 20
    assert losses[20] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(losses[:21]) < 0) and np.all(np.diff(losses[20:]) > 0)


@given(seed=seeds)
def test_poisson_nll_minimum_over_a_scale_is_the_count_ratio(seed):
    """For noisy counts ``k`` the NLL of ``s * I`` is minimal at ``s = sum k / sum I``."""
    rng = _rng(seed)
    intensity = 50.0 * rng.random((3, 8, 8)) + 1.0
    counts = rng.poisson(intensity).astype(float)
    s_star = counts.sum() / intensity.sum()
    scales = s_star * np.array([0.9, 0.99, 1.0, 1.01, 1.1])
    losses = [poisson_nll(np.sqrt(s * intensity), np.sqrt(counts), 1e-12) for s in scales]
    assert int(np.argmin(losses)) == 2
