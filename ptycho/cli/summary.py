"""End-of-run summaries of ``train`` and ``reconstruct``: readable lines and ``summary.json``.

The JSON file holds the same numbers as the printed lines (and more: the full metrics and
config); non-finite numbers are written as the strings ``"inf"``, ``"-inf"``, ``"nan"`` so
that the file is strict JSON.

>>> to_jsonable({"psnr": float("inf"), "ramp": (0.5, 1)})
{'psnr': 'inf', 'ramp': [0.5, 1]}
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

#: File name of the machine-readable summary written into ``--output-dir``.
SUMMARY_NAME = "summary.json"


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, tuples to lists, non-finite floats to strings."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    return value


def write_summary(output_dir: str, summary: Mapping[str, Any]) -> str:
    """Write ``summary`` as ``output_dir/summary.json`` (atomic); return the path."""
    from ptycho.atomic import atomic_write

    path = os.path.join(output_dir, SUMMARY_NAME)
    text = json.dumps(to_jsonable(summary), indent=2, sort_keys=True, allow_nan=False)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")
    return path


def _g(x: Optional[float], digits: int = 4) -> str:
    if x is None:
        return "-"
    x = float(x)
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)


def loss_line(loss: Mapping[str, float], keys: Sequence[str] = ("total", "nll", "mae",
                                                               "realspace")) -> str:
    """``total 12.3, nll 12.3, mae 0.04`` (terms that are exactly 0, i.e. off, are left out)."""
    parts = [f"{k} {_g(loss[k])}" for k in keys if k in loss and (k == "total" or loss[k] != 0)]
    return ", ".join(parts)


def metrics_lines(metrics: Optional[Mapping[str, Any]]) -> list[str]:
    """One line per quantity: PSNR, SSIM, MAE and FRC 0.5 resolution of amplitude and phase.

    An FRC that is below 0.5 from the first ring on reads "not resolved".

    >>> metrics_lines({"amplitude": {"psnr": 20.0, "ssim": 0.5, "mae": 0.1, "frc50_px": 4.0},
    ...                "phase": {"frc50_px": float("inf")}})[1]
    'phase    : PSNR - dB, SSIM -, MAE - rad, FRC(0.5) not resolved'
    """
    from ptycho.metrics import describe_resolution

    if not metrics:
        return []
    lines = []
    for part, unit in (("amplitude", ""), ("phase", " rad")):
        m = metrics.get(part) or {}
        frc = describe_resolution(m["frc50_px"]) if "frc50_px" in m else "-"
        lines.append(f"{part:9s}: PSNR {_g(m.get('psnr'))} dB, SSIM {_g(m.get('ssim'), 3)}, "
                     f"MAE {_g(m.get('mae'), 3)}{unit}, FRC(0.5) {frc}")
    return lines


def history_summary(history) -> dict[str, Any]:
    """Epoch count, last train / validation losses, best epoch and how training ended."""
    last = history.epochs[-1] if history.epochs else None
    return {"epochs": len(history.epochs),
            "final_loss": dict(last.loss) if last else None,
            "final_val_loss": dict(last.val_loss) if last and last.val_loss else None,
            "best_epoch": history.best_epoch, "stopped_early": history.stopped_early,
            "interrupted": history.interrupted, "averaged_epochs": history.averaged_epochs}


def reconstruction_summary(recon, n_channels: int = 1) -> dict[str, Any]:
    """Time, distinct patterns (and at gridsize > 1 the patches predicted), object shape."""
    seconds = max(recon.seconds, 1e-9)
    n_patches = recon.n_patches if recon.n_patches is not None else recon.n_patterns
    return {"seconds": recon.seconds, "n_patterns": recon.n_patterns,
            "patterns_per_s": recon.n_patterns / seconds, "n_patches": n_patches,
            "n_channels": n_channels, "object_shape": list(recon.obj.shape)}


def patterns_phrase(n_patterns: int, n_groups: int, n_channels: int) -> str:
    """``"1000 patterns"``, or at gridsize > 1 ``"1000 patterns in 1000 groups of 4"``.

    >>> patterns_phrase(100, 100, 1), patterns_phrase(100, 98, 4)
    ('100 patterns', '100 patterns in 98 groups of 4')
    """
    text = f"{n_patterns} pattern{'' if n_patterns == 1 else 's'}"
    return text if n_channels == 1 else f"{text} in {n_groups} groups of {n_channels}"


def print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line, flush=True)


def recon_lines(recon: Mapping[str, Any], metrics: Optional[Mapping[str, Any]],
                truth_known: bool) -> list[str]:
    c = recon.get("n_channels", 1)
    what = patterns_phrase(recon["n_patterns"], recon.get("n_patches", 0) // c, c)
    lines = [f"  reconstruction: {what} in {recon['seconds']:.2f} s "
             f"({recon['patterns_per_s']:.0f} patterns/s), object "
             f"{recon['object_shape'][0]}x{recon['object_shape'][1]}"]
    if metrics:
        where = "covered region"
        if metrics.get("region") is not None:
            r0, r1, c0, c1 = metrics["region"]
            where = (f"rows {r0}:{r1}, cols {c0}:{c1}, where coverage >= "
                     f"{metrics.get('coverage_threshold', 0):g} of its maximum")
        lines.append(f"  against objectGuess ({where}; after amplitude scale and phase "
                     "offset alignment):")
        lines += ["    " + line for line in metrics_lines(metrics)]
    elif truth_known:
        lines.append("  objectGuess has another shape or the covered region is too small: "
                     "no metrics")
    else:
        lines.append("  no objectGuess in the data: no metrics")
    return lines


def outputs_line(output_dir: str, paths: Mapping[str, str]) -> str:
    names = sorted({os.path.basename(p) for p in paths.values() if p})
    return f"  outputs in {output_dir}/: {', '.join(names)}"
