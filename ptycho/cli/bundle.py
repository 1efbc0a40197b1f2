"""``ptycho bundle inspect PATH [--json]``: what a model bundle holds, verified, without a framework.

The bundle is read and checked exactly as loading would check it (format and version,
member names and sizes, every sha256, the config, the canonical weight spec; see
:func:`ptycho.bundle.read_bundle`), so a corrupted or altered file is reported as an error
(exit status 2) instead of being described. Neither TensorFlow nor PyTorch is imported.

The readable form lists the format and its version, the library version and the backend
(and framework version) that wrote the bundle, the config, every weight entry with its shape,
dtype and the first 12 hex digits of its sha256, the intensity scale and a summary of the
training history. ``--json`` prints the manifest itself (plus ``path``, ``file_bytes`` and
``verified``) as JSON.

Examples::

    ptycho bundle inspect run1/model.zip
    ptycho bundle inspect run1/model.zip --json | jq .config.model
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Mapping

NAME = "bundle"
HELP = "inspect model bundles (model.zip): format, backend, config, weights, history"

#: Hex digits of each entry's sha256 shown in the readable form.
SHA_PREFIX = 12


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bundle`` command (with its ``inspect`` subcommand) to ``subparsers``."""
    p = subparsers.add_parser(NAME, help=HELP, description=HELP + ".")
    actions = p.add_subparsers(title="actions", dest="bundle_action", metavar="<action>")
    inspect = actions.add_parser(
        "inspect", help="verify a bundle and print its manifest (readable, or --json)",
        description="Verify a bundle (checksums, config, weight spec) and print what it holds. "
                    "No framework is imported.")
    inspect.add_argument("path", metavar="PATH", help="the bundle (model.zip) or its folder")
    inspect.add_argument("--json", action="store_true",
                         help="print the manifest as JSON instead of the readable form")
    return p


def run(args: argparse.Namespace) -> int:
    from ptycho.cli.main import UsageError

    if getattr(args, "bundle_action", None) != "inspect":
        raise UsageError(f"ptycho {NAME}", "an action is required: inspect "
                                            "(see 'ptycho bundle --help')")
    return inspect_bundle(args.path, as_json=args.json)


def _resolve(path: str) -> str:
    from ptycho.workflows.train import BUNDLE_NAME

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, BUNDLE_NAME)):
        return os.path.join(path, BUNDLE_NAME)
    if not os.path.exists(path):
        raise ValueError(f"{path!r}: no such file")
    return path


def inspect_bundle(path: str, as_json: bool = False) -> int:
    """Print the verified bundle at ``path``; return 0 (errors propagate as ValueError)."""
    from ptycho.bundle import read_bundle

    path = _resolve(path)
    contents = read_bundle(path)
    size = os.path.getsize(path)
    if as_json:
        doc = {"path": path, "file_bytes": size, "verified": True, **contents.manifest}
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print("\n".join(describe(contents.manifest, path, size)))
    return 0


def _flat(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in d.items():
        if isinstance(value, Mapping):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _fmt_loss(loss: Mapping[str, float] | None) -> str:
    if not loss:
        return "-"
    return ", ".join(f"{k} {v:.4g}" for k, v in loss.items()
                     if k == "total" or (isinstance(v, (int, float)) and v != 0))


def describe(manifest: Mapping[str, Any], path: str, size: int) -> list[str]:
    """The readable lines of ``ptycho bundle inspect``."""
    lines = [f"bundle:       {path} ({size:,} bytes, verified)",
             f"format:       {manifest['format']} version {manifest['format_version']}",
             f"library:      ptycho {manifest.get('library_version', '?')}",
             f"written by:   {manifest['backend']} "
             f"{manifest.get('framework_version') or '(framework version unknown)'}"]
    scale = manifest.get("intensity_scale")
    if isinstance(scale, (int, float)) and math.isfinite(scale):
        lines.append(f"intensity scale: {scale:.6g} (exp of log_intensity_scale; photon "
                     "amplitude per normalised amplitude)")
    lines.append(f"config ({manifest['config_kind']}):")
    for key, value in _flat(manifest["config"]):
        lines.append(f"  {key} = {value!r}" if isinstance(value, str) else f"  {key} = {value}")
    entries = manifest["entries"]
    total = 0
    rows = []
    for name, meta in entries.items():
        n = math.prod(meta["shape"])
        total += n
        shape = "(" + ", ".join(str(s) for s in meta["shape"]) + ("," if len(meta["shape"]) == 1
                                                                     else "") + ")"
        rows.append((name, shape, meta["dtype"], meta["sha256"][:SHA_PREFIX]))
    lines.append(f"entries ({len(entries)}, {total:,} values):")
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    for name, shape, dtype, sha in rows:
        lines.append(f"  {name:{widths[0]}s}  {shape:{widths[1]}s}  {dtype:{widths[2]}s}  "
                     f"sha256 {sha}")
    history = manifest.get("history")
    if history and history.get("epochs"):
        epochs = history["epochs"]
        last = epochs[-1]
        ended = ("interrupted" if history.get("interrupted") else
                 "stopped early" if history.get("stopped_early") else "completed")
        seconds = sum(float(e.get("seconds", 0.0)) for e in epochs)
        lines.append(f"history:      {len(epochs)} epochs ({ended}), {seconds:.1f} s of training, "
                     f"best epoch {history.get('best_epoch')}"
                     + (f", weights: the mean of the last {history['averaged_epochs']} epochs'"
                        if history.get("averaged_epochs") else ""))
        lines.append(f"  first loss: {_fmt_loss(epochs[0].get('loss'))}")
        lines.append(f"  last loss:  {_fmt_loss(last.get('loss'))}")
        if last.get("val_loss"):
            lines.append(f"  last validation loss: {_fmt_loss(last.get('val_loss'))}")
    else:
        lines.append("history:      none (untrained or not recorded)")
    extra = manifest.get("extra") or {}
    if extra:
        lines.append(f"extra:        {', '.join(sorted(extra))}")
    return lines
