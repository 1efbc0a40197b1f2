"""Every backend's physics ops agree with the numpy float64 reference (ptycho.physics).

Inputs are drawn by hypothesis and made float32-representable *before* both sides see them,
so that every difference measured is the backend's own float32 rounding; bounds come from
the tolerance table (``parity/tolerances.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ptycho.physics as ref

from backend_testing import assert_close, images

# the backend fixture is function-scoped; it is the same object for every example
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

offset_values = st.one_of(st.integers(-6, 6).map(float),
                          st.floats(-25.0, 25.0, width=32, allow_nan=False,
                                    allow_infinity=False, allow_subnormal=False))


# ------------------------------------------------------------------ delta tests (the sign)

def test_translate_delta_pins_direction(backend):
    img = np.zeros((5, 6), np.float32)
    img[2, 2] = 1.0
    out = backend.translate(img, np.array([1.0, -2.0]))   # one column right, two rows up
    assert out.dtype == np.float32
    assert [tuple(i) for i in np.argwhere(out != 0)] == [(0, 3)]
    assert out[0, 3] == 1.0
    np.testing.assert_array_equal(out, ref.translate(img, np.array([1.0, -2.0])))


def test_translate_subpixel_splits_weight_rightwards_and_down(backend):
    img = np.zeros((6, 6), np.float32)
    img[2, 2] = 1.0
    out = backend.translate(img, np.array([0.25, 0.5]))
    expected = np.zeros((6, 6))
    expected[2, 2], expected[2, 3] = 0.75 * 0.5, 0.25 * 0.5
    expected[3, 2], expected[3, 3] = 0.75 * 0.5, 0.25 * 0.5
    np.testing.assert_array_equal(out, expected)
    img = np.zeros((6, 6), np.float32)
    img[3, 3] = 1.0
    out = backend.translate(img, np.array([-0.25, 0.0]))     # a quarter pixel left
    expected = np.zeros((6, 6))
    expected[3, 3], expected[3, 2] = 0.75, 0.25
    np.testing.assert_array_equal(out, expected)


def test_reassemble_places_a_patch_at_its_offset(backend):
    n, m = 8, 16
    patches = np.zeros((1, 1, n, n), np.float32)
    patches[0, 0, n // 2, n // 2] = 1.0
    canvas = backend.reassemble_patches(patches, np.array([[[3.0, -1.0]]]), m)
    (r, c), = np.argwhere(canvas[0] != 0)
    assert (r, c) == (m // 2 - 1, m // 2 + 3)
    assert canvas[0, r, c] == 1.0


def test_one_offset_broadcasts_over_a_stack(backend):
    stack = images(4, (3, 7, 7), False)
    out = backend.translate(stack, np.array([1.5, -0.5]))
    for i in range(3):
        assert_close(out[i], ref.translate(stack[i], np.array([1.5, -0.5])),
                     "translate.translate", scale=np.abs(stack).max())


# ------------------------------------------------------------------ agreement with the reference

@fixture_ok
@given(seed=st.integers(0, 2 ** 31), lead=st.sampled_from([(), (1,), (3,), (2, 3)]),
       h=st.integers(3, 20), w=st.integers(3, 20), complex_=st.booleans(),
       per_image=st.booleans(), data=st.data())
def test_translate_matches_reference(backend, seed, lead, h, w, complex_, per_image, data):
    img = images(seed, lead + (h, w), complex_)
    oshape = (lead + (2,)) if per_image else (2,)
    off = data.draw(hnp.arrays(np.float32, oshape, elements=offset_values))
    out = backend.translate(img, off)
    assert out.dtype == (np.complex64 if complex_ else np.float32)
    assert_close(out, ref.translate(img, off), "translate.translate", scale=np.abs(img).max())


@fixture_ok
@given(seed=st.integers(0, 2 ** 31), b=st.integers(1, 3), h=st.integers(2, 33),
       w=st.integers(2, 33), complex_=st.booleans())
def test_far_field_matches_reference(backend, seed, b, h, w, complex_):
    psi = images(seed, (b, h, w), complex_)
    out = backend.far_field_amplitude(psi)
    assert out.dtype == np.float32
    assert_close(out, ref.far_field_amplitude(psi), "physics.far_field")


def test_far_field_is_orthonormal_and_centred(backend):
    a = backend.far_field_amplitude(np.ones((4, 4), np.complex64))
    assert a[2, 2] == pytest.approx(4.0, rel=1e-7)
    assert np.all(np.delete(a.ravel(), 2 * 4 + 2) < 1e-6)
    psi = images(1, (16, 16), True)
    assert np.sum(backend.far_field_amplitude(psi) ** 2) == pytest.approx(
        np.sum(np.abs(psi) ** 2), rel=1e-5)


@fixture_ok
@given(seed=st.integers(0, 2 ** 31), n=st.integers(4, 17))
def test_illuminate_matches_reference(backend, seed, n):
    probe = images(seed, (n, n), True)
    obj = images(seed + 1, (2, 3, n, n), True)
    out = backend.illuminate(probe, obj)
    assert out.dtype == np.complex64
    assert_close(out, ref.illuminate(probe, obj), "physics.illuminate")


def _groups(data, seed, gridsize, n, complex_, support_kind):
    """Patches (B, C, N, N), offsets (B, C, 2), canvas side, support, all float32-exact."""
    b = data.draw(st.integers(1, 3), label="B")
    c = gridsize ** 2
    rel = data.draw(hnp.arrays(np.float32, (b, c, 2),
                               elements=st.floats(-6.0, 6.0, width=32, allow_subnormal=False)),
                    label="rel_offsets")
    if data.draw(st.booleans(), label="whole pixels"):    # a scan grid: one tap per shift
        rel = np.round(rel)
    m = ref.canvas_size(n, rel) + 2 * data.draw(st.integers(0, 2), label="extra margin")
    support = ref.central_mask(n).astype(np.float32) if support_kind == "central" else None
    patches = images(seed, (b, c, n, n), complex_)
    if support is not None:
        patches = patches * support          # the network's patches are zero outside it
    return patches, rel, m, support


group_args = dict(seed=st.integers(0, 2 ** 31), gridsize=st.sampled_from([1, 2]),
                  n=st.integers(4, 17), complex_=st.booleans(),
                  support_kind=st.sampled_from(["none", "central"]), data=st.data())


@fixture_ok
@given(**group_args)
def test_reassemble_matches_reference(backend, seed, gridsize, n, complex_, support_kind, data):
    patches, rel, m, support = _groups(data, seed, gridsize, n, complex_, support_kind)
    out = backend.reassemble_patches(patches, rel, m, support)
    expected = ref.reassemble_patches(patches, rel, m, support)
    assert out.shape == (patches.shape[0], m, m)
    assert_close(out, expected, "translate.reassemble",
                 scale=max(np.abs(expected).max(), np.abs(patches).max()))


@fixture_ok
@given(**group_args)
def test_extract_matches_reference(backend, seed, gridsize, n, complex_, support_kind, data):
    _, rel, m, _ = _groups(data, seed, gridsize, n, complex_, support_kind)
    canvas = images(seed + 7, (rel.shape[0], m, m), complex_)
    out = backend.extract_patches(canvas, rel, n)
    assert_close(out, ref.extract_patches(canvas, rel, n), "translate.extract",
                 scale=np.abs(canvas).max())


@fixture_ok
@given(**group_args)
def test_overlap_constraint_matches_reference(backend, seed, gridsize, n, complex_,
                                              support_kind, data):
    patches, rel, m, support = _groups(data, seed, gridsize, n, complex_, support_kind)
    out = backend.overlap_constraint(patches, rel, m, support)
    expected = ref.overlap_constraint(patches, rel, m, support)
    assert out.shape == patches.shape
    assert_close(out, expected, "translate.overlap",
                 scale=max(np.abs(expected).max(), np.abs(patches).max()))


def test_batch_of_groups_keeps_one_canvas_per_group(backend):
    """Each canvas is its own group's reassembly; merging groups would make them equal/sums."""
    n, gridsize, b = 8, 2, 3
    patches = images(3, (b, gridsize ** 2, n, n), True)
    rel = np.random.default_rng(3).uniform(-3, 3, size=(b, gridsize ** 2, 2)).astype(np.float32)
    m = ref.canvas_size(n, rel)
    canvases = backend.reassemble_patches(patches, rel, m)
    assert canvases.shape == (b, m, m)
    for i in range(b):
        alone = backend.reassemble_patches(patches[i:i + 1], rel[i:i + 1], m)[0]
        assert_close(canvases[i], alone, "translate.reassemble")
    for i in range(b):
        for j in range(i + 1, b):
            assert np.max(np.abs(canvases[i] - canvases[j])) > 0.1
    merged = ref.reassemble_patches(patches.reshape(1, -1, n, n), rel.reshape(1, -1, 2), m)[0]
    assert np.max(np.abs(canvases[0] - merged)) > 0.1
    assert_close(backend.extract_patches(canvases, rel, n), ref.extract_patches(canvases, rel, n),
                 "translate.extract")


def test_bad_shapes_and_canvas_rules_are_refused(backend):
    patches = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="canvas side 11"):
        backend.reassemble_patches(patches, np.zeros((1, 1, 2)), 11)
    with pytest.raises(ValueError, match="canvas side 6"):
        backend.extract_patches(np.zeros((1, 6, 6)), np.zeros((1, 1, 2)), 8)
    with pytest.raises(ValueError, match="length 2"):
        backend.translate(np.zeros((4, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"rel_offsets \(B, C, 2\)"):
        backend.overlap_constraint(patches, np.zeros((1, 2, 2)), 8)


# ------------------------------------------------------------------ losses

@fixture_ok
@given(seed=st.integers(0, 2 ** 31), shape=st.sampled_from([(7,), (2, 5, 5), (3, 4, 16, 16)]),
       photons=st.sampled_from([0.5, 10.0, 1e3, 1e5]), zero_pred=st.booleans(),
       eps=st.sampled_from([1e-6, 1e-3]))
def test_poisson_nll_matches_reference(backend, seed, shape, photons, zero_pred, eps):
    rng = np.random.default_rng(seed)
    intensity = rng.uniform(0, 2 * photons, size=shape)
    obs = np.sqrt(rng.poisson(intensity)).astype(np.float32)
    pred = np.sqrt(intensity * rng.uniform(0.5, 1.5, size=shape)).astype(np.float32)
    if zero_pred:          # exact zeros of the prediction against non-zero counts
        pred.ravel()[::3] = 0.0
    got = backend.poisson_nll(pred, obs, eps)
    scale = np.mean(pred.astype(np.float64) ** 2 + obs.astype(np.float64) ** 2)
    assert np.isfinite(got)
    assert_close(got, ref.poisson_nll(pred, obs, eps), "loss.ops", scale=scale)


def test_poisson_nll_is_zero_at_a_perfect_prediction_and_positive_elsewhere(backend):
    obs = np.sqrt(np.random.default_rng(0).poisson(50.0, size=(4, 8, 8))).astype(np.float32)
    assert backend.poisson_nll(obs, obs, 1e-6) == 0.0
    assert backend.poisson_nll(obs * 1.1, obs, 1e-6) > 0.0
    assert backend.poisson_nll(obs * 0.9, obs, 1e-6) > 0.0


@fixture_ok
@given(seed=st.integers(0, 2 ** 31), shape=st.sampled_from([(7,), (2, 5, 5), (3, 4, 16, 16)]))
def test_mae_and_realspace_match_reference(backend, seed, shape):
    a, b = images(seed, shape, False), images(seed + 1, shape, False)
    scale = np.mean(np.abs(a.astype(np.float64)) + np.abs(b))
    assert_close(backend.mae(a, b), ref.mae(a, b), "loss.ops", scale=scale)
    p, q = images(seed + 2, shape, True), images(seed + 3, shape, True)
    scale = np.mean(np.abs(p.astype(np.complex128)) ** 2 + np.abs(q) ** 2)
    assert_close(backend.realspace_consistency(p, q), ref.realspace_consistency(p, q),
                 "loss.ops", scale=scale)


def test_masked_pixels_take_no_part_in_the_pixel_losses(backend):
    rng = np.random.default_rng(5)
    obs = np.sqrt(rng.poisson(40.0, size=(2, 4, 8, 8))).astype(np.float32)
    pred = (obs * rng.uniform(0.8, 1.2, obs.shape)).astype(np.float32)
    mask = np.ones((8, 8), bool)
    mask[2, 3] = mask[5, 0] = False
    garbage = obs.copy()
    garbage[..., ~mask] = np.nan
    for fn, args in ((backend.poisson_nll, (1e-6,)), (backend.mae, ())):
        got = fn(pred, garbage, *args, mask=mask)
        scale = np.mean(pred.astype(np.float64) ** 2 + obs.astype(np.float64) ** 2)
        want = (ref.poisson_nll if fn == backend.poisson_nll else ref.mae)(pred, obs, *args,
                                                                             mask=mask)
        assert_close(got, want, "loss.ops", scale=scale)
        assert got == fn(pred, obs, *args, mask=mask)
