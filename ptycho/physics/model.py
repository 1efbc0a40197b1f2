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
