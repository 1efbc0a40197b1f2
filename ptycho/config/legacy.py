"""The bridge to the older global-dictionary API (``ptycho.params.cfg``-style dicts).

Older code reads a flat dictionary whose keys are renamed, dotted versions of the config
fields. :data:`LEGACY_KEYS` is the ONE table of that renaming (dataclass field -> legacy
key), covering every field of :class:`ModelConfig`, :class:`TrainingConfig` and
:class:`InferenceConfig` (field names are unique across the three classes).

The library itself never reads such a dictionary: it is produced for legacy callers
(:func:`update_legacy_dict`) and turned back into a typed config (:func:`config_from_legacy`).

Policy for ``update_legacy_dict(cfg, config)``:

* every key of the table whose field the config sets to a value is written, as a plain
  Python value (bool, int, float or str);
* **None removes the key**: a field whose value is None has its legacy key deleted, so a
  stale value from an earlier call never leaks into a later one (update with
  ``output_dir='a'`` then with ``output_dir=None``: ``'output_prefix'`` is gone);
* keys owned by the bridge (those in the table) that the new config does not have at all
  are removed too (an InferenceConfig removes ``'nepochs'`` left by a TrainingConfig);
* keys the bridge does not own are left alone.

Conversely, :func:`config_from_legacy` reads the owned keys of the requested class (a
missing key means the field's default, which is None for every optional field, so the
round trip config -> legacy -> config is the identity) and ignores every other key.

>>> from ptycho.config.schema import ModelConfig, TrainingConfig
>>> cfg = update_legacy_dict(new_legacy_dict(), TrainingConfig(
...     model=ModelConfig(N=32, object_big=False), neighbor_count=7, output_dir="out"))
>>> cfg["N"], cfg["object.big"], cfg["K"], cfg["output_prefix"]
(32, False, 7, 'out')
>>> config_from_legacy(cfg).neighbor_count
7
"""

from __future__ import annotations

import dataclasses
import numbers
import re
import typing
from types import MappingProxyType
from typing import Any, Mapping, MutableMapping, Optional, Union

import numpy as np

from ptycho.config.schema import InferenceConfig, ModelConfig, TrainingConfig
from ptycho.errors import ConfigError

#: Dataclass field -> legacy key. The single source of the renaming.
LEGACY_KEYS: Mapping[str, str] = MappingProxyType({
    # ModelConfig
    "N": "N",
    "gridsize": "gridsize",
    "n_filters_scale": "n_filters_scale",
    "base_filters": "base_filters",
    "amp_activation": "amp_activation",
    "object_big": "object.big",
    "probe_big": "probe.big",
    "probe_mask": "probe.mask",
    "pad_object": "pad_object",
    "central_decoder": "central_decoder",
    "probe_scale": "probe_scale",
    "probe_trainable": "probe.trainable",
    "intensity_scale_trainable": "intensity_scale.trainable",
    "per_pattern_network": "per_pattern_network",
    "match_intensity": "match_intensity",
    "backprop_estimate": "backprop_estimate",
    "estimate_scope": "estimate_scope",
    "estimate_amplitude": "estimate_amplitude",
    "skip_connections": "skip_connections",
    # TrainingConfig (and, where the name is shared, InferenceConfig)
    "batch_size": "batch_size",
    "nepochs": "nepochs",
    "learning_rate": "learning_rate",
    "lr_schedule": "lr_schedule",
    "lr_decay_rate": "lr_decay_rate",
    "lr_min": "lr_min",
    "early_stopping_patience": "early_stopping_patience",
    "early_stopping_min_delta": "early_stopping_min_delta",
    "average_epochs": "average_epochs",
    "adam_beta1": "adam_beta1",
    "adam_beta2": "adam_beta2",
    "adam_epsilon": "adam_epsilon",
    "nll_weight": "nll_weight",
    "mae_weight": "mae_weight",
    "realspace_weight": "realspace_weight",
    "loss_epsilon": "loss_epsilon",
    "nphotons": "nphotons",
    "n_groups": "n_groups",
    "neighbor_count": "K",
    "seed": "seed",
    "train_data_file": "train_data_file_path",
    "test_data_file": "test_data_file_path",
    "output_dir": "output_prefix",
    "backend": "backend",
    "tracking": "tracking",
    "precision": "precision",
    # InferenceConfig only
    "model_path": "model_path",
})

_TOP_CLASSES = (TrainingConfig, InferenceConfig)


def owned_keys() -> frozenset[str]:
    """Every legacy key the bridge owns (writes, and removes when unset).

    >>> {"K", "object.big", "output_prefix"} <= owned_keys()
    True
    """
    return frozenset(LEGACY_KEYS.values())


def _legacy_key(field_name: str) -> str:
    try:
        return LEGACY_KEYS[field_name]
    except KeyError:  # a field added to the schema but not to the table
        raise ConfigError(f"field {field_name!r} has no legacy key in "
                          "ptycho.config.legacy.LEGACY_KEYS; add it to the table") from None


def _plain(value: Any) -> Any:
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _flat_items(config: Any) -> dict[str, Any]:
    """field name -> value over the config and its model."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, ModelConfig):
            out.update(_flat_items(value))
        else:
            out[f.name] = value
    return out


def new_legacy_dict(config: Optional[Union[TrainingConfig, InferenceConfig]] = None) -> dict:
    """A fresh legacy dictionary: empty, or filled from ``config``.

    >>> new_legacy_dict() == {} and new_legacy_dict() is not new_legacy_dict()
    True
    """
    return {} if config is None else update_legacy_dict({}, config)


def update_legacy_dict(cfg: MutableMapping[str, Any],
                       config: Union[TrainingConfig, InferenceConfig]) -> MutableMapping[str, Any]:
    """Write every legacy key of ``config`` into ``cfg`` (mutated and returned).

    None values and owned keys the config does not have are removed; keys the bridge does
    not own are kept (see the module docstring).

    >>> from ptycho.config.schema import InferenceConfig
    >>> d = update_legacy_dict({"K": 4, "user_key": 1}, InferenceConfig(batch_size=8))
    >>> "K" in d, d["user_key"], d["batch_size"]
    (False, 1, 8)
    """
    if not isinstance(cfg, MutableMapping):
        raise ConfigError(f"update_legacy_dict: cfg must be a dict, got {type(cfg).__name__}")
    if not isinstance(config, _TOP_CLASSES):
        raise ConfigError(f"update_legacy_dict: config must be a TrainingConfig or "
                          f"InferenceConfig, got {type(config).__name__}")
    written = {}
    for name, value in _flat_items(config).items():
        if value is not None:
            written[_legacy_key(name)] = _plain(value)
    for key in owned_keys():
        if key not in written:
            cfg.pop(key, None)
    cfg.update(written)
    return cfg


def _coerce(key: str, field_name: str, tp: Any, value: Any) -> Any:
    """Check a legacy value's type against the field's and convert numpy scalars."""
    optional = False
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else tp
    if value is None:
        if optional:
            return None
        raise ConfigError(f"legacy key {key!r} ({field_name}): expected {tp.__name__}, got None")

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"legacy key {key!r} ({field_name}): expected {expected}, got "
                           f"{type(value).__name__} {_short_repr(value)}")

    is_bool = isinstance(value, (bool, np.bool_))
    if tp is bool:
        if not is_bool:
            raise bad("a bool")
        return bool(value)
    if tp is int:
        if is_bool or not isinstance(value, numbers.Integral):
            raise bad("an int")
        return int(value)
    if tp is float:
        if is_bool or not isinstance(value, numbers.Real):
            raise bad("a number")
        try:
            return float(value)
        except OverflowError:
            raise bad("a number in the float range") from None
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (and safe for integers of any size)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        digits = len(str(abs(int(value)))) if abs(int(value)).bit_length() < 10_000 else None
        if digits is None or digits > limit:
            return f"<an integer of {digits or 'more than 3000'} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _annotate(exc: ConfigError, names: list[str]) -> ConfigError:
    """Add the legacy key(s) of the field(s) a dataclass validation message mentions."""
    msg = str(exc)
    hits = [n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", msg)]
    keys = ", ".join(f"{LEGACY_KEYS[n]!r} ({n})" for n in hits) or "(unknown field)"
    return ConfigError(f"legacy key {keys}: {msg}")


def config_from_legacy(cfg: Mapping[str, Any], cls: type = TrainingConfig
                       ) -> Union[TrainingConfig, InferenceConfig]:
    """Rebuild a typed config from a legacy dictionary (the inverse of update_legacy_dict).

    Only the owned keys of ``cls`` (TrainingConfig or InferenceConfig) and its model are
    read; a missing key means the field's default. Values of the wrong type, or ones the
    dataclass validation rejects, raise :class:`ConfigError` naming the legacy key.

    >>> config_from_legacy({"N": 32, "K": "four"})
    Traceback (most recent call last):
    ...
    ptycho.errors.ConfigError: legacy key 'K' (neighbor_count): expected an int, got str 'four'
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config_from_legacy: cfg must be a dict, got {type(cfg).__name__}")
    if cls not in _TOP_CLASSES:
        raise ConfigError(f"config_from_legacy: cls must be TrainingConfig or InferenceConfig, "
                          f"got {getattr(cls, '__name__', cls)!r}")

    def read(klass: type) -> tuple[dict[str, Any], list[str]]:
        hints = typing.get_type_hints(klass)
        kwargs, names = {}, []
        for f in dataclasses.fields(klass):
            if f.name == "model":
                continue
            names.append(f.name)
            key = _legacy_key(f.name)
            if key in cfg:
                kwargs[f.name] = _coerce(key, f.name, hints[f.name], cfg[key])
        return kwargs, names

    model_kwargs, model_names = read(ModelConfig)
    top_kwargs, top_names = read(cls)
    try:
        model = ModelConfig(**model_kwargs)
    except ConfigError as exc:
        raise _annotate(exc, model_names) from None
    try:
        return cls(model=model, **top_kwargs)
    except ConfigError as exc:
        raise _annotate(exc, top_names) from None

