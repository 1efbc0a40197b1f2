"""The back-propagated estimate (``ModelConfig.backprop_estimate``): its physics in float64,
the single-pattern ambiguity that makes it matter, and its config rules. (The backends'
twin of the estimate and its gradients are checked against ``parity.reference`` in
tests/backends/test_model.py and tests/test_parity_reference.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from ptycho.config import ModelConfig
from ptycho.errors import ConfigError
from ptycho.physics.forward import far_field_amplitude
from ptycho.physics.model import backprop_estimate, estimate_magnitude_phase
from ptycho.simulate.probes import defocused_probe, diffuser_probe
from ptycho.weights import weight_spec


def _flip(a: np.ndarray) -> np.ndarray:
    """``a[-r]`` on the DFT grid (index ``-i mod N`` on both axes)."""
    return np.roll(a[..., ::-1, ::-1], 1, axis=(-2, -1))


def _object(rng, n: int) -> np.ndarray:
    return rng.uniform(0.5, 1.0, (n, n)) * np.exp(1j * rng.uniform(0, np.pi / 2, (n, n)))


def test_the_estimate_of_a_constant_object_is_that_constant():
    rng = np.random.default_rng(0)
    probe = np.exp(1j * rng.uniform(-3, 3, (16, 16))) * rng.uniform(0.5, 2.0, (16, 16))
    c = 0.7 * np.exp(0.4j)
    est = backprop_estimate(far_field_amplitude(probe * c), probe, regularisation=0.0)
    # the global phase of an object is invisible to the far field: its modulus comes back,
    # in every pixel
    assert np.allclose(est, abs(c), atol=1e-12)
    # the regularisation only lowers the estimate where the probe is dim
    est = backprop_estimate(far_field_amplitude(probe * c), probe)
    power = np.abs(probe) ** 2
    assert np.allclose(est, abs(c) * power / (power + 1e-2 * power.max()), atol=1e-12)


def test_the_estimate_is_linear_in_the_amplitudes():
    rng = np.random.default_rng(1)
    probe = defocused_probe(16)
    a, b = rng.uniform(0, 5, (2, 3, 16, 16))
    left = backprop_estimate(2.0 * a + 3.0 * b, probe)
    right = 2.0 * backprop_estimate(a, probe) + 3.0 * backprop_estimate(b, probe)
    assert left.shape == (3, 16, 16) and np.allclose(left, right, atol=1e-12)


def test_the_estimate_in_complex64_is_the_float64_one_to_float32_rounding():
    rng = np.random.default_rng(2)
    probe = diffuser_probe(32, seed=3)
    a = rng.uniform(0, 50, (4, 32, 32))
    wide = backprop_estimate(a, probe)
    narrow = backprop_estimate(a.astype(np.float32), probe, dtype=np.complex64)
    assert wide.dtype == np.complex128 and narrow.dtype == np.complex64
    np.testing.assert_allclose(narrow, wide, rtol=0, atol=1e-5 * np.abs(wide).max())
    with pytest.raises(ValueError, match="dtype must be complex64 or complex128, got float32"):
        backprop_estimate(a, probe, dtype=np.float32)


def test_a_single_pattern_cannot_tell_the_object_from_its_twin():
    """The cause of the network alone's limit at gridsize 1 with the suite's defocused probe:
    its amplitude is centro-symmetric, so ``conj(P O)(-r)`` is ``P`` times another valid
    object (flipped, conjugated, with ``-2 arg P`` added to its phase) that gives the same
    far-field amplitude, and no loss on one pattern can prefer either. Overlapping patterns
    break the tie (the twins of neighbours disagree), which is why refinement recovers the
    object."""
    n = 32
    probe = defocused_probe(n).astype(np.complex128)
    lit = np.abs(probe) > 1e-9 * np.abs(probe).max()
    assert np.allclose(np.abs(_flip(probe)), np.abs(probe), atol=1e-6 * np.abs(probe).max())
    obj = _object(np.random.default_rng(2), n)
    twin_wave = np.conj(_flip(probe * obj))
    twin = np.where(lit, twin_wave / np.where(lit, probe, 1.0), 1.0)
    assert np.allclose(far_field_amplitude(probe * twin), far_field_amplitude(probe * obj),
                       atol=1e-6 * far_field_amplitude(probe * obj).max())
    # a valid object: the same amplitude range, and not the object itself
    assert 0.5 - 1e-6 <= np.abs(twin[lit]).min() and np.abs(twin[lit]).max() <= 1.0 + 1e-6
    assert np.abs(twin - obj)[lit].mean() > 0.1


def test_with_a_diffuser_probe_the_twin_is_no_object():
    """What ``--probe diffuser`` changes: its amplitude is not centro-symmetric, so the twin
    wave ``conj(P O)(-r)`` divided by the probe is no object of the kind scanned (its
    amplitude leaves the object's range on most lit pixels), and the pattern is not
    ambiguous in that way."""
    n = 32
    probe = diffuser_probe(n).astype(np.complex128)
    lit = np.abs(probe) > 0.1 * np.abs(probe).max()
    obj = _object(np.random.default_rng(2), n)
    twin = np.conj(_flip(probe * obj))[lit] / probe[lit]
    outside = (np.abs(twin) < 0.5 - 1e-6) | (np.abs(twin) > 1.0 + 1e-6)
    assert outside.mean() > 0.3


def test_the_magnitude_and_angle_stay_finite_at_zero():
    mag, ang = estimate_magnitude_phase(np.array([0.0, 3.0 + 4.0j]))
    assert np.all(np.isfinite(mag)) and mag[1] == pytest.approx(5.0) and ang[0] == 0.0


def test_the_estimate_adds_two_input_channels_per_image_and_needs_a_fixed_probe():
    for gridsize, per_pattern, channels in ((1, True, 3), (2, True, 3), (2, False, 12)):
        cfg = ModelConfig(N=16, gridsize=gridsize, per_pattern_network=per_pattern,
                          backprop_estimate=True)
        assert cfg.input_channels == channels
        assert weight_spec(cfg)["enc0.conv1.kernel"].shape[2] == channels
        assert weight_spec(cfg)["amp.head.kernel"].shape[3] == cfg.network_channels
    with pytest.raises(ConfigError, match="backprop_estimate.*probe_trainable=False"):
        ModelConfig(backprop_estimate=True, probe_trainable=True)
    with pytest.raises(ConfigError, match="backprop_estimate"):
        ModelConfig(backprop_estimate="yes")


def test_estimate_amplitude_is_one_of_its_choices_and_needs_the_estimate():
    assert ModelConfig().estimate_amplitude == "input"
    assert ModelConfig(backprop_estimate=True, estimate_amplitude="scale").estimate_amplitude \
        == "scale"
    with pytest.raises(ConfigError, match="estimate_amplitude.*'magnitude'"):
        ModelConfig(backprop_estimate=True, estimate_amplitude="magnitude")
    with pytest.raises(ConfigError, match="estimate_amplitude='scale' needs backprop_estimate"):
        ModelConfig(estimate_amplitude="scale")
    # the amplitude head's output channels are the same either way: the weights are too
    scaled = ModelConfig(N=16, backprop_estimate=True, estimate_amplitude="scale")
    assert weight_spec(scaled) == weight_spec(ModelConfig(N=16, backprop_estimate=True))
