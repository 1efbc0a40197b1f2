"""``python -m benchmarks.versus --other DIR``: this checkout against another, side by side.

Each measurement runs in a fresh process of one checkout (its own interpreter and its own
code), and the two checkouts alternate in the same run: round 1 this, other; round 2 other,
this; ... so a load that comes and goes hits both alike. A round times ``steps`` calls of
the training step (``model.train_step`` on the same batches) or of inference
(``ptycho.workflows.reconstruct.predict_chunk``: network, overlap constraint, numpy out)
after a warm-up, through the public API both checkouts share. The ratio reported is the
median over rounds of this checkout's throughput over the other's (> 1: this is faster).

Examples::

    python -m benchmarks.versus --other ../old-checkout
    python -m benchmarks.versus --other ../old --python ../old/.venv/bin/python --rounds 7 \\
        --backends torch --json versus.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

#: The throughput grid of ``make bench`` (N, gridsize, batch groups), default network.
CASES = [("train", 64, 1, 16), ("train", 64, 1, 64), ("train", 64, 2, 16), ("train", 64, 2, 64),
         ("train", 128, 1, 16), ("infer", 64, 1, 16), ("infer", 64, 1, 64),
         ("infer", 64, 2, 16), ("infer", 64, 2, 64), ("infer", 128, 1, 16)]

#: Run inside each checkout's interpreter: set up one case, time ``steps`` calls per round.
PROBE = r'''
import json, math, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
kind, backend, n, gridsize, batch, steps = sys.argv[1:7]
n, gridsize, batch, steps = int(n), int(gridsize), int(batch), int(steps)
import backends
impl = backends.configure_process(backend) if hasattr(backends, "configure_process") \
    else backends.get_backend(backend)
import numpy as np
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data.grouping import group_data_for_training
from ptycho.simulate import simulate_dataset
from ptycho.training import epoch_batches
from ptycho.weights import init_weights
from ptycho.workflows.model import PtychoModel
from ptycho.workflows.reconstruct import constraint_canvas, predict_chunk
cfg = ModelConfig(N=n, gridsize=gridsize, n_filters_scale=2, base_filters=16)
tc = TrainingConfig(model=cfg, batch_size=batch, nphotons=1e6, n_groups=4 * batch, seed=0)
raw, _ = simulate_dataset(max(4 * batch, 16), n, nphotons=1e6, seed=0, scan="jitter")
data = group_data_for_training(raw, tc)
model = impl.build_model(cfg, init_weights(cfg, 0, data.probe, math.log(data.intensity_scale)))
if kind == "train":
    model.configure_training(tc)
    order = [b for e in range(1000) for b in epoch_batches(len(data), batch, 0, e)]
    it = iter(order)
    call = lambda: model.train_step(data.batch(next(it)))
else:
    pm = PtychoModel(model, tc)
    idx = np.arange(batch)
    pos = data.global_offsets[idx, None, :] + data.rel_offsets[idx].astype(np.float64)
    canvas = constraint_canvas(pm, pos)
    d = data.diffraction[idx]
    call = lambda: predict_chunk(pm, d, pos, canvas, batch_size=batch)
call(); call()
print("ready", flush=True)
for line in sys.stdin:                      # one timed round per request, until EOF
    t = time.perf_counter()
    for _ in range(steps):
        call()
    print(json.dumps({"seconds_per_call": (time.perf_counter() - t) / steps}), flush=True)
'''


class _Side:
    """One checkout's process for one case, timing a round on request."""

    def __init__(self, python: str, where: str, case, backend: str, steps: int):
        kind, n, g, b = case
        env = {**os.environ, "PYTHONPATH": where}
        self.proc = subprocess.Popen([python, "-c", PROBE, kind, backend, str(n), str(g),
                                      str(b), str(steps)], cwd=where, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the benchmark process in {where} failed to start")

    def round(self) -> float:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["seconds_per_call"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.versus",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--other", required=True, help="the other checkout (its repository root)")
    p.add_argument("--python", default=None,
                   help="the other checkout's interpreter (default: OTHER/.venv/bin/python)")
    p.add_argument("--backends", default="tensorflow,torch")
    p.add_argument("--rounds", type=int, default=5, help="alternations per case")
    p.add_argument("--steps", type=int, default=5, help="timed calls per process and round")
    p.add_argument("--only", default="", help="comma-separated case keys, e.g. train-N64-g1-b16")
    p.add_argument("--json", default=None, help="write the records here too")
    args = p.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    other = os.path.abspath(args.other)
    other_python = args.python or os.path.join(other, ".venv", "bin", "python")
    sides = {"this": (sys.executable, here), "other": (other_python, other)}
    records = []
    for backend in args.backends.split(","):
        for case in CASES:
            key = f"{case[0]}-N{case[1]}-g{case[2]}-b{case[3]}"
            if args.only and key not in args.only.split(","):
                continue
            times = {"this": [], "other": []}
            loads = []
            procs = {}
            try:
                for side in ("this", "other"):   # one at a time: set-up is not measured
                    procs[side] = _Side(*sides[side], case, backend, args.steps)
                for r in range(args.rounds):
                    for side in (("this", "other") if r % 2 == 0 else ("other", "this")):
                        times[side].append(procs[side].round())
                        loads.append(os.getloadavg()[0])
            finally:
                for proc in procs.values():
                    proc.close()
            ratios = [o / t for t, o in zip(times["this"], times["other"])]
            pat = case[3] * case[2] ** 2
            rec = {"backend": backend, "case": key,
                   "this_patterns_per_s": round(pat / statistics.median(times["this"]), 1),
                   "other_patterns_per_s": round(pat / statistics.median(times["other"]), 1),
                   "ratio_this_to_other": round(statistics.median(ratios), 3),
                   "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
                   "load_mean": round(statistics.mean(loads), 2),
                   "when": time.strftime("%Y-%m-%d %H:%M")}
            records.append(rec)
            print(json.dumps(rec), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
    width = max(len(r["case"]) for r in records) if records else 10
    print(f"{'backend':10s} {'case':{width}s} {'this p/s':>9s} {'other p/s':>9s} ratio",
          file=sys.stderr)
    for r in records:
        print(f"{r['backend']:10s} {r['case']:{width}s} {r['this_patterns_per_s']:9.1f} "
              f"{r['other_patterns_per_s']:9.1f} {r['ratio_this_to_other']:.3f} "
              f"(min {r['ratio_min_max'][0]:.3f}, max {r['ratio_min_max'][1]:.3f}, "
              f"load {r['load_mean']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
