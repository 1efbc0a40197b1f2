"""The short table of a benchmark run, the targets it checks, and the README section.

>>> checks = targets([{"benchmark": "simulation", "seconds": 1.7, "patterns": 10000, "N": 64}])
>>> [(c["target"], c["holds"]) for c in checks]
[('simulate 10k 64x64 patterns with Poisson noise < 5 s', True)]
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Iterable, Optional

from benchmarks import peer_size

#: Thresholds of the targets (see benchmarks/README.md).
RATIO_TO_BARE = 0.9
TORCH_OVER_TF = 0.9
STITCH_FLAT = 1.2
MEMORY_FLAT = 1.25
SIMULATE_S = 5.0
FIRST_STEP_S = 5.0
STALL_RATIO = 2.0
BF16_SPEEDUP = 1.5
#: At the peer's size, ours over the peer's network (issue 16).
OVER_PEER = 1.3

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _f(x, fmt="{:.2f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return fmt.format(x)


def _by(records, benchmark):
    return [r for r in records if r.get("benchmark") == benchmark]


def _cfg_key(r) -> tuple:
    c = r["config"]
    return (c["N"], c["gridsize"], c["batch_groups"])


def throughput_table(records: list[dict]) -> list[str]:
    lines = []
    for kind, title in (("train", "training"), ("infer", "inference (network + physics)")):
        rows = {}
        for r in _by(records, kind):
            rows.setdefault(_cfg_key(r), {})[r["backend"]] = r
        cross = {_cfg_key(r): r for r in _by(records, f"{kind}_torch_vs_tensorflow")}
        if not rows:
            continue
        lines.append(f"{title}: patterns/s (ratio = ours / bare-framework yardstick)")
        lines.append(f"  {'N':>4} {'grid':>4} {'batch':>5} | {'tf ours':>8} {'tf bare':>8} "
                     f"{'ratio':>5} | {'torch ours':>10} {'torch bare':>10} {'ratio':>5} | "
                     f"{'torch/tf':>8} | {'load':>4}")
        for key in sorted(rows):
            tf_, pt = rows[key].get("tensorflow"), rows[key].get("torch")
            cells = []
            for r, w in ((tf_, 8), (pt, 10)):
                if r is None:
                    cells.append(f"{'-':>{w}} {'-':>{w}} {'-':>5}")
                else:
                    cells.append(f"{r['ours']['patterns_per_s']:>{w}.1f} "
                                 f"{r['bare']['patterns_per_s']:>{w}.1f} "
                                 f"{_f(r['ratio_ours_to_bare']):>5}")
            x = cross.get(key)
            load = max((r["load"].get("cpu_pressure_10s_median", 0.0)
                        for r in (tf_, pt) if r), default=0.0)
            lines.append(f"  {key[0]:>4} {key[1]:>4} {key[2]:>5} | {cells[0]} | {cells[1]} | "
                         f"{_f(x and x['torch_over_tensorflow']):>8} | {load:>3.0f}%")
    rows = _by(records, "train_bare_out_of_the_box") + _by(records, "infer_bare_out_of_the_box")
    if rows:
        lines.append("torch yardstick with torch's own defaults (no backend settings): patterns/s, "
                     "and ours / it")
        for r in sorted(rows, key=lambda r: (r["benchmark"], _cfg_key(r))):
            n, g, b = _cfg_key(r)
            lines.append(f"  {r['benchmark'].split('_')[0]:>5} N={n} grid={g} batch={b}: "
                         f"{r['bare']['patterns_per_s']:.1f}, ours / it "
                         f"{_f(r.get('ratio_ours_to_this'))}")
    rows = _by(records, "bf16")
    if rows:
        lines.append("bf16 inference: patterns/s (speedup = bf16 / fp32; error = max |bf16 - fp32| "
                     "/ max |fp32|)")
        for r in sorted(rows, key=lambda r: (_cfg_key(r), r["backend"])):
            n, g, b = _cfg_key(r)
            lines.append(f"  {r['backend']:>10} N={n} grid={g} batch={b}: fp32 "
                         f"{r['float32']['patterns_per_s']:.1f}, bf16 "
                         f"{r['bfloat16']['patterns_per_s']:.1f}, speedup "
                         f"{_f(1.0 / r['ratio_float32_to_bfloat16'])}, error "
                         f"{r['accuracy']['bf16_max_abs_err_rel_to_max']:.1e}")
    return lines


def other_tables(records: list[dict]) -> list[str]:
    lines = []
    for r in _by(records, "stitching"):
        lines.append(f"stitching (numpy, N={r['N']}, bilinear, reconstruct's window): "
                     f"{r['patterns_per_s']:.0f} patterns/s ({r['us_per_pattern']:.1f} us/pattern)")
    rows = _by(records, "scaling")
    if rows:
        lines.append("scaling (reconstruct = read + scale + predict + stitch, small network; "
                     "memory = peak anonymous RSS)")
        lines.append(f"  {'backend':>10} {'patterns':>9} {'recon us/pat':>12} "
                     f"{'stitch us/pat':>13} {'peak MiB':>9}")
        for r in sorted(rows, key=lambda r: (r["backend"], r["patterns"])):
            lines.append(f"  {r['backend']:>10} {r['patterns']:>9} "
                         f"{r['reconstruct_us_per_pattern']:>12.1f} "
                         f"{r['stitch_us_per_pattern']:>13.1f} {r['peak_anon_mib']:>9.0f}")
    for r in _by(records, "memory_train"):
        c = r["config"]
        lines.append(f"memory, training ({r['backend']}, N={c['N']}, batch {c['batch_groups']}): "
                     f"peak RSS {r['peak_rss_mib']:.0f} MiB (after imports and data "
                     f"{r['rss_before_mib']:.0f} MiB)")
    for r in _by(records, "simulation"):
        lines.append(f"simulation: {r['patterns']} patterns {r['N']}x{r['N']} with Poisson "
                     f"noise in {r['seconds']:.2f} s ({r['patterns'] / r['seconds']:.0f}/s)")
    for r in _by(records, "startup"):
        lines.append(f"startup ({r['backend']}): first training step {r['time_to_first_step_s']:.2f}"
                     f" s after launch; steps {r['step_median_s'] * 1e3:.0f} ms median, "
                     f"slowest after the first {r['step_max_after_first_s'] * 1e3:.0f} ms "
                     f"(x{r['stall_ratio']:.2f}); epochs {', '.join(f'{s:.1f}' for s in r['epoch_s'])} s")
    rows = _by(records, "distributed")
    if rows:
        lines.append("distributed training: patterns/s, 1 process with K threads vs K processes "
                     "of 1 thread (one group); load = median CPU pressure of the runs")
        lines.append("  (CPU s/step: one global step, the single process's and the K processes' "
                     "together; allreduce: the gradients' all-reduce alone)")
        lines.append(f"  {'backend':>10} {'N':>4} {'grid':>4} {'batch':>5} {'K':>2} "
                     f"{'1 proc':>8} {'K procs':>8} {'speedup':>7} {'CPU s/step 1':>12} "
                     f"{'K':>6} {'eff':>5} {'allreduce ms':>12} {'load':>5}")
        for r in rows:
            multi = r["multi_runs"][0] if r["multi_runs"] else {}
            load = statistics.median(x["load"].get("cpu_pressure_10s", float("nan"))
                                     for x in r["single_runs"] + r["multi_runs"])
            lines.append(f"  {r['backend']:>10} {r['N']:>4} {r['gridsize']:>4} {r['batch']:>5} "
                         f"{r['nproc']:>2} {r['single_patterns_per_s']:>8.1f} "
                         f"{r['multi_patterns_per_s']:>8.1f} {r['speedup']:>7.2f} "
                         f"{r.get('single_cpu_s_per_step', float('nan')):>12.3f} "
                         f"{r.get('multi_cpu_s_per_step', float('nan')):>6.3f} "
                         f"{r.get('cpu_efficiency', float('nan')):>5.2f} "
                         f"{multi.get('gradient_all_reduce_ms', float('nan')):>12.2f} "
                         f"{load:>4.0f}%")
    for r in _by(records, "parity"):
        lines.append(f"parity harness (default config, all stages): {r['seconds']:.1f} s wall, "
                     f"{'PASS' if r.get('passed') else 'FAIL'}")
    return lines


def targets(records: list[dict]) -> list[dict]:
    """Every target of the issue that this run measured: what, value, threshold, holds."""
    out = []

    def add(target, value, holds, note=""):
        out.append({"target": target, "value": value, "holds": bool(holds), "note": note})

    for kind in ("train", "infer"):
        for r in _by(records, kind):
            n, g, b = _cfg_key(r)
            v = r["ratio_ours_to_bare"]
            add(f"{kind} {r['backend']} N={n} grid={g} batch={b}: ours / bare >= {RATIO_TO_BARE}",
                v, v >= RATIO_TO_BARE)
        for r in _by(records, f"{kind}_torch_vs_tensorflow"):
            n, g, b = _cfg_key(r)
            if n != 64:
                continue
            v = r["torch_over_tensorflow"]
            add(f"{kind} N=64 grid={g} batch={b}: torch / tensorflow >= {TORCH_OVER_TF}", v,
                v >= TORCH_OVER_TF)
    for kind in ("train", "infer", "scan"):
        for r in _by(records, f"{peer_size.PREFIX}{kind}_peer"):
            n, g, b = _cfg_key(r)
            c = r["config"]
            v = r["ratio_ours_to_peer"]
            add(f"{kind} {r['backend']} N={n} grid={g} batch={b}, {peer_size.variant(c)} "
                f"decoder, {c['precision']}: ours / peer >= {OVER_PEER}", v, v >= OVER_PEER)
    for r in _by(records, "bf16"):
        n, g, b = _cfg_key(r)
        v = round(1.0 / r["ratio_float32_to_bfloat16"], 3)
        add(f"bf16 {r['backend']} N={n} grid={g} batch={b}: speedup >= {BF16_SPEEDUP}", v,
            v >= BF16_SPEEDUP)
    scal = _by(records, "scaling")
    for backend in sorted({r["backend"] for r in scal}):
        rows = sorted((r for r in scal if r["backend"] == backend), key=lambda r: r["patterns"])
        if len(rows) >= 2:
            lo, hi = rows[0], rows[-1]
            v = round(hi["stitch_us_per_pattern"] / lo["stitch_us_per_pattern"], 3)
            add(f"stitching {hi['patterns']} vs {lo['patterns']} ({backend}): time per pattern "
                f"<= {STITCH_FLAT}x", v, v <= STITCH_FLAT)
            v = round(hi["reconstruct_us_per_pattern"] / lo["reconstruct_us_per_pattern"], 3)
            add(f"reconstruct {hi['patterns']} vs {lo['patterns']} ({backend}): time per pattern "
                f"<= {STITCH_FLAT}x", v, v <= STITCH_FLAT)
            v = round(hi["peak_anon_mib"] / lo["peak_anon_mib"], 3)
            add(f"memory {hi['patterns']} vs {lo['patterns']} ({backend}): peak <= "
                f"{MEMORY_FLAT}x", v, v <= MEMORY_FLAT,
                f"{lo['peak_anon_mib']:.0f} -> {hi['peak_anon_mib']:.0f} MiB")
    for r in _by(records, "simulation"):
        add(f"simulate 10k 64x64 patterns with Poisson noise < {SIMULATE_S:.0f} s",
            r["seconds"], r["seconds"] < SIMULATE_S)
    for r in _by(records, "startup"):
        v = r["time_to_first_step_s"]
        add(f"{r['backend']}: first training step < {FIRST_STEP_S:.0f} s after launch", v,
            v < FIRST_STEP_S)
        v = r["stall_ratio"]
        add(f"{r['backend']}: no per-epoch stall (slowest step <= {STALL_RATIO}x median)", v,
            v <= STALL_RATIO)
    return out


def table(records: list[dict], checks: Optional[list[dict]] = None) -> str:
    """The short human-readable summary of a run."""
    head = [r for r in records if r.get("benchmark") == "run"]
    lines = []
    if head:
        h = head[0]
        m = h["machine"]
        lines.append(f"{h['date']}  {m['cpu_model']}, {m['cores']} cores, "
                     f"{', '.join(m['cpu_flags'])}; {m['mem_gib']} GiB")
        v = h["versions"]
        lines.append(f"ptycho {v['ptycho']}, tensorflow {v['tensorflow']}, torch {v['torch']}, "
                     f"numpy {v['numpy']}; command: {h['command']}")
        lo = h.get("load_start", {})
        lines.append(f"load at start: {lo.get('loadavg_1m')} (1 min), CPU pressure "
                     f"{lo.get('cpu_pressure_10s')} %; load column: median CPU pressure "
                     "while a row was measured")
    lines += throughput_table(records)
    lines += peer_size.table(records)
    lines += other_tables(records)
    checks = targets(records) if checks is None else checks
    if checks:
        lines.append("targets:")
        for c in checks:
            lines.append(f"  [{'ok ' if c['holds'] else 'NO '}] {c['target']}: {c['value']}")
    return "\n".join(lines)


def update_readme(path: str, text: str, markers: tuple[str, str] = (BEGIN, END)) -> None:
    """Replace the results section of ``path`` (between ``markers``, by default the bench
    markers) with ``text``; append the section when the file has none."""
    begin, end = markers
    with open(path) as f:
        doc = f.read()
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc,
                     flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def flatten(groups: Iterable[list[dict]]) -> list[dict]:
    return [r for g in groups for r in g]
