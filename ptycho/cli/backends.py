"""``ptycho backends``: which backends are installed, their versions, and which one is selected.

Versions come from package metadata and installation is checked with
:func:`importlib.util.find_spec`: no framework is imported, so the command is instant and
works even where a framework is broken. The selection follows
:func:`backends.resolve_backend_name`: ``--backend`` > ``$PTYCHO_BACKEND`` > the default.
The exit status is 2 when the selection names an unknown backend; a selected backend that is
not installed is reported with the command that installs it (exit status 1).

Examples::

    ptycho backends
    PTYCHO_BACKEND=torch ptycho backends --json
"""

from __future__ import annotations

import argparse
import json

NAME = "backends"
HELP = "list the installed backends and their versions, and say which one is selected and why"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``backends`` subcommand to ``subparsers``; return its parser."""
    p = subparsers.add_parser(NAME, help=HELP, description=HELP + ". No framework is imported.")
    # A free string: an unknown name is reported below, after the list (not as a parse error).
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="show what this choice would select (as --backend does elsewhere)")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    return p


def backend_table() -> list[dict]:
    """One row per registered backend: name, aliases, installed, version, package, install command."""
    from backends.registry import REGISTRY, framework_version, install_hint, is_installed

    rows = []
    for name, info in REGISTRY.items():
        installed = is_installed(name)
        rows.append({"name": name,
                     "aliases": sorted(info.aliases),
                     "installed": installed,
                     "version": framework_version(name) if installed else None,
                     "package": info.distribution, "install": install_hint(name)})
    return rows


def selection(name: str | None) -> dict:
    """``{"selected", "reason", "error"}`` for ``name`` under the usual precedence."""
    from backends.registry import DEFAULT_BACKEND, ENV_VAR, resolve_backend_name

    try:
        selected, reason = resolve_backend_name(name)
        error = None
    except ValueError as err:
        selected, reason, error = None, None, str(err)
    return {"selected": selected, "reason": reason, "error": error, "default": DEFAULT_BACKEND,
            "env_var": ENV_VAR}


def run(args: argparse.Namespace) -> int:
    """Print the table and the selection; return 0, 1 (selected but missing) or 2 (unknown)."""
    import os

    rows = backend_table()
    sel = selection(args.backend)
    installed = {r["name"]: r for r in rows}
    missing = sel["selected"] is not None and not installed[sel["selected"]]["installed"]
    if args.json:
        print(json.dumps({"backends": rows, **sel,
                          "env_value": os.environ.get(sel["env_var"])}, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            alias = f" ({', '.join(r['aliases'])})" if r["aliases"] else ""
            state = (f"installed, {r['package']} {r['version']}" if r["installed"]
                     else f"not installed ({r['install']})")
            mark = "*" if r["name"] == sel["selected"] else " "
            print(f"{mark} {r['name']:{width}s}{alias}: {state}")
        if sel["error"] is None:
            why = {"argument": "--backend", "default": "the default; set "
                   f"{sel['env_var']} or pass --backend to change it"}.get(
                       sel["reason"], f"{sel['reason']} = {os.environ.get(sel['env_var'])!r}")
            print(f"selected: {sel['selected']} ({why})")
            if missing:
                print(f"  but {sel['selected']} is not installed: "
                      f"{installed[sel['selected']]['install']}")
    if sel["error"] is not None:
        from ptycho.cli.main import UsageError

        if args.json:
            return 2
        raise UsageError(f"ptycho {NAME}", sel["error"])
    return 1 if missing else 0
