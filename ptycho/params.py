"""Compatibility module for callers written against the older global-dictionary API.

Legacy callers only; the library never reads this dictionary. ``cfg`` is the one piece of
module-level mutable state in the package, kept solely so that ``from ptycho import params;
params.cfg[...]`` keeps working. Fill it from a typed config with :func:`update_from_config`
(see :mod:`ptycho.config.legacy` for the key table and the None policy); new code passes
:class:`ptycho.config.TrainingConfig` / :class:`ptycho.config.InferenceConfig` explicitly.

>>> from ptycho.config import TrainingConfig
>>> _ = update_from_config(TrainingConfig(neighbor_count=6))
>>> get("K"), get("no such key", None)
(6, None)
"""

from __future__ import annotations

from typing import Any, Union

from ptycho.config.legacy import update_legacy_dict
from ptycho.config.schema import InferenceConfig, TrainingConfig

#: The legacy global dictionary (legacy callers only; the library never reads it).
cfg: dict = {}

_MISSING = object()


def get(key: str, default: Any = _MISSING) -> Any:
    """``cfg[key]`` (legacy callers only; the library never reads this dictionary).

    A missing key raises ``KeyError`` naming it, unless ``default`` is given.
    """
    if key in cfg:
        return cfg[key]
    if default is _MISSING:
        raise KeyError(f"legacy params.cfg has no key {key!r}; present: {sorted(cfg)}")
    return default


def set(key: str, value: Any) -> None:  # noqa: A001 (the legacy name)
    """``cfg[key] = value`` (legacy callers only; the library never reads this dictionary)."""
    cfg[key] = value


def update_from_config(config: Union[TrainingConfig, InferenceConfig]) -> dict:
    """Fill ``cfg`` from a typed config with :func:`ptycho.config.legacy.update_legacy_dict`.

    Legacy callers only; the library never reads this dictionary. Returns ``cfg``.
    """
    return update_legacy_dict(cfg, config)
