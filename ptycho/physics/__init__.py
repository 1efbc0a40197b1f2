"""The numpy float64 reference implementation of the physics: the oracle for both backends."""

from ptycho.physics.forward import far_field_amplitude, illuminate
from ptycho.physics.losses import LossSettings, mae, poisson_nll, realspace_consistency, total_loss
from ptycho.physics.model import effective_probe, physics_forward
from ptycho.physics.patches import (COVERAGE_FLOOR, canvas_size, central_mask, crop_center,
                                    extract_patches, group_centres, object_support,
                                    overlap_constraint, pad_to_canvas, probe_disk_mask,
                                    reassemble_patches)
from ptycho.physics.translate import translate

__all__ = [
    "COVERAGE_FLOOR", "LossSettings", "canvas_size", "central_mask", "crop_center",
    "effective_probe", "extract_patches", "far_field_amplitude", "group_centres", "illuminate",
    "mae", "object_support", "overlap_constraint", "pad_to_canvas", "physics_forward",
    "poisson_nll", "probe_disk_mask", "realspace_consistency", "reassemble_patches", "total_loss", "translate",
]
