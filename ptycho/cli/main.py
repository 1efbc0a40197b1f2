"""Entry point of the ``ptycho`` command (console script ``ptycho.cli.main:main``).

Subcommands are modules listed in :data:`COMMANDS`; each provides

* ``add_parser(subparsers) -> argparse.ArgumentParser``: adds its subparser (name, help,
  options) with ``subparsers.add_parser(...)`` and returns it;
* ``run(args: argparse.Namespace) -> int``: does the work and returns the exit status.

Registering a new command is one line in :data:`COMMANDS`. Modules must be cheap to import
(import numpy, frameworks and friends inside ``run``), because ``ptycho --help`` imports all.

Exit status: what ``run`` returns (0 success); 2 for a usage error or a bad input (a missing
file, an invalid value, an input that would exceed the memory budget ``PTYCHO_MAX_BYTES``, a
busy output folder), reported as one line on stderr, ``ptycho <command>: error: ...``; 1 when
the machine runs out of memory all the same (one line too), or when another rank of a
multi-process run failed (:class:`ptycho.errors.DistributedError`); 130 when interrupted; 141
(quietly) when stdout is closed early, as by ``ptycho ... | head``.

>>> main(["--version"])  # doctest: +ELLIPSIS
ptycho ...
0
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn, Optional, Sequence

#: Subcommand modules, in the order ``ptycho --help`` lists them. Add one line per command.
COMMANDS: tuple[str, ...] = (
    "ptycho.cli.simulate",
    "ptycho.cli.train",
    "ptycho.cli.reconstruct",
    "ptycho.cli.bundle",
    "ptycho.cli.backends",
    "ptycho.cli.parity",
)

#: Exit status of a usage error or bad input.
EXIT_USAGE = 2
#: Exit status when memory runs out despite the checks.
EXIT_NO_MEMORY = 1
#: Exit status when the reader of stdout went away (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141


class UsageError(Exception):
    """A command-line or input error: reported as one line, exit status 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that reports errors as one line (no usage dump) via :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The ``ptycho`` parser with every subcommand of :data:`COMMANDS` registered."""
    from ptycho import __version__

    parser = _Parser(
        prog="ptycho",
        description="Ptychographic reconstruction with a physics-informed neural network "
                    "(TensorFlow or PyTorch backend).",
        epilog="Run 'ptycho <command> --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"ptycho {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for name in COMMANDS:
        module = importlib.import_module(name)
        sub = module.add_parser(subparsers)
        if not isinstance(sub, argparse.ArgumentParser):
            raise TypeError(f"{name}.add_parser must return its ArgumentParser, got "
                            f"{type(sub).__name__}")
        sub.set_defaults(_ptycho_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``ptycho`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    prog = "ptycho"
    try:
        try:
            args = parser.parse_args(args_list)
        except SystemExit as exc:          # --help / --version exit 0 through argparse
            sys.stdout.flush()
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
        run = getattr(args, "_ptycho_run", None)
        if run is None:
            raise UsageError(prog, "a command is required: one of "
                             f"{_command_names(parser)} (see 'ptycho --help')")
        prog = f"ptycho {args.command}"
        args._ptycho_argv = args_list      # what ``--nproc`` runs again in each process
        code = int(run(args))
        sys.stdout.flush()                 # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except UsageError as exc:
        _report(exc.prog, str(exc))
        return EXIT_USAGE
    except (ValueError, OSError, OverflowError) as exc:   # ptycho.errors are ValueErrors
        _report(prog, _one_line(exc))
        return EXIT_USAGE
    except MemoryError as exc:
        _report(prog, f"out of memory{': ' + _one_line(exc) if str(exc) else ''}; the inputs "
                      "passed the size checks, so the memory budget (PTYCHO_MAX_BYTES) is larger "
                      "than what this machine has free: lower it, or free memory")
        return EXIT_NO_MEMORY
    except KeyboardInterrupt:
        _report(prog, "interrupted")
        return 130
    except RuntimeError as exc:
        from ptycho.errors import DistributedError

        if not isinstance(exc, DistributedError):
            raise
        _report(prog, _one_line(exc))
        return 1


def _stdout_closed() -> int:
    """The reader of stdout went away (``ptycho ... | head``): end quietly.

    Further writes (and the flush at exit) go to /dev/null, so that Python prints no
    "Broken pipe" error of its own on the way out.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):   # stdout is not a real file (tests)
        pass
    return EXIT_BROKEN_PIPE


def _command_names(parser: argparse.ArgumentParser) -> str:
    for action in parser._actions:  # noqa: SLF001 (argparse offers no public accessor)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return ", ".join(action.choices)
    return ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename!r}"
    return text or type(exc).__name__


def _report(prog: str, message: str) -> None:
    try:
        print(f"{prog}: error: {message}", file=sys.stderr)
    except (BrokenPipeError, ValueError):        # stderr closed too: nothing left to tell
        pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
