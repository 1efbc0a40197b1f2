"""The PyTorch physics ops against the float64 numpy reference (:mod:`ptycho.physics`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho import physics as ref

pytestmark = pytest.mark.torch


#: Elementwise ops (translate, reassemble, extract, illuminate): a handful of float32 roundings
#: per output element, so errors stay a few ulp (~6e-8) of the largest input magnitude.
ELEMENTWISE_RTOL = 1e-6
#: FFT magnitudes: float32 FFT error grows like eps * log2(N) relative to the signal maximum.
FFT_RTOL = 1e-5
#: Mean-reduced losses: relative to the scale of the summands (mean counts, mean |x|), float32
#: accumulation of up to ~1e4 terms.
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def backend():
    from backends.torch import get_backend
    return get_backend()


def _rng(seed):
    return np.random.default_rng(seed)


def _complex(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _assert_close(got, want, rtol, scale):
    got = np.asarray(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= rtol * scale, f"max abs error {err:.3e} > {rtol:.1e} * {scale:.3e}"


# Offsets: integers, halves and arbitrary sub-pixel values, negative and positive, including
# values just below an integer (where floor() changes).
offsets_1d = st.one_of(st.integers(-7, 7).map(float), st.integers(-14, 14).map(lambda k: k / 2),
                       st.floats(-7.5, 7.5, allow_nan=False, width=32),
                       st.integers(-6, 6).map(lambda k: float(np.nextafter(np.float32(k),
                                                                         np.float32(-10)))))


@st.composite
def offset_arrays(draw, shape):
    flat = draw(st.lists(offsets_1d, min_size=int(np.prod(shape)) * 2,
                         max_size=int(np.prod(shape)) * 2))
    return np.asarray(flat, dtype=np.float32).reshape(tuple(shape) + (2,))


# -- translation -----------------------------------------------------------------------------

def test_translate_delta_pins_direction(backend):
    img = np.zeros((7, 9), np.float32)
    img[3, 4] = 1.0
    out = backend.translate(img, np.array([2.0, -1.0], np.float32))   # 2 columns right, 1 row up
    assert out[2, 6] == 1.0 and out.sum() == 1.0
    half = backend.translate(img, np.array([0.5, 0.0], np.float32))  # half a column right
    np.testing.assert_allclose(half[3, 4:6], [0.5, 0.5], rtol=0, atol=1e-7)
    assert half.sum() == pytest.approx(1.0, abs=1e-6)
    gone = backend.translate(img, np.array([0.0, 5.0], np.float32))   # pushed off the bottom
    assert not gone.any()


@given(st.integers(0, 2 ** 31), st.integers(1, 3), st.integers(1, 2), st.integers(3, 21),
       st.integers(3, 21), st.booleans(), st.data())
def test_translate_matches_reference(backend, seed, b, c, h, w, is_complex, data):
    rng = _rng(seed)
    img = _complex(rng, (b, c, h, w)) if is_complex else rng.standard_normal((b, c, h, w)).astype(np.float32)
    off = data.draw(offset_arrays((b, c)))
    got = backend.translate(img, off)
    assert got.dtype == (np.complex64 if is_complex else np.float32)
    _assert_close(got, ref.translate(img, off), ELEMENTWISE_RTOL, np.abs(img).max())


@given(st.integers(0, 2 ** 31), st.integers(3, 16), st.data())
def test_translate_broadcasts_one_offset(backend, seed, n, data):
    img = _rng(seed).standard_normal((4, n, n)).astype(np.float32)
    off = data.draw(offset_arrays(()))
    _assert_close(backend.translate(img, off), ref.translate(img, off), ELEMENTWISE_RTOL,
                  np.abs(img).max())


def test_translate_rejects_bad_offsets(backend):
    with pytest.raises(ValueError, match="length 2"):
        backend.translate(np.zeros((4, 4), np.float32), np.zeros(3, np.float32))


# -- far field and illumination ----------------------------------------------------------------

@given(st.integers(0, 2 ** 31), st.integers(1, 3), st.integers(2, 33), st.integers(2, 33))
def test_far_field_matches_reference(backend, seed, b, h, w):
    psi = _complex(_rng(seed), (b, 1, h, w))
    want = ref.far_field_amplitude(psi)
    got = backend.far_field_amplitude(psi)
    assert got.dtype == np.float32
    _assert_close(got, want, FFT_RTOL, np.abs(want).max())


def test_far_field_is_centred_and_orthonormal(backend):
    for n in (8, 9):
        a = backend.far_field_amplitude(np.ones((n, n), np.complex64))
        assert a[n // 2, n // 2] == pytest.approx(n, rel=1e-6)
        assert np.abs(a).sum() - a[n // 2, n // 2] == pytest.approx(0.0, abs=1e-4)
    psi = _complex(_rng(0), (16, 16))
    a = backend.far_field_amplitude(psi)
    assert np.sum(a.astype(np.float64) ** 2) == pytest.approx(np.sum(np.abs(psi) ** 2), rel=1e-5)


@given(st.integers(0, 2 ** 31), st.integers(1, 3), st.integers(2, 20))
def test_illuminate_matches_reference(backend, seed, b, n):
    rng = _rng(seed)
    probe, obj = _complex(rng, (n, n)), _complex(rng, (b, 4, n, n))
    want = ref.illuminate(probe, obj)
    got = backend.illuminate(probe, obj)
    assert got.dtype == np.complex64
    _assert_close(got, want, ELEMENTWISE_RTOL, np.abs(want).max())


# -- reassembly and extraction (gridsize 1 and 2) -------------------------------------------

@st.composite
def groups(draw):
    seed = draw(st.integers(0, 2 ** 31))
    b = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 4]))
    n = draw(st.integers(4, 20))
    off = draw(offset_arrays((b, c)))
    if c == 1:
        off = off * draw(st.sampled_from([0.0, 1.0]))
    m = ref.canvas_size(n, off) + 2 * draw(st.integers(0, 2))
    support = draw(st.sampled_from(["none", "ones", "central"]))
    sup = {"none": None, "ones": np.ones((n, n), np.float32),
           "central": ref.central_mask(n).astype(np.float32)}[support]
    patches = _complex(_rng(seed), (b, c, n, n))
    if sup is not None and draw(st.booleans()):
        patches = patches * sup           # as the network's patches: zero outside the support
    return patches, off, m, sup


@given(groups())
def test_reassemble_matches_reference(backend, g):
    patches, off, m, sup = g
    want = ref.reassemble_patches(patches, off, m, sup)
    got = backend.reassemble_patches(patches, off, m, sup)
    assert got.shape == (patches.shape[0], m, m) and got.dtype == np.complex64
    # Where the coverage is below the floor (outside the support) values grow by up to
    # 1 / COVERAGE_FLOOR, so the scale is the larger of the input and output maxima.
    _assert_close(got, want, ELEMENTWISE_RTOL, max(np.abs(patches).max(), np.abs(want).max()))


@given(groups())
def test_extract_matches_reference(backend, g):
    patches, off, m, _ = g
    b, c, n, _ = patches.shape
    canvas = _complex(_rng(b * 7 + m), (b, m, m))
    want = ref.extract_patches(canvas, off, n)
    got = backend.extract_patches(canvas, off, n)
    assert got.shape == (b, c, n, n)
    _assert_close(got, want, ELEMENTWISE_RTOL, np.abs(canvas).max())


@given(groups())
def test_overlap_constraint_matches_reference(backend, g):
    patches, off, m, sup = g
    want = ref.overlap_constraint(patches, off, m, sup)
    got = backend.overlap_constraint(patches, off, m, sup)
    _assert_close(got, want, ELEMENTWISE_RTOL, max(np.abs(patches).max(), np.abs(want).max()))


def test_batch_keeps_one_canvas_per_group(backend):
    """Two groups with the same offsets but different content must not share a canvas."""
    n, m = 8, 12
    off = np.array([[[-2, -2], [2, -2], [-2, 2], [2, 2]]] * 2, np.float32)
    patches = np.zeros((2, 4, n, n), np.complex64)
    patches[1] = 1.0 + 1.0j
    canvas = backend.reassemble_patches(patches, off, m)
    assert canvas.shape == (2, m, m)
    assert not np.any(canvas[0])                                # group 0 saw only its zeros
    covered = ref.reassemble_patches(np.ones((1, 4, n, n)), off[:1], m)[0] > 0
    np.testing.assert_allclose(canvas[1][covered], 1.0 + 1.0j, rtol=1e-6)
    alone = backend.reassemble_patches(patches[1:], off[1:], m)
    np.testing.assert_array_equal(canvas[1], alone[0])
    back = backend.extract_patches(canvas, off, n)
    assert not np.any(back[0]) and np.allclose(back[1], 1.0 + 1.0j, rtol=1e-6)


def test_canvas_parity_is_checked(backend):
    with pytest.raises(ValueError, match="parity"):
        backend.reassemble_patches(np.zeros((1, 1, 8, 8), np.complex64),
                                   np.zeros((1, 1, 2), np.float32), 11)


# -- losses ----------------------------------------------------------------------------------

@given(st.integers(0, 2 ** 31), st.integers(1, 3), st.integers(2, 24),
       st.floats(-2.0, 9.0), st.sampled_from([1e-6, 1e-3, 1.0]))
def test_poisson_nll_matches_reference(backend, seed, b, n, log_scale, eps):
    rng = _rng(seed)
    counts = rng.poisson(10.0 ** log_scale, size=(b, 1, n, n)) * (rng.random((b, 1, n, n)) > 0.2)
    obs = np.sqrt(counts).astype(np.float32)
    pred = (obs * rng.uniform(0.2, 1.5, obs.shape) + rng.random(obs.shape)).astype(np.float32)
    pred[rng.random(pred.shape) < 0.1] = 0.0          # zero predicted intensity, k > 0
    want = ref.poisson_nll(pred, obs, eps)
    got = backend.poisson_nll(pred, obs, eps)
    scale = float(np.mean(pred.astype(np.float64) ** 2 + obs.astype(np.float64) ** 2)) + eps
    assert abs(got - want) <= LOSS_RTOL * scale, (got, want, scale)


def test_poisson_nll_is_zero_at_the_data_and_positive_elsewhere(backend):
    obs = np.sqrt(_rng(1).poisson(5e4, (2, 1, 8, 8))).astype(np.float32)
    assert abs(backend.poisson_nll(obs, obs, 1e-6)) <= 1e-6
    assert backend.poisson_nll(obs * 1.01, obs, 1e-6) > 0.1
    # A zero prediction under large counts is finite (log(eps)), as in the reference.
    zero = np.zeros_like(obs)
    assert backend.poisson_nll(zero, obs, 1e-6) == pytest.approx(
        ref.poisson_nll(zero, obs, 1e-6), rel=LOSS_RTOL)


def test_poisson_nll_gradient_is_finite_everywhere():
    import torch
    from backends.torch import physics
    obs = torch.tensor([0.0, 0.0, 3.0, 300.0, 300.0])
    pred = torch.tensor([0.0, 2.0, 0.0, 0.0, 299.0], requires_grad=True)
    physics.poisson_nll(pred, obs, 1e-6).backward()
    i, k = pred.detach().double() ** 2, obs.double() ** 2
    want = (1 - k / (i + 1e-6)) * 2 * pred.detach().double() / 5     # dL/dpred
    assert torch.all(torch.isfinite(pred.grad))
    torch.testing.assert_close(pred.grad.double(), want, rtol=1e-5, atol=1e-6)


@given(st.integers(0, 2 ** 31), st.integers(1, 3), st.integers(2, 24))
def test_mae_and_realspace_match_reference(backend, seed, b, n):
    rng = _rng(seed)
    p, o = rng.random((2, b, 4, n, n)).astype(np.float32) * 30
    got, want = backend.mae(p, o), ref.mae(p, o)
    assert abs(got - want) <= LOSS_RTOL * float(np.mean(np.abs(p) + np.abs(o)))
    x, y = _complex(rng, (b, 4, n, n)), _complex(rng, (b, 4, n, n))
    got, want = backend.realspace_consistency(x, y), ref.realspace_consistency(x, y)
    assert abs(got - want) <= LOSS_RTOL * want


# -- the Backend object ----------------------------------------------------------------------

def test_backend_satisfies_protocol_and_registry(backend):
    import backends
    from backends.protocol import Backend
    assert isinstance(backend, Backend)
    assert backends.get_backend("pytorch") is backend
    assert backend.name == "torch"
    import torch
    assert backend.version() == torch.__version__
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.are_deterministic_algorithms_enabled()
