"""Options shared by the commands that run a model (``train``, ``reconstruct``).

``--backend``, ``--config``, ``--seed``, ``--quiet``, config overrides (typed flags and
``--set KEY=VALUE``), the check that an output folder can be written, and the translation of
errors into the one-line reports of :mod:`ptycho.cli.main` (exit status 2 for bad input).

Overrides are applied to the config as a nested dict and the result is rebuilt through
:func:`ptycho.config.config_from_dict`, so an invalid value is reported by the config's own
validation, naming the field:

>>> from ptycho.config import TrainingConfig
>>> cfg = apply_overrides(TrainingConfig(), {"model.N": 32, "nepochs": 3})
>>> cfg.model.N, cfg.nepochs
(32, 3)
>>> parse_assignment("model.probe_trainable=true")
('model.probe_trainable', True)
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Iterator, Mapping, Optional

#: Environment defaults set (with ``setdefault``) before a framework is imported by a command:
#: TensorFlow's C++ INFO and WARNING lines would otherwise drown the progress bars.
FRAMEWORK_ENV_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def backend_name(text: str) -> str:
    """argparse type of ``--backend``: any accepted name, returned canonical (``tf`` -> ``tensorflow``)."""
    from backends.registry import canonical_name

    try:
        return canonical_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**32 - 1], got {value}")
    return value


def add_backend_option(p: argparse.ArgumentParser) -> None:
    from backends.registry import DEFAULT_BACKEND, ENV_VAR, REGISTRY

    names = " or ".join(f"{n} ({', '.join(i.aliases)})" if i.aliases else n
                        for n, i in REGISTRY.items())
    p.add_argument("--backend", type=backend_name, default=None, metavar="NAME",
                   help=f"{names}; default: the config's backend, else ${ENV_VAR}, else "
                        f"{DEFAULT_BACKEND} (see 'ptycho backends')")


def selected_backend(args: argparse.Namespace, config) -> tuple[str, str]:
    """The backend of this run and where the choice came from (``--backend``, ``--set``, the
    config file, the environment variable, or the default)."""
    from backends.registry import resolve_backend_name

    if args.backend is not None:
        source = "--backend"
    elif any(key == "backend" for key, _ in getattr(args, "assignments", ())):
        source = "--set backend"
    else:
        source = f"config file {args.config}"
    return resolve_backend_name(config.backend, source=source)


def add_distributed_options(p: argparse.ArgumentParser) -> None:
    """``--nproc K`` and ``--collective-timeout SECONDS`` (see :mod:`ptycho.cli.launch`)."""
    from ptycho.distributed import DEFAULT_TIMEOUT_S

    p.add_argument("--nproc", type=positive_int, default=1, metavar="K",
                   help="run as K processes of one data-parallel run on this machine (PyTorch: "
                        "through torchrun; TensorFlow: K processes with TF_CONFIG); for several "
                        "machines launch the ranks yourself (docs/distributed.md)")
    p.add_argument("--collective-timeout", type=positive_float, default=DEFAULT_TIMEOUT_S,
                   metavar="SECONDS",
                   help="in a multi-process run, how long a rank waits for the others before "
                        f"giving up (default {DEFAULT_TIMEOUT_S:g})")


def launch_backend(args: argparse.Namespace, config_cls) -> str:
    """The backend of a run, without reading its data: ``--backend``, ``--set backend=``,
    the ``--config`` file's, then ``PTYCHO_BACKEND`` or the default (for ``--nproc``)."""
    from backends.registry import resolve_backend_name

    name = args.backend or next((v for k, v in reversed(getattr(args, "assignments", []))
                                 if k == "backend"), None)
    if name is None and args.config is not None:
        name = load_model_config_file(args.config, config_cls).backend
    return resolve_backend_name(name)[0]


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars (they are also off when stdout is not a terminal); "
                        "the summary is still printed")


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(KEY, value)``, the value read as a YAML scalar (``true``, ``null``,
    ``1e-3``; a number without a dot such as ``1e9`` is a float, as in config files)."""
    import yaml

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. model.N=32), got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{key}: cannot read value {value!r} ({err})") from None
    if isinstance(parsed, str):
        with contextlib.suppress(ValueError):
            parsed = float(parsed)          # YAML 1.1 reads '1e9' as a string
    return key, parsed


def apply_overrides(config, overrides: Mapping[str, Any]):
    """A copy of ``config`` with dotted ``overrides`` (``model.N``) set, validated.

    Unknown keys raise :class:`ptycho.errors.ConfigError` listing the valid ones.
    """
    from ptycho.config import config_from_dict, config_to_dict
    from ptycho.errors import ConfigError

    d = config_to_dict(config)
    for key, value in overrides.items():
        parts = key.split(".")
        node = d
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config section {part!r} in {key!r}; sections: "
                                  f"{[k for k, v in node.items() if isinstance(v, dict)]}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {sorted(node)}")
        node[parts[-1]] = value
    return config_from_dict(type(config), d)


def file_sets_key(path: str, *keys: str) -> bool:
    """Whether the config file at ``path`` gives a value for the nested key ``keys``.

    (Used to tell a value the user chose from a default; YAML also reads JSON.)
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            node = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def check_output_dir(path: str) -> str:
    """Create ``path`` (and parents) when missing; refuse a file. Returns the path."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output-dir {path!r} exists and is not a folder")
    os.makedirs(path, exist_ok=True)
    return path


def check_input_file(path: str, flag: str) -> str:
    """Refuse a missing input early, naming the flag."""
    if not os.path.exists(path):
        raise ValueError(f"{flag} {path!r}: no such file")
    return path


def prepare_framework_environment() -> None:
    """Quiet framework logging unless the user chose otherwise (``setdefault`` only)."""
    for key, value in FRAMEWORK_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def input_errors(prog: str) -> Iterator[None]:
    """Report a backend that is missing (ImportError) as a usage error of ``prog``.

    ValueError / OSError (every :mod:`ptycho.errors` input error is a ValueError) are
    reported by :func:`ptycho.cli.main.main` itself.
    """
    from ptycho.cli.main import UsageError

    try:
        yield
    except ImportError as err:
        raise UsageError(prog, " ".join(str(err).split())) from None


def load_model_config_file(path: Optional[str], cls):
    """``cls()`` when ``path`` is None, else the file (JSON or YAML) read as ``cls``."""
    from ptycho.config import load_config

    if path is None:
        return cls()
    return load_config(path, cls)
