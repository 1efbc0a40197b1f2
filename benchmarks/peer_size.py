"""At the peer's network size: ours against PtychoPINN's network, in one run (issue 16).

Widths 64/128/256 (``base_filters=32, n_filters_scale=2``), the size PtychoPINN trains at
N=64. Per case and backend, in alternating rounds: our training step (or ``predict_chunk``)
against the peer's network (:mod:`benchmarks.peer`, Keras ``Conv2D`` / ``nn.Conv2d``, float32)
and against the bare yardstick of our own architecture at the same widths
(:mod:`benchmarks.bare`). Each record carries the forward FLOPs per pattern of both networks
(one counting rule, :func:`benchmarks.peer.ours_flops` / :func:`~benchmarks.peer.peer_flops`),
the GFLOP/s a step reaches (a training step counted as 3 forward passes: forward, and the
backward pass's two products per conv) and its share of the machine's measured peak at that
precision (:mod:`benchmarks.peak`).

The peer runs a group of gridsize 2 as one pass of 4 channels; ours, with
``per_pattern_network`` (the default), as 4 passes of one pattern: the rows with
``per_pattern_network=False`` are the like-for-like comparison of the grouped design. A scan
has about one group per position, so each pattern sits in about C groups; ``reconstruct``
runs our per-pattern network once per distinct pattern: the ``scan`` rows time a whole scan
that way against the peer's pass per group.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

from benchmarks.throughput import CaseSpec, run_case
from benchmarks.worker import Worker

#: The peer's widths, with our default (full) decoder; with the central decoder (the peer's
#: FLOPs); at gridsize 2 also the peer's grouped design (one pass of C channels per group).
PEER_SIZE = {"base_filters": 32, "n_filters_scale": 2}
CENTRAL = {**PEER_SIZE, "central_decoder": True}
GROUPED = {**CENTRAL, "per_pattern_network": False}
#: Prefix of this section's record names.
PREFIX = "peer_size_"
#: Forward passes a training step costs (forward; backward: input and weight gradients).
TRAIN_PASSES = 3


def cases(quick: bool) -> list[CaseSpec]:
    """Training at batch 16 and inference at 64 patterns per call (16 at N=128), N=64
    gridsize 1 and 2 and N=128, in float32 and bfloat16; a whole gridsize-2 scan
    (``scan_peer``: 64 positions, 16 groups a call); the bare yardstick at N=64 in
    float32."""
    grid = [(64, 1, 16, 64, PEER_SIZE), (64, 1, 16, 64, CENTRAL), (64, 2, 16, 16, PEER_SIZE),
            (64, 2, 16, 16, GROUPED)]
    if not quick:
        grid.append((128, 1, 16, 16, PEER_SIZE))
    out = []
    for precision in ("float32", "bfloat16"):
        for n, g, train_batch, infer_batch, model in grid:
            out.append(CaseSpec("train_peer", n, g, train_batch, dict(model), precision))
            out.append(CaseSpec("infer_peer", n, g, infer_batch, dict(model), precision))
        for model in (PEER_SIZE, CENTRAL):     # gridsize 2, a whole scan as reconstruct runs it
            out.append(CaseSpec("scan_peer", 64, 2, 16, dict(model), precision))
    out += [CaseSpec("train", 64, g, 16, dict(PEER_SIZE)) for g in (1, 2)]
    return out


def _with_flops(rec: dict, peaks: dict) -> dict:
    """Add FLOPs per pattern, GFLOP/s and share of peak to a throughput record."""
    from benchmarks.peer import ours_flops, peer_flops
    from ptycho.config import ModelConfig

    c = rec["config"]
    model = {k: c[k] for k in ("base_filters", "n_filters_scale", "per_pattern_network",
                               "central_decoder") if k in c}
    cfg = ModelConfig(N=c["N"], gridsize=c["gridsize"], **model)
    # a scan row (one group per scan position) costs the peer one pass of C channels per
    # pattern, ours (each distinct pattern once) one pass of one channel
    groups_per_pattern = 1 if rec["benchmark"].startswith("scan") else 1 / cfg.n_channels
    per_pattern = {"ours": ours_flops(cfg) / cfg.n_channels,
                   "peer": peer_flops(c["N"], cfg.n_channels) * groups_per_pattern}
    rec["gflop_per_pattern_forward"] = {k: round(v / 1e9, 3) for k, v in per_pattern.items()}
    passes = TRAIN_PASSES if rec["benchmark"].startswith("train") else 1
    peak = peaks.get((rec["backend"], c.get("precision", "float32")))
    for side in ("ours", "peer"):
        if side not in rec:
            continue
        gflops = passes * per_pattern[side] * rec[side]["patterns_per_s"] / 1e9
        rec[side]["gflops"] = round(gflops, 1)
        rec[side]["share_of_peak"] = round(gflops / peak, 3) if peak else None
    rec["peak_gflops"] = peak
    return rec


def run(backends: Sequence[str], quick: bool, threads: Optional[int] = None,
        rounds: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Every case on ``backends`` (one worker process each), the peaks first."""
    rounds = rounds or (3 if quick else 5)
    records: list[dict] = []
    peaks: dict = {}
    with contextlib.ExitStack() as stack:     # every started worker is closed, whatever happens
        workers = [stack.enter_context(contextlib.closing(Worker(b, threads))) for b in backends]
        for w in workers:
            for precision in ("float32", "bfloat16"):
                p = w.ask(op="peak", precision=precision)["peak"]
                peaks[(w.backend, precision)] = p["gflops"]
                records.append({"benchmark": f"{PREFIX}conv_peak", "backend": w.backend,
                                "precision": precision, **p})
                log(f"{w.backend} {precision} conv peak {p['gflops']:.0f} GFLOP/s")
        for spec in cases(quick):
            log(f"{spec.key} ...")
            for r in run_case(workers, spec, rounds, 0.6, log):
                if r["backend"] != "both":
                    r = _with_flops(r, peaks)
                # named apart from the throughput section's records of the same kind
                records.append({**r, "benchmark": f"{PREFIX}{r['benchmark']}"})
    return records


def variant(config: dict) -> str:
    """How a record's network differs from ours at the peer's widths, in a few words."""
    name = "central" if config.get("central_decoder") else "full"
    return name + (", grouped" if config.get("per_pattern_network") is False else "")


def table(records: list[dict]) -> list[str]:
    """The section's lines for the run summary."""
    rows = [r for r in records if r.get("benchmark") in (
        f"{PREFIX}train_peer", f"{PREFIX}infer_peer", f"{PREFIX}scan_peer")]
    if not rows:
        return []
    lines = ["at the peer's size (widths 64/128/256): patterns/s, ours / peer, forward "
             "GFLOP per pattern (ours, peer), share of the measured conv peak"]
    for r in records:
        if r.get("benchmark") == f"{PREFIX}conv_peak":
            lines.append(f"  conv peak {r['backend']:>10} {r['precision']:>8}: "
                         f"{r['gflops']:.0f} GFLOP/s")
    lines.append("  (decoder: full = ours by default, central = the peer's FLOPs; grouped = one "
                 "pass of C channels per group, the peer's design; scan = a whole gridsize-2 "
                 "scan, one group per position, each pattern once in ours)")
    lines.append(f"  {'case':>6} {'backend':>10} {'N':>4} {'grid':>4} {'batch':>5} "
                 f"{'decoder':>15} {'precision':>9} | {'ours':>7} {'peer':>7} {'ratio':>5} | "
                 f"{'GFLOP':>11} | {'peak share':>10}")
    for r in rows:
        c = r["config"]
        f = r["gflop_per_pattern_forward"]
        share = r["ours"].get("share_of_peak")
        lines.append(
            f"  {r['benchmark'][len(PREFIX):].split('_')[0]:>6} {r['backend']:>10} {c['N']:>4} "
            f"{c['gridsize']:>4} {c['batch_groups']:>5} "
            f"{variant(c):>15} "
            f"{c['precision']:>9} | {r['ours']['patterns_per_s']:>7.1f} "
            f"{r['peer']['patterns_per_s']:>7.1f} {r['ratio_ours_to_peer']:>5.2f} | "
            f"{f['ours']:>5.2f} {f['peer']:>5.2f} | "
            f"{'-' if share is None else f'{share:.2f}':>10}")
    for r in records:
        if r.get("benchmark") == f"{PREFIX}train":
            c = r["config"]
            lines.append(f"  bare yardstick, {r['backend']} N={c['N']} grid {c['gridsize']}: "
                         f"ours {r['ours']['patterns_per_s']:.1f}, bare "
                         f"{r['bare']['patterns_per_s']:.1f} patterns/s, ours / bare "
                         f"{r['ratio_ours_to_bare']:.2f}")
    return lines
