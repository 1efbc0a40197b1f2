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
    """The backend of a run, without reading its data (what ``--nproc`` launches):
    ``--backend`` or ``--set backend=...``, else the ``--config`` file's, else
    ``$PTYCHO_BACKEND`` or the default."""
    name = args.backend or next((v for k, v in reversed(getattr(args, "assignments", []))
                                 if k == "backend"), None)
    from_file = None
    if name is None and args.config is not None:
        config, document = load_model_config_file(args.config, config_cls)
        from_file = config.backend if document_sets_key(document, "backend") else None
    return resolve_backend(name, from_file, args.config)[0]


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


def document_sets_key(document, *keys: str) -> bool:
    """Whether a config document (as read by :func:`load_model_config_file`) gives a value for
    the nested key ``keys`` (used to tell a value the user chose from a default).

    >>> document_sets_key({"model": {"N": 32}}, "model", "N"), document_sets_key(None, "seed")
    (True, False)
    """
    node = document
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def check_output_dir(path: str) -> str:
    """Refuse an ``--output-dir`` that exists and is not a folder; create nothing (the folder
    is created by :func:`ptycho.outdir.output_folder` once the inputs are valid)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output-dir {path!r} exists and is not a folder")
    return path


def check_input_file(path: str, flag: str) -> str:
    """Refuse a missing input early, naming the flag (what it is, the loader checks)."""
    if not os.path.exists(path):
        raise ValueError(f"{flag} {path!r}: no such file")
    return path


def resolve_backend(flag: Optional[str], config_backend: Optional[str],
                    config_file: Optional[str] = None) -> tuple[str, str]:
    """(backend, why): ``--backend`` > the config's ``backend`` > ``$PTYCHO_BACKEND`` > default.

    ``why`` is ``"argument"`` for ``--backend``, ``"config"`` (with the file's name when
    given) for a backend the config sets, else what :func:`backends.resolve_backend_name`
    says (the environment variable or the default).
    """
    from backends.registry import resolve_backend_name

    if flag is not None:
        return resolve_backend_name(flag)
    if config_backend is not None:
        return resolve_backend_name(config_backend,
                                    source=f"config {config_file}" if config_file else "config")
    return resolve_backend_name(None)


def backend_ready(name: str) -> None:
    """Import the backend now (a missing framework is an ImportError before anything is
    written; :func:`input_errors` reports it)."""
    from backends import get_backend

    get_backend(name)


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


@contextlib.contextmanager
def about_file(path: str) -> Iterator[None]:
    """Name the data file ``path`` in a :class:`ptycho.errors.DataError` raised inside (a
    canvas too large for the budget, a grouping problem) that does not name it already."""
    from ptycho.errors import DataError

    try:
        yield
    except DataError as err:
        if path in str(err):
            raise
        raise type(err)(f"{path!r}: {err}") from None


def load_model_config_file(path: Optional[str], cls):
    """``(cls(), None)`` when ``path`` is None, else the file (JSON or YAML) read once as
    ``cls``, with the document as read (see :func:`document_sets_key`)."""
    from ptycho.config import load_config_document

    if path is None:
        return cls(), None
    return load_config_document(path, cls)
