"""Tables and figures of the quality benchmark (numpy + matplotlib; no framework).

:func:`merge` joins the workers' parts into one record per row (the network's variants, the
reference and the floor of that object and dose side by side); :func:`markdown` turns them
into two tables; :func:`save_figures` draws truth / variants / reference / floor.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ptycho.metrics import describe_resolution

BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
PARTS = ("amplitude", "phase")


def _estimate_words(cfg: dict) -> str:
    """How the network starts, in the results' header: nothing, or which estimate and what
    its amplitude head does with it (results saved before ``estimate_amplitude`` existed
    scaled the estimate's magnitude)."""
    if not cfg.get("backprop_estimate"):
        return ""
    words = (", back-propagated estimate stitched over the scan"
             if cfg.get("estimate_scope", "pattern") == "scan" else ", back-propagated estimate")
    if cfg.get("estimate_amplitude", "scale") == "scale":
        words += " (the amplitude head scales its magnitude)"
    return words


def _averaged_words(cfg: dict) -> str:
    """How the model's weights were averaged over the last epochs (nothing without it)."""
    k = cfg.get("average_epochs", 0)
    return f", the mean of the last {k} epochs' weights" if k else ""


def _network_words(cfg: dict) -> str:
    """The network in the results' header: its widths, the options that change its
    architecture (absent from results saved before they existed: off), what it starts from."""
    return (f"network base_filters {cfg['base_filters']}, n_filters_scale {cfg['n_filters_scale']}"
            f"{', central decoder' if cfg.get('central_decoder') else ''}"
            f"{', skip connections' if cfg.get('skip_connections') else ''}"
            f"{_estimate_words(cfg)}")


def _curve_words(cfg: dict) -> str:
    """Where the timed refinement starts, in the results' header (runs before the option
    started from every point)."""
    spacing = cfg.get("refine_curve_spacing")
    if spacing is None:
        return ""
    return (f" The 'refined to reference' column times refinement from the network's pass "
            f"on points {spacing:g} px apart (`spacing={spacing:g}`).")


def _key(row: dict) -> tuple[str, float]:
    return row["object"], float(row["dose"])


#: The baselines every row carries (``benchmarks.quality.rows.baseline_rows``), by column.
BASELINES = ("estimate", "floor")


#: What "within reach of the reference" means for the refinement curve: both SSIMs within
#: this of the reference's, and at least :data:`REACH_FLOOR` (issue 11's bar).
REACH = 0.03
REACH_FLOOR = 0.85


def reached(curve: Sequence[dict], reference: Optional[dict]) -> Optional[dict]:
    """The first entry of a refinement curve (:func:`benchmarks.quality.rows.refine_curve`)
    whose SSIMs are within :data:`REACH` of the reference's and at least :data:`REACH_FLOOR`;
    None when none is (or there is no reference).

    >>> ref = {"amplitude": {"ssim": 0.99}, "phase": {"ssim": 0.98}}
    >>> curve = [{"passes": 1, "seconds": 0.5, "amplitude_ssim": 0.9, "phase_ssim": 0.97},
    ...          {"passes": 2, "seconds": 0.6, "amplitude_ssim": 0.97, "phase_ssim": 0.96}]
    >>> reached(curve, ref)["passes"]
    2
    """
    if not reference:
        return None
    for entry in curve:
        if all(entry[f"{p}_ssim"] >= max(REACH_FLOOR, reference[p]["ssim"] - REACH)
               for p in PARTS):
            return entry
    return None


def merge(network: Iterable[dict], references: Sequence[dict], baselines: Sequence[dict],
          variants: Sequence[str]) -> list[dict]:
    """One record per network row with ``reference`` (None when pty-chi was not run) and the
    :data:`BASELINES` of the same object and dose, per variant ``speedup`` = reference
    seconds / the variant's seconds, and ``reached`` (:func:`reached`, for a row with a
    refinement curve).

    >>> net = [{"object": "o", "dose": 1e6, "network": {"seconds": 2.0}}]
    >>> ref = [{"available": True, "object": "o", "dose": 1e6, "seconds": 30.0}]
    >>> base = [{"object": "o", "dose": 1e6, "floor": {}, "estimate": {}}]
    >>> merge(net, ref, base, ["network"])[0]["network"]["speedup"]
    15.0
    """
    refs = {_key(r): r for r in references if r.get("available")}
    base = {_key(b): b for b in baselines}
    out = []
    for row in network:
        row = dict(row)
        ref = refs.get(_key(row))
        row["reference"] = ref
        for name in BASELINES:
            row[name] = base.get(_key(row), {}).get(name)
        for v in variants:
            if ref is not None and row.get(v) and row[v].get("seconds"):
                row[v] = {**row[v], "speedup": ref["seconds"] / max(row[v]["seconds"], 1e-9)}
        if row.get("refine_curve"):
            row["reached"] = reached(row["refine_curve"], ref)
        out.append(row)
    return out


def _ssim(scores: Optional[dict], part: str) -> str:
    return "-" if not scores else f"{scores[part]['ssim']:.3f}"


def _psnr(scores: Optional[dict], part: str) -> str:
    if not scores:
        return "-"
    v = float(scores[part]["psnr"])          # "inf" after a JSON round trip
    return f"{v:.1f}" if math.isfinite(v) else str(v)


def _frc(scores: Optional[dict], part: str) -> str:
    if not scores:
        return "-"
    text = describe_resolution(scores[part]["frc50_px"], digits=3)
    return text.replace(" px", "")


def _dose(d: float) -> str:
    return f"1e{int(round(math.log10(d)))}" if d > 0 and math.log10(d).is_integer() else f"{d:g}"


def _row_label(r: dict) -> list[str]:
    return [r["object"], _dose(r["dose"]), str(r["gridsize"]), r["backend"]]


def markdown(rows: Sequence[dict], variants: Sequence[str]) -> str:
    """Two markdown tables: SSIM with the timings, then PSNR (dB) and FRC 0.5 (px).

    >>> s = {"amplitude": {"ssim": 0.5, "psnr": 20.0, "frc50_px": float("inf")},
    ...      "phase": {"ssim": 0.6, "psnr": 21.0, "frc50_px": 8.0}}
    >>> row = {"object": "o", "dose": 1e9, "gridsize": 1, "backend": "torch", "train_s": 10.0,
    ...        "network": {**s, "seconds": 0.5, "speedup": 60.0},
    ...        "reference": {**s, "seconds": 30.0, "seconds_to_final": 20.0}, "floor": s,
    ...        "estimate": s}
    >>> print(markdown([row], ["network"]).splitlines()[2].replace(" | ", "|"))
    | o|1e9|1|torch|0.500|0.500|0.500|0.500|0.600|0.600|0.600|0.600|10|0.50|30.0 (20.00)|-|60 |
    """
    methods = [*variants, "reference", *BASELINES]
    head = ["object", "dose", "g", "backend"]
    h1 = head + [f"{p[:3]}. SSIM {m}" for p in PARTS for m in methods]
    h1 += ["train s"] + [f"{v} s" for v in variants] + ["reference s (to final)"]
    h1 += [f"refined to reference - {REACH:g}: s (passes)"]
    h1 += [f"{v} speedup" for v in variants]
    lines = ["| " + " | ".join(h1) + " |", "|" + "---|" * len(h1)]
    for r in rows:
        cells = _row_label(r)
        cells += [_ssim(r.get(m), p) for p in PARTS for m in methods]
        cells.append(f"{r['train_s']:.0f}")
        cells += [f"{r[v]['seconds']:.2f}" for v in variants]
        ref = r.get("reference")
        to_final = ref.get("seconds_to_final") if ref else None
        cells.append("-" if not ref else f"{ref['seconds']:.1f}"
                     + ("" if to_final is None else f" ({to_final:.2f})"))
        reach = r.get("reached")
        cells.append(f"{reach['seconds']:.2f} ({reach['passes']})" if reach else "-")
        cells += [f"{r[v]['speedup']:.0f}" if r[v].get("speedup") else "-" for v in variants]
        lines.append("| " + " | ".join(cells) + " |")
    h2 = head + [f"{p[:3]}. PSNR {m}" for p in PARTS for m in methods]
    h2 += [f"{p[:3]}. FRC50 {m}" for p in PARTS for m in methods]
    lines += ["", "| " + " | ".join(h2) + " |", "|" + "---|" * len(h2)]
    for r in rows:
        cells = _row_label(r)
        cells += [_psnr(r.get(m), p) for p in PARTS for m in methods]
        cells += [_frc(r.get(m), p) for p in PARTS for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- figures -----------------------------------------------------------------------------------

def aligned(obj: np.ndarray, scores: dict, region) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude and phase of ``obj`` over ``region`` with the scale and offset the metrics
    fitted, so that every panel is on the truth's scale."""
    r0, r1, c0, c1 = region
    crop = np.asarray(obj)[r0:r1, c0:c1]
    amp = np.abs(crop) * scores["amplitude_scale"]
    phase = np.angle(crop * np.exp(-1j * scores["phase_offset"]))
    return amp, phase


def figure_png(truth: np.ndarray, panels: Sequence[tuple[str, np.ndarray, dict]], region,
               title: str) -> bytes:
    """PNG bytes: amplitude (top) and phase (bottom) of the truth and of each panel
    ``(label, object, scores)``, on the truth's colour range, SSIM in the titles."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    r0, r1, c0, c1 = region
    t = truth[r0:r1, c0:c1]
    t_amp, t_ph = np.abs(t), np.angle(t)
    cols = 1 + len(panels)
    fig, axes = plt.subplots(2, cols, figsize=(2.3 * cols, 5.0), squeeze=False)
    limits = [(float(t_amp.min()), float(t_amp.max())), (float(t_ph.min()), float(t_ph.max()))]
    images = [("truth", t_amp, t_ph, None)]
    for label, obj, scores in panels:
        amp, ph = aligned(obj, scores, region)
        images.append((label, amp, ph, scores))
    for c, (label, amp, ph, scores) in enumerate(images):
        for r, (img, cmap) in enumerate(((amp, "gray"), (ph, "viridis"))):
            ax = axes[r, c]
            ax.imshow(img, cmap=cmap, vmin=limits[r][0], vmax=limits[r][1])
            ax.set_xticks([])
            ax.set_yticks([])
            part = PARTS[r]
            sub = "" if scores is None else f"\nSSIM {scores[part]['ssim']:.3f}"
            ax.set_title(f"{label}: {part[:3]}.{sub}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figure_name(obj_name: str, dose: float, gridsize: int) -> str:
    return f"{obj_name.replace('/', '-')}__{_dose(dose)}__g{gridsize}.png"


def save_figures(rows: Sequence[dict], truths: dict, variants: Sequence[str], work_dir: str,
                 fig_dir: str) -> list[str]:
    """One PNG per (object, dose, gridsize): truth, each backend's variants, reference, the
    back-propagated estimate, floor.
    Returns the file names (in ``fig_dir``)."""
    from benchmarks.quality.rows import object_file
    from ptycho.atomic import atomic_write

    os.makedirs(fig_dir, exist_ok=True)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["object"], float(r["dose"]), r["gridsize"]), []).append(r)
    names = []
    for (obj_name, dose, g), members in groups.items():
        truth = truths[obj_name]
        region = members[0]["region"]
        panels = []
        for r in members:
            for v in variants:
                path = object_file(work_dir, obj_name, f"{dose:g}", f"g{g}", r["backend"], v)
                panels.append((f"{v} ({r['backend']})", np.load(path), r[v]))
        ref = members[0].get("reference")
        if ref is not None:
            panels.append((f"reference ({ref['engine']})",
                           np.load(object_file(work_dir, obj_name, f"{dose:g}", "reference")), ref))
        estimate = members[0].get("estimate")
        if estimate is not None:
            panels.append(("estimate (no network)",
                           np.load(object_file(work_dir, obj_name, f"{dose:g}", "estimate")),
                           estimate))
        floor = members[0].get("floor")
        if floor is not None:
            panels.append(("floor (constant)", np.ones_like(truth), floor))
        png = figure_png(truth, panels, region,
                         f"{obj_name}, {_dose(dose)} photons/pattern, gridsize {g}")
        name = figure_name(obj_name, dose, g)
        with atomic_write(os.path.join(fig_dir, name), "wb") as f:
            f.write(png)
        names.append(name)
    return names


def summary_text(results: dict[str, Any], figures: Sequence[str], fig_link_dir: str) -> str:
    """The README section: when, where, how long, the tables and the figures."""
    cfg = results["config"]
    side = (cfg["grid_side"] - 1) * cfg["step"] + cfg["N"]
    m = results["machine"]
    v = results["versions"]
    lines = [
        f"Run {results['started']} ({cfg['name']} suite, {results['seconds'] / 60:.1f} min), "
        f"{m['cpu_model']}, {m['usable_cores']} cores; ptycho {v['ptycho']}, tensorflow "
        f"{v['tensorflow']}, torch {v['torch']}, pty-chi {results.get('ptychi_version')}; "
        f"`{results['command']}`.",
        "",
        f"N={cfg['N']}, {cfg['probe']} probe, raster scans of {cfg['grid_side']}x"
        f"{cfg['grid_side']} points {cfg['step']} px apart (objects {side}x{side} px); "
        f"{_network_words(cfg)}, "
        f"{cfg['nepochs']} epochs, batch "
        f"{cfg['batch_size']}, lr {cfg['learning_rate']:g}"
        f"{'' if cfg.get('lr_schedule', 'constant') == 'constant' else ' ' + cfg['lr_schedule']}"
        f"{_averaged_words(cfg)}, trained on "
        f"{', '.join(o['name'] for o in cfg['train_objects'])}; reference "
        f"{cfg['reference_epochs']} epochs; {cfg['threads']} threads per framework."
        f"{_curve_words(cfg)}",
        "",
        markdown(results["rows"], list(cfg["variants"])),
        "",
    ]
    lines += [f"![{f}]({fig_link_dir}/{f})" for f in figures]
    return "\n".join(lines)
