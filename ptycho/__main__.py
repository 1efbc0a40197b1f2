"""``python -m ptycho``: the same as the ``ptycho`` command (:func:`ptycho.cli.main.main`)."""

from ptycho.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
