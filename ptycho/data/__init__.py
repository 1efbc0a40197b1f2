"""Data: the NPZ contract (:mod:`.contract`), scale factors (:mod:`.scaling`) and grouping
(:mod:`.grouping`)."""

from ptycho.data.contract import RawData, load_npz, save_npz, validate_raw
from ptycho.data.grouping import GroupedData, group_data, group_data_for_training, group_scan
from ptycho.data.scaling import (initial_log_intensity_scale, intensity_scale,
                                 normalisation_factor, normalise_probe)

__all__ = [
    "GroupedData", "RawData", "group_data", "group_data_for_training", "group_scan",
    "initial_log_intensity_scale", "intensity_scale", "load_npz", "normalisation_factor",
    "normalise_probe", "save_npz", "validate_raw",
]
