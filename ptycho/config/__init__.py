"""Typed configuration: dataclasses, (de)serialisation, and the legacy dictionary bridge."""

from ptycho.config.schema import InferenceConfig, ModelConfig, TrainingConfig

__all__ = ["ModelConfig", "TrainingConfig", "InferenceConfig"]
