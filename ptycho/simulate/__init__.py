"""Simulation of ptychography scans: objects, probes, scan positions, photon noise, datasets.

>>> from ptycho.simulate import simulate_dataset
>>> raw, obj = simulate_dataset(4, 16, nphotons=1e3, seed=0)
>>> raw.n_patterns, raw.N
(4, 16)
"""

from ptycho.simulate.dataset import (OBJECT_KINDS, diffraction_intensity, object_patches,
                                     simulate_dataset)
from ptycho.simulate.noise import mean_total_intensity, photon_scale, poisson_amplitudes
from ptycho.simulate.objects import (complex_object, gaussian_random_field, grf_object,
                                     image_object, lines_object, lines_pattern, load_image)
from ptycho.simulate.probes import (PROBE_KINDS, defocused_probe, diffuser_probe, disk_probe,
                                    fresnel_propagate, gaussian_probe, make_probe)
from ptycho.simulate.scans import (SCAN_KINDS, check_inside, even_grid_scan, grid_scan,
                                   jittered_grid_scan, make_scan, position_bounds, random_scan,
                                   scan_extent)

__all__ = [
    "OBJECT_KINDS", "PROBE_KINDS", "SCAN_KINDS", "check_inside", "complex_object",
    "defocused_probe", "diffraction_intensity", "diffuser_probe", "disk_probe", "even_grid_scan",
    "fresnel_propagate", "gaussian_probe", "gaussian_random_field", "grf_object", "grid_scan",
    "image_object", "jittered_grid_scan", "lines_object", "lines_pattern", "load_image",
    "make_probe", "make_scan", "mean_total_intensity", "object_patches", "photon_scale",
    "poisson_amplitudes", "position_bounds", "random_scan", "scan_extent", "simulate_dataset",
]
