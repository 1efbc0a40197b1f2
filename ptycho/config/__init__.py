"""Typed configuration: dataclasses, (de)serialisation, and the legacy dictionary bridge."""

from ptycho.config.io import (config_from_dict, config_to_dict, from_json, from_yaml,
                              load_config, load_config_document, save_config, to_json, to_yaml)
from ptycho.config.legacy import (LEGACY_KEYS, config_from_legacy, new_legacy_dict,
                                  update_legacy_dict)
from ptycho.config.schema import InferenceConfig, ModelConfig, TrainingConfig

__all__ = [
    "ModelConfig", "TrainingConfig", "InferenceConfig",
    "config_to_dict", "config_from_dict", "to_json", "from_json", "to_yaml", "from_yaml",
    "save_config", "load_config", "load_config_document",
    "LEGACY_KEYS", "update_legacy_dict", "config_from_legacy", "new_legacy_dict",
]
