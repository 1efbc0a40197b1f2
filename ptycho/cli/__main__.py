"""``python -m ptycho.cli``: the same as ``python -m ptycho`` and the ``ptycho`` command (for
launchers that take a module, e.g. ``torchrun --nproc-per-node 4 -m ptycho.cli train ...``)."""

from ptycho.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
