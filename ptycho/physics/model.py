"""The differentiable physics after the network, as one reference function.

Both backends implement exactly this pipeline on their tensors:

1. ``x = diffraction / exp(log_intensity_scale)`` is the network input (normalised amplitude);
2. the network maps ``x`` to complex object patches (B, C, N, N) (zero outside the support);
3. for gridsize > 1 with ``object_big``, :func:`overlap_constraint` on a per-group canvas;
4. ``amplitude = far_field_amplitude(probe_eff * patches) * exp(log_intensity_scale)``,
   where ``probe_eff = probe * probe_disk_mask`` if ``probe_mask`` else ``probe``;
5. losses against the observed ``diffraction`` (photon-count amplitudes).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from ptycho.physics.forward import far_field_amplitude, illuminate
from ptycho.physics.patches import object_support, overlap_constraint, probe_disk_mask

#: Added to both sums of the intensity match (``ModelConfig.match_intensity``), in
#: normalised-amplitude units squared where a pattern's sum is ~1e2..1e5: keeps the square
#: root and its gradient finite for an all-zero pattern (its patch is then ~0) without
#: moving any real pattern's scale.
INTENSITY_MATCH_EPSILON = 1e-12


def effective_probe(probe: np.ndarray, probe_mask: bool) -> np.ndarray:
    """The probe the physics uses: masked by a disk of radius N/4 when ``probe_mask``."""
    probe = np.asarray(probe, dtype=np.complex128)
    return probe * probe_disk_mask(probe.shape[-1]) if probe_mask else probe


#: Tikhonov weight of the back-propagated estimate's division by the probe, relative to the
#: probe's brightest pixel: 1e-2 keeps the estimate where the probe is dim from being noise
#: divided by ~0 (on the natural-image suite the stitched estimate scores within 0.01 SSIM of
#: 1e-3 and 0.09 above 1e-1; benchmarks/README.md, "The back-propagated estimate").
BACKPROP_REGULARISATION = 1e-2


#: Added under the square root of the estimate's magnitude (``backprop_estimate``), in
#: normalised-amplitude units squared where the estimate's pixels are ~1e-2..1e2: keeps the
#: magnitude's gradient finite where the estimate is zero (an all-zero pattern).
BACKPROP_EPSILON = 1e-12


def backprop_estimate(amplitude: np.ndarray, probe: np.ndarray,
                      regularisation: float = BACKPROP_REGULARISATION,
                      dtype=np.complex128) -> np.ndarray:
    """The object estimate one pattern gives with the probe's far-field phase, ``dtype``
    (complex128, or complex64 where float32 rounding is enough: the stitched scan's estimate).

    ``amplitude`` (..., N, N) measured amplitudes (zero frequency at ``(N//2, N//2)``, any
    units), ``probe`` (N, N). The unknown far-field phase is taken to be the probe's own,
    the wave is back-propagated, ``psi = ifft2(ifftshift(A) * exp(i arg fft2(P)))``
    (orthonormal), and divided by the probe, ``O = psi conj(P) / (|P|^2 + r max |P|^2)``.
    Exact for an object of ones; for a weak object (a defocused probe makes the pattern an
    in-line hologram) the object plus a twin image. Linear in ``amplitude``: the estimate of
    normalised amplitudes is in the units ``match_intensity`` gives a patch.

    >>> p = np.exp(1j * np.linspace(0, 3, 64)).reshape(8, 8)
    >>> a = far_field_amplitude(p * 2.0)
    >>> bool(np.allclose(backprop_estimate(a, p, 0.0), 2.0))
    True
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.complex64), np.dtype(np.complex128)):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    unit, inverse = (f.astype(dtype) for f in backprop_filters(probe, regularisation))
    spectrum = np.fft.ifftshift(np.asarray(amplitude, dtype=dtype.type(0).real.dtype),
                                axes=(-2, -1)) * unit
    # scipy's FFT transforms complex64 in complex64 (numpy < 2 went through complex128) and
    # may overwrite its input, a temporary: 256 patterns of 64 x 64 in 5 ms against 7 ms
    wave = scipy.fft.ifft2(spectrum, axes=(-2, -1), norm="ortho", overwrite_x=True)
    return (inverse * wave).astype(dtype, copy=False)


def backprop_filters(probe: np.ndarray, regularisation: float = BACKPROP_REGULARISATION
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The two factors of :func:`backprop_estimate`, complex128 (N, N): the probe's far-field
    phase ``exp(i arg fft2(P))`` (not shifted) and the regularised division by the probe,
    ``conj(P) / (|P|^2 + r max |P|^2)``."""
    probe = np.asarray(probe, dtype=np.complex128)
    far = np.fft.fft2(probe)
    power = np.abs(probe) ** 2
    return (far / np.maximum(np.abs(far), np.finfo(np.float64).tiny),
            np.conj(probe) / (power + regularisation * np.max(power)))


def estimate_magnitude_phase(estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(|E|, arg E)`` as the model uses them: ``sqrt(|E|^2 + BACKPROP_EPSILON)``, and an
    angle of 0 where ``E`` is zero."""
    estimate = np.asarray(estimate, dtype=np.complex128)
    return np.sqrt(np.abs(estimate) ** 2 + BACKPROP_EPSILON), np.angle(estimate)


def physics_forward(patches: np.ndarray, probe: np.ndarray, log_intensity_scale: float,
                    model_config, rel_offsets: np.ndarray | None = None,
                    canvas_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Object patches (B, C, N, N) -> (constrained patches, predicted amplitude in photon units).

    ``model_config`` is a :class:`ptycho.config.ModelConfig`; the overlap constraint applies
    when ``gridsize > 1`` and ``object_big``, and then needs ``rel_offsets`` and ``canvas_size``.
    """
    patches = np.asarray(patches, dtype=np.complex128)
    n = patches.shape[-1]
    if model_config.gridsize > 1 and model_config.object_big:
        if rel_offsets is None or canvas_size is None:
            raise ValueError("gridsize > 1 with object_big needs rel_offsets and canvas_size")
        support = object_support(n, model_config.pad_object, model_config.probe_big)
        constrained = overlap_constraint(patches, rel_offsets, canvas_size, support)
    else:
        constrained = patches
    psi = illuminate(effective_probe(probe, model_config.probe_mask), constrained)
    amplitude = far_field_amplitude(psi) * np.exp(float(log_intensity_scale))
    return constrained, amplitude
