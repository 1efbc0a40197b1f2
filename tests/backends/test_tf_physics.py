"""The TensorFlow physics ops agree with the numpy float64 reference (ptycho.physics).

Inputs are drawn by hypothesis and made float32-representable *before* both sides see them,
so that every difference measured is the TensorFlow computation's own float32 rounding.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ptycho.physics as ref

pytestmark = pytest.mark.tensorflow

# Tolerances (to move into parity/tolerances.py once it exists), each with its reason:
#: translate / reassemble / extract / overlap / illuminate, max abs error relative to max |value|:
#: a handful of float32 roundings (6e-8 each) of interpolation weights, products and sums.
ELEMENTWISE_RTOL = 1e-6
#: far field, max abs error relative to the spectrum's max: float32 FFT error grows ~ log2(N) ulps.
FFT_RTOL = 1e-5
#: losses, abs error relative to the mean magnitude of their per-pixel terms (mean(I + k) for
#: the NLL, mean(|pred| + |obs|) for the MAE): float32 rounding of I, k and of the tree-sum mean.
LOSS_RTOL = 1e-6
#: NLL gradient, elementwise relative (floor 1e-6 of the largest): a few float32 roundings
#: through the division by I + eps.
NLL_GRAD_RTOL = 1e-5


@pytest.fixture(scope="module")
def tfb():
    from backends.registry import get_backend
    return get_backend("tensorflow")


def _rng(seed):
    return np.random.default_rng(seed)


def _images(seed, shape, complex_):
    rng = _rng(seed)
    x = rng.normal(size=shape)
    if complex_:
        return (x + 1j * rng.normal(size=shape)).astype(np.complex64)
    return x.astype(np.float32)


def _close(actual, expected, rtol, scale=None):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.max(np.abs(expected))) if scale is None else float(scale)
    err = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


offset_values = st.one_of(st.integers(-6, 6).map(float),
                          st.floats(-25.0, 25.0, width=32, allow_nan=False,
                                    allow_infinity=False, allow_subnormal=False))


# ------------------------------------------------------------------ delta tests (the sign)

def test_translate_delta_pins_direction(tfb):
    img = np.zeros((5, 6), np.float32)
    img[2, 2] = 1.0
    out = tfb.translate(img, np.array([1.0, -2.0]))   # one column right, two rows up
    assert out.dtype == np.float32
    assert [tuple(i) for i in np.argwhere(out != 0)] == [(0, 3)]
    assert out[0, 3] == 1.0
    np.testing.assert_array_equal(out, ref.translate(img, np.array([1.0, -2.0])))


def test_translate_subpixel_splits_weight_rightwards_and_down(tfb):
    img = np.zeros((6, 6), np.float32)
    img[2, 2] = 1.0
    out = tfb.translate(img, np.array([0.25, 0.5]))
    expected = np.zeros((6, 6))
    expected[2, 2], expected[2, 3] = 0.75 * 0.5, 0.25 * 0.5
    expected[3, 2], expected[3, 3] = 0.75 * 0.5, 0.25 * 0.5
    np.testing.assert_array_equal(out, expected)


def test_translate_negative_subpixel(tfb):
    img = np.zeros((6, 6), np.float32)
    img[3, 3] = 1.0
    out = tfb.translate(img, np.array([-0.25, 0.0]))     # a quarter pixel left
    expected = np.zeros((6, 6))
    expected[3, 3], expected[3, 2] = 0.75, 0.25
    np.testing.assert_array_equal(out, expected)


def test_reassemble_places_a_patch_at_its_offset(tfb):
    n, m = 8, 16
    patches = np.zeros((1, 1, n, n), np.float32)
    patches[0, 0, n // 2, n // 2] = 1.0
    canvas = tfb.reassemble_patches(patches, np.array([[[3.0, -1.0]]]), m)
    (r, c), = np.argwhere(canvas[0] != 0)
    assert (r, c) == (m // 2 - 1, m // 2 + 3)
    assert canvas[0, r, c] == 1.0


# ------------------------------------------------------------------ agreement with the reference

@given(seed=st.integers(0, 2 ** 31), lead=st.sampled_from([(), (1,), (3,), (2, 3)]),
       h=st.integers(3, 20), w=st.integers(3, 20), complex_=st.booleans(),
       per_image=st.booleans(), data=st.data())
def test_translate_matches_reference(tfb, seed, lead, h, w, complex_, per_image, data):
    img = _images(seed, lead + (h, w), complex_)
    oshape = (lead + (2,)) if per_image else (2,)
    off = data.draw(hnp.arrays(np.float32, oshape, elements=offset_values))
    out = tfb.translate(img, off)
    assert out.dtype == (np.complex64 if complex_ else np.float32)
    _close(out, ref.translate(img, off), ELEMENTWISE_RTOL, scale=np.abs(img).max())


@given(seed=st.integers(0, 2 ** 31), b=st.integers(1, 3), h=st.integers(2, 33),
       w=st.integers(2, 33), complex_=st.booleans())
def test_far_field_matches_reference(tfb, seed, b, h, w, complex_):
    psi = _images(seed, (b, h, w), complex_)
    out = tfb.far_field_amplitude(psi)
    expected = ref.far_field_amplitude(psi)
    assert out.dtype == np.float32
    _close(out, expected, FFT_RTOL)


def test_far_field_is_orthonormal_and_centred(tfb):
    a = tfb.far_field_amplitude(np.ones((4, 4), np.complex64))
    assert a[2, 2] == pytest.approx(4.0, rel=1e-7)
    assert np.all(np.delete(a.ravel(), 2 * 4 + 2) < 1e-6)
    rng = _rng(1)
    psi = _images(1, (16, 16), True)
    assert np.sum(tfb.far_field_amplitude(psi) ** 2) == pytest.approx(np.sum(np.abs(psi) ** 2),
                                                                      rel=1e-5)
    del rng


@given(seed=st.integers(0, 2 ** 31), n=st.integers(4, 17))
def test_illuminate_matches_reference(tfb, seed, n):
    probe = _images(seed, (n, n), True)
    obj = _images(seed + 1, (2, 3, n, n), True)
    out = tfb.illuminate(probe, obj)
    assert out.dtype == np.complex64
    _close(out, ref.illuminate(probe, obj), ELEMENTWISE_RTOL)


def _groups(data, seed, gridsize, n, complex_, support_kind):
    """Patches (B, C, N, N), offsets (B, C, 2), canvas side, support, all float32-exact."""
    b = data.draw(st.integers(1, 3), label="B")
    c = gridsize ** 2
    rel = data.draw(hnp.arrays(np.float32, (b, c, 2),
                               elements=st.floats(-6.0, 6.0, width=32, allow_subnormal=False)),
                    label="rel_offsets")
    m = ref.canvas_size(n, rel) + 2 * data.draw(st.integers(0, 2), label="extra margin")
    support = None
    if support_kind == "central":
        support = ref.central_mask(n).astype(np.float32)
    patches = _images(seed, (b, c, n, n), complex_)
    if support is not None:
        patches = patches * support          # the network's patches are zero outside it
    return patches, rel, m, support


@given(seed=st.integers(0, 2 ** 31), gridsize=st.sampled_from([1, 2]), n=st.integers(4, 17),
       complex_=st.booleans(), support_kind=st.sampled_from(["none", "central"]), data=st.data())
def test_reassemble_matches_reference(tfb, seed, gridsize, n, complex_, support_kind, data):
    patches, rel, m, support = _groups(data, seed, gridsize, n, complex_, support_kind)
    out = tfb.reassemble_patches(patches, rel, m, support)
    expected = ref.reassemble_patches(patches, rel, m, support)
    assert out.shape == (patches.shape[0], m, m)
    _close(out, expected, ELEMENTWISE_RTOL, scale=max(np.abs(expected).max(), np.abs(patches).max()))


@given(seed=st.integers(0, 2 ** 31), gridsize=st.sampled_from([1, 2]), n=st.integers(4, 17),
       complex_=st.booleans(), data=st.data())
def test_extract_matches_reference(tfb, seed, gridsize, n, complex_, data):
    _, rel, m, _ = _groups(data, seed, gridsize, n, complex_, "none")
    canvas = _images(seed + 7, (rel.shape[0], m, m), complex_)
    out = tfb.extract_patches(canvas, rel, n)
    _close(out, ref.extract_patches(canvas, rel, n), ELEMENTWISE_RTOL, scale=np.abs(canvas).max())


@given(seed=st.integers(0, 2 ** 31), gridsize=st.sampled_from([1, 2]), n=st.integers(4, 17),
       complex_=st.booleans(), support_kind=st.sampled_from(["none", "central"]), data=st.data())
def test_overlap_constraint_matches_reference(tfb, seed, gridsize, n, complex_, support_kind,
                                              data):
    patches, rel, m, support = _groups(data, seed, gridsize, n, complex_, support_kind)
    out = tfb.overlap_constraint(patches, rel, m, support)
    expected = ref.overlap_constraint(patches, rel, m, support)
    assert out.shape == patches.shape
    _close(out, expected, ELEMENTWISE_RTOL, scale=max(np.abs(expected).max(), np.abs(patches).max()))


def test_batch_of_groups_keeps_one_canvas_per_group(tfb):
    """Each canvas is its own group's reassembly; merging groups would make them equal/sums."""
    n, gridsize, b = 8, 2, 3
    rng = _rng(3)
    patches = _images(3, (b, gridsize ** 2, n, n), True)
    rel = rng.uniform(-3, 3, size=(b, gridsize ** 2, 2)).astype(np.float32)
    m = ref.canvas_size(n, rel)
    canvases = tfb.reassemble_patches(patches, rel, m)
    assert canvases.shape == (b, m, m)
    for i in range(b):
        alone = tfb.reassemble_patches(patches[i:i + 1], rel[i:i + 1], m)[0]
        _close(canvases[i], alone, ELEMENTWISE_RTOL)
    for i in range(b):
        for j in range(i + 1, b):
            assert np.max(np.abs(canvases[i] - canvases[j])) > 0.1
    merged = ref.reassemble_patches(patches.reshape(1, -1, n, n), rel.reshape(1, -1, 2), m)[0]
    assert np.max(np.abs(canvases[0] - merged)) > 0.1
    extracted = tfb.extract_patches(canvases, rel, n)
    _close(extracted, ref.extract_patches(canvases, rel, n), ELEMENTWISE_RTOL)


def test_canvas_rules_are_checked(tfb):
    patches = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="canvas side 11"):
        tfb.reassemble_patches(patches, np.zeros((1, 1, 2)), 11)
    with pytest.raises(ValueError, match="canvas side 6"):
        tfb.extract_patches(np.zeros((1, 6, 6)), np.zeros((1, 1, 2)), 8)
    with pytest.raises(ValueError, match="length 2"):
        tfb.translate(np.zeros((4, 4)), np.zeros(3))


# ------------------------------------------------------------------ losses

@given(seed=st.integers(0, 2 ** 31), shape=st.sampled_from([(7,), (2, 5, 5), (3, 4, 16, 16)]),
       photons=st.sampled_from([0.5, 10.0, 1e3, 1e5]), zero_pred=st.booleans(),
       eps=st.sampled_from([1e-6, 1e-3]))
def test_poisson_nll_matches_reference(tfb, seed, shape, photons, zero_pred, eps):
    rng = _rng(seed)
    intensity = rng.uniform(0, 2 * photons, size=shape)
    obs = np.sqrt(rng.poisson(intensity)).astype(np.float32)
    pred = np.sqrt(intensity * rng.uniform(0.5, 1.5, size=shape)).astype(np.float32)
    if zero_pred:          # exact zeros of the prediction against non-zero counts
        pred.ravel()[::3] = 0.0
    got = tfb.poisson_nll(pred, obs, eps)
    expected = ref.poisson_nll(pred, obs, eps)
    scale = np.mean(pred.astype(np.float64) ** 2 + obs.astype(np.float64) ** 2)
    assert np.isfinite(got)
    assert abs(got - expected) <= LOSS_RTOL * scale, (got, expected, scale)


def test_poisson_nll_is_zero_at_a_perfect_prediction(tfb):
    obs = np.sqrt(np.random.default_rng(0).poisson(50.0, size=(4, 8, 8))).astype(np.float32)
    assert tfb.poisson_nll(obs, obs, 1e-6) == 0.0


def test_poisson_nll_gradient_is_finite_and_analytic_where_the_prediction_vanishes(tfb):
    import tensorflow as tf

    from backends.tensorflow import physics
    pred = tf.constant([0.0, 1e-4, 0.5, 7.0, 50.0], tf.float32)
    obs = tf.constant([50.0, 50.0, 0.0, 7.0, 49.0], tf.float32)
    eps = 1e-6
    with tf.GradientTape() as tape:
        tape.watch(pred)
        loss = physics.poisson_nll(pred, obs, eps)
    g = tape.gradient(loss, pred).numpy().astype(np.float64)
    p, k = pred.numpy().astype(np.float64), obs.numpy().astype(np.float64) ** 2
    expected = 2 * p * (1 - k / (p ** 2 + eps)) / p.size      # d/dpred of the mean
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, expected, rtol=NLL_GRAD_RTOL,
                               atol=1e-6 * np.abs(expected).max())


@given(seed=st.integers(0, 2 ** 31), shape=st.sampled_from([(7,), (2, 5, 5), (3, 4, 16, 16)]))
def test_mae_and_realspace_match_reference(tfb, seed, shape):
    a = _images(seed, shape, False)
    b = _images(seed + 1, shape, False)
    scale = np.mean(np.abs(a.astype(np.float64)) + np.abs(b))
    assert abs(tfb.mae(a, b) - ref.mae(a, b)) <= LOSS_RTOL * scale
    p = _images(seed + 2, shape, True)
    q = _images(seed + 3, shape, True)
    scale = np.mean(np.abs(p.astype(np.complex128)) ** 2 + np.abs(q) ** 2)
    got = tfb.realspace_consistency(p, q)
    assert abs(got - ref.realspace_consistency(p, q)) <= LOSS_RTOL * scale


# ------------------------------------------------------------------ protocol, docs

def test_backend_satisfies_the_protocol(tfb):
    from backends.protocol import Backend
    assert isinstance(tfb, Backend)
    assert tfb.name == "tensorflow"
    import tensorflow as tf
    assert tfb.version() == tf.__version__


def test_docstring_examples_hold():
    import backends.tensorflow as pkg
    from backends.tensorflow import physics
    for mod in (pkg, physics):
        result = doctest.testmod(mod, verbose=False)
        assert result.attempted > 0 and result.failed == 0, (mod.__name__, result)
