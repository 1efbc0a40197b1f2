"""Data: the NPZ contract (:mod:`.contract`), scale factors (:mod:`.scaling`) and grouping."""

from ptycho.data.contract import RawData, load_npz, save_npz, validate_raw

__all__ = ["RawData", "load_npz", "save_npz", "validate_raw"]
