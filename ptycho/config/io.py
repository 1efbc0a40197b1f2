"""Reading and writing configs: plain dicts, JSON and YAML, and files (written atomically).

A config is serialised as a nested dict of its fields (the model under ``"model"``). JSON and
YAML documents (and files) also carry a top-level ``"kind"``: ``"training"``,
``"inference"`` or ``"model"``, so that :func:`load_config` can build the right class
without being told; an explicit ``cls`` argument must agree with it. Reading is strict:
unknown keys are a :class:`ConfigError` naming them and listing the valid keys, and values
are validated by the dataclasses themselves. YAML is read with ``yaml.safe_load`` semantics
only (a SafeLoader that also reads ``1e9`` as a float, as YAML 1.2 does).

Round trips are identities: ``from_json(to_json(cfg)) == cfg``, likewise for YAML, dicts
and files.

>>> from ptycho.config.schema import ModelConfig, TrainingConfig
>>> cfg = TrainingConfig(model=ModelConfig(N=32, gridsize=2), nepochs=3)
>>> d = config_to_dict(cfg)
>>> d["model"]["gridsize"], d["nepochs"]
(2, 3)
>>> config_from_dict(TrainingConfig, d) == cfg
True
>>> from_yaml(to_yaml(cfg)) == cfg
True
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import reprlib
import typing
from typing import Any, Mapping, Optional, Union

import yaml

from ptycho.atomic import atomic_write
from ptycho.config.schema import InferenceConfig, ModelConfig, TrainingConfig
from ptycho.errors import ConfigError
from ptycho.untrusted import open_regular

PathLike = Union[str, "os.PathLike[str]"]

#: The ``kind`` field of a serialised config and the class it names.
KINDS: Mapping[str, type] = {"training": TrainingConfig, "inference": InferenceConfig,
                             "model": ModelConfig}
#: File suffixes :func:`save_config` / :func:`load_config` understand.
SUFFIXES = (".json", ".yaml", ".yml")

ConfigT = Union[TrainingConfig, InferenceConfig, ModelConfig]


def kind_of(cls_or_cfg: Any) -> str:
    """The ``kind`` name of a config class or instance.

    >>> kind_of(InferenceConfig())
    'inference'
    """
    cls = cls_or_cfg if isinstance(cls_or_cfg, type) else type(cls_or_cfg)
    for name, known in KINDS.items():
        if cls is known:
            return name
    raise ConfigError(f"expected a config class {[c.__name__ for c in KINDS.values()]}, "
                      f"got {cls.__name__}")


def _check_cls(cls: Any) -> type:
    if not isinstance(cls, type) or cls not in KINDS.values():
        name = cls.__name__ if isinstance(cls, type) else repr(cls)
        raise ConfigError(f"config class must be one of "
                          f"{[c.__name__ for c in KINDS.values()]}, got {name}")
    return cls


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a nested dict of plain values (tuples become lists, model under "model").

    No ``kind`` key is added (the serialisers add it).

    >>> config_to_dict(ModelConfig(N=32))["N"]
    32
    """
    kind_of(cfg)
    return {f.name: _to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _from_plain(tp: Any, value: Any, path: str) -> Any:
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    origin = typing.get_origin(tp) or tp
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) == len(value):
            return tuple(_from_plain(a, v, f"{path}[{i}]") for i, (a, v) in
                         enumerate(zip(args, value)))
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path}: expected a number in the float range, got an integer "
                              f"of {len(str(abs(value)))} digits") from None
    return value


#: Shortens values quoted in error messages (a config file may hold a huge value).
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlist = _short.maxdict = 8
_short.maxlevel = 3
_MAX_MESSAGE = 1000


def _build(cls: type, d: Any, path: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping of {cls.__name__} fields, "
                          f"got {type(d).__name__} {_short.repr(d)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kind = d.get("kind") if path == "" else None
    if kind is not None and (not isinstance(kind, str) or KINDS.get(kind) is not cls):
        raise ConfigError(f"'kind' is {_short.repr(kind)} but a {cls.__name__} (kind "
                          f"{kind_of(cls)!r}) was requested")
    unknown = sorted(str(k) for k in d if k not in names and not (path == "" and k == "kind"))
    if unknown:
        where = f" in {path!r}" if path else ""
        raise ConfigError(f"unknown {cls.__name__} keys{where}: {unknown}; valid keys: {names}")
    kwargs = {}
    for name in names:
        if name in d:
            sub = f"{path}.{name}" if path else name
            kwargs[name] = _from_plain(hints[name], d[name], sub)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        msg = str(exc)
        if len(msg) <= _MAX_MESSAGE:
            raise
        # the validation quotes the bad value; a file may hold a huge one
        raise ConfigError(msg[:_MAX_MESSAGE] + " ...") from None


def config_from_dict(cls: type, d: Mapping[str, Any]) -> ConfigT:
    """Build ``cls`` (TrainingConfig, InferenceConfig or ModelConfig) from a nested dict.

    Missing keys take the defaults; unknown keys raise :class:`ConfigError` naming them and
    listing the valid keys; an optional top-level ``kind`` must match ``cls``; lists become
    tuples where a field is a tuple; ints are accepted (and stored as floats) for float
    fields; all other values go through the dataclass validation.

    >>> config_from_dict(ModelConfig, {"N": 32, "gridsise": 2})
    Traceback (most recent call last):
    ...
    ptycho.errors.ConfigError: unknown ModelConfig keys: ['gridsise']; valid keys: ['N', 'gridsize', 'n_filters_scale', 'base_filters', 'amp_activation', 'object_big', 'probe_big', 'probe_mask', 'pad_object', 'central_decoder', 'probe_scale', 'probe_trainable', 'intensity_scale_trainable', 'per_pattern_network', 'match_intensity', 'backprop_estimate', 'estimate_scope', 'estimate_amplitude', 'skip_connections']
    """
    return _build(_check_cls(cls), d, "")


def _resolve_cls(d: Any, cls: Optional[type], source: str) -> type:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got "
                          f"{type(d).__name__}")
    kind = d.get("kind")
    if kind is not None and (not isinstance(kind, str) or kind not in KINDS):
        raise ConfigError(f"{source}: 'kind' must be one of {list(KINDS)}, got "
                          f"{_short.repr(kind)}")
    if cls is not None:
        return _check_cls(cls)  # a disagreeing kind is reported by _build
    if kind is None:
        raise ConfigError(f"{source}: no 'kind' field ({list(KINDS)}) and no cls given; "
                          "cannot tell which config this is")
    return KINDS[kind]


def _document(cfg: Any) -> dict[str, Any]:
    return {"kind": kind_of(cfg), **config_to_dict(cfg)}


def to_json(cfg: Any, indent: int = 2) -> str:
    """The config as a JSON document with a top-level ``kind``.

    >>> '"kind": "model"' in to_json(ModelConfig())
    True
    """
    return json.dumps(_document(cfg), indent=indent, allow_nan=False) + "\n"


def from_json(text: str, cls: Optional[type] = None) -> ConfigT:
    """Parse a JSON document into a config (``cls`` or the document's ``kind``).

    >>> from_json('{"kind": "model", "N": 32}').N
    32
    """
    d = _parse_json(text)
    return config_from_dict(_resolve_cls(d, cls, "JSON config"), d)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ConfigError("invalid JSON config: nested too deeply") from None
    except ConfigError as exc:
        raise ConfigError(f"invalid JSON config: {exc}") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, over-long integers, non-str text
        raise ConfigError(f"invalid JSON config: {exc}") from None


def _unique_keys(pairs: list) -> dict:
    """``json.loads`` hook: a key given twice is an error, not a silent overwrite."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"duplicate key {key!r}")
        out[key] = value
    return out


#: Most values a YAML config may expand to; aliases (``*a``) can otherwise make a small
#: document expand to an exponential number of values (a "billion laughs" bomb).
MAX_YAML_VALUES = 100_000
#: Most nodes a YAML config may be written with (before aliases expand); a config has ~100.
MAX_YAML_NODES = 10_000


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also resolves ``1e9`` / ``1E-7`` (no dot) as floats, refuses
    duplicate keys (YAML says keys are unique; PyYAML would keep the last), and stops composing
    past :data:`MAX_YAML_NODES` nodes (PyYAML holds a few hundred bytes per node: 1 MiB of
    ``[{}, {}, ...]`` took 400 MiB and 12 s)."""

    def compose_node(self, parent, index):
        self._composed = getattr(self, "_composed", 0) + 1
        if self._composed > MAX_YAML_NODES:
            raise ConfigError(f"YAML config has more than {MAX_YAML_NODES} nodes; a config is "
                              "a few dozen values")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue        # "<<: *base" merges; the mapping's own keys override
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:          # unhashable: the base class reports it
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            # e.g. an impossible date (2020-13-45) or an over-long integer: say where it is
            value = getattr(node, "value", None)
            shown = _short.repr(value) if isinstance(value, str) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {shown} ({exc})", node.start_mark) from None


def _count_values(doc: Any, limit: int) -> int:
    """Number of values in ``doc`` counting every alias expansion, stopping past ``limit``."""
    count, stack = 0, [doc]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            break
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return count


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def to_yaml(cfg: Any) -> str:
    """The config as a YAML document with a top-level ``kind`` (fields in declaration order).

    >>> to_yaml(ModelConfig()).splitlines()[0]
    'kind: model'
    """
    return yaml.safe_dump(_document(cfg), sort_keys=False, default_flow_style=False)


def from_yaml(text: str, cls: Optional[type] = None) -> ConfigT:
    """Parse a YAML document (safe loading only) into a config.

    >>> from_yaml("kind: training\\nnphotons: 1e6\\n").nphotons
    1000000.0
    """
    d = _parse_yaml(text)
    return config_from_dict(_resolve_cls(d, cls, "YAML config"), d)


def _parse_yaml(text: str) -> Any:
    try:
        d = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"invalid YAML config: {exc}") from None
    except RecursionError:
        raise ConfigError("invalid YAML config: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML config: {_first_lines(exc)}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors: an impossible date (2020-13-45), over-long integers ...
        raise ConfigError(f"invalid YAML config: {type(exc).__name__}: {exc}") from None
    if _count_values(d, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise ConfigError(f"YAML config expands to more than {MAX_YAML_VALUES} values (through "
                          "aliases, *name); a config is a few dozen values")
    return d


def _first_lines(exc: Exception, limit: int = 1000) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + " ..."


def _suffix(path: PathLike) -> str:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"config file {os.fspath(path)!r}: expected a suffix in "
                          f"{list(SUFFIXES)}, got {suffix or '(none)'!r}")
    return suffix


def save_config(cfg: Any, path: PathLike) -> None:
    """Write the config to ``path`` as JSON or YAML (by suffix), atomically.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "run.yaml")
    >>> save_config(TrainingConfig(nepochs=2), p)
    >>> load_config(p).nepochs
    2
    """
    suffix = _suffix(path)
    text = to_json(cfg) if suffix == ".json" else to_yaml(cfg)
    with atomic_write(path, "w") as f:
        f.write(text)


#: Largest config file that is read (bytes); a config is a few dozen values (about 1 kB), and
#: YAML parsing costs a few hundred bytes and ~30 us per value.
MAX_CONFIG_BYTES = 64 << 10


def _read_config_text(name: str) -> str:
    """The text of a config file: a regular file (not a FIFO or device) of bounded size."""
    try:
        f = open_regular(name, ConfigError, "a config file (JSON or YAML)")
    except FileNotFoundError:
        raise ConfigError(f"config file {name!r} cannot be read: no such file") from None
    try:
        with f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {name!r} cannot be read: {exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name!r} is larger than {MAX_CONFIG_BYTES} bytes; a "
                          "config is a few dozen values")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {name!r} cannot be read: {exc}") from None


def load_config_document(path: PathLike, cls: Optional[type] = None) -> tuple[ConfigT, Any]:
    """:func:`load_config`, also returning the document as read (a nested dict), so that a
    caller can tell the values the file sets from defaults without reading it again.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "run.yaml")
    >>> with open(p, "w") as f:
    ...     _ = f.write("kind: training\\nseed: 3\\n")
    >>> cfg, doc = load_config_document(p)
    >>> cfg.seed, "nepochs" in doc
    (3, False)
    """
    name = os.fspath(path)
    suffix = _suffix(name)
    text = _read_config_text(name)
    try:
        d = _parse_json(text) if suffix == ".json" else _parse_yaml(text)
        source = "JSON config" if suffix == ".json" else "YAML config"
        return config_from_dict(_resolve_cls(d, cls, source), d), d
    except ConfigError as exc:
        raise ConfigError(f"config file {name!r}: {exc}") from None


def load_config(path: PathLike, cls: Optional[type] = None) -> ConfigT:
    """Read a config file (``.json``, ``.yaml``, ``.yml``); ``cls`` or the file's ``kind``
    decides the class. Any problem is a :class:`ConfigError` naming the file: also a path
    that is not a regular file (a FIFO, a device, a folder) or a file larger than
    :data:`MAX_CONFIG_BYTES`.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "infer.json")
    >>> with open(p, "w") as f:
    ...     _ = f.write('{"batch_size": 8, "model": {"N": 32}}')
    >>> load_config(p, InferenceConfig).model.N
    32
    """
    return load_config_document(path, cls)[0]
