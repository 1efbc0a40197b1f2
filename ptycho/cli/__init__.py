"""The ``ptycho`` command line: ``ptycho <command> [options]`` (see :mod:`ptycho.cli.main`).

Each subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``; :data:`ptycho.cli.main.COMMANDS` lists them.
"""
