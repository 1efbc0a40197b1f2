"""Time to the first training step, and whether later epochs stall.

Runs in a fresh process (``python -m benchmarks.startup``) the way a user's script would:
start the interpreter, import the library, load a scan from an NPZ, and call
:func:`ptycho.workflows.train`, which selects the backend (importing the framework), groups
and scales the data, builds the model and compiles or traces the step. The clock starts
when the parent launches the process (it passes its ``time.time()``), so interpreter start
and every import count. Three epochs with a short last batch follow; the record says
how long each step took, so a stall at an epoch boundary (a retrace, a copy of the data,
a save) shows as a step much slower than the median.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

T_IMPORTED_MAIN = time.time()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup")
    p.add_argument("--backend", required=True)
    p.add_argument("--data", required=True, help="NPZ scan (ptycho.data.save_npz)")
    p.add_argument("--t0", type=float, required=True, help="time.time() at launch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args(argv)

    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t_start = time.time()
    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.data import load_npz
    from ptycho.workflows import train

    raw = load_npz(a.data)
    t_loaded = time.time()
    marks: list[tuple[int, int, float]] = []

    def progress(epoch, step, n_steps, terms):
        marks.append((epoch, step, time.time()))

    cfg = TrainingConfig(model=ModelConfig(N=raw.N), nepochs=a.epochs, batch_size=a.batch,
                         nphotons=1e6)
    result = train(cfg, raw, backend=a.backend, progress=progress)
    steps = [marks[0][2] - t_loaded] + [marks[i][2] - marks[i - 1][2]
                                          for i in range(1, len(marks))]
    later = steps[1:]
    median = sorted(later)[len(later) // 2]
    boundary = [steps[i] for i, m in enumerate(marks) if m[1] == 0 and m[0] > 0]
    backend_model = result.model.backend_model
    rec = {
        "benchmark": "startup", "backend": result.model.backend,
        "config": {"N": raw.N, "gridsize": 1, "batch_groups": a.batch, "epochs": a.epochs,
                   "patterns": raw.n_patterns},
        "interpreter_start_s": round(T_IMPORTED_MAIN - a.t0, 3),
        "library_import_and_load_s": round(t_loaded - t_start, 3),
        "time_to_first_step_s": round(marks[0][2] - a.t0, 3),
        "train_call_to_first_step_s": round(marks[0][2] - t_loaded, 3),
        "prepare_s": round(result.timings["prepare_s"], 3),
        "build_s": round(result.timings["build_s"], 3),
        "step_median_s": round(median, 4),
        "step_max_after_first_s": round(max(later), 4),
        "first_steps_of_later_epochs_s": [round(s, 4) for s in boundary],
        "stall_ratio": round(max(later) / median, 2),
        "epoch_s": [round(r.seconds, 3) for r in result.history.epochs],
        "steps_per_epoch": len(marks) // a.epochs,
    }
    traces = getattr(backend_model, "train_step_traces", None)
    if traces is not None:
        rec["train_step_traces"] = traces
    json.dump(rec, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
