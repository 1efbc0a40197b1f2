"""Training throughput of K processes on K cores against one process (data parallelism).

Each configuration runs fresh processes: one process with K intra-op threads (how a
single-process run uses K cores), and K processes with one thread each, started as one group
(``RANK``/``WORLD_SIZE``/``MASTER_*`` and ``TF_CONFIG``, as ``ptycho train --nproc K`` sets
them). Every rank times the training driver's loop body on its part of each global batch:
the stop agreement (``group.any``, one tiny collective) and ``model.train_step(
data.batch(part))`` (counts all-reduce, forward and backward on its groups, the all-reduce of
terms and gradients, Adam). Rank 0 reports; throughput counts the global batch.

Also measured in the K-process run, separately: one all-reduce of a buffer the size of the
gradients, and one ``group.any`` (the per-step communication alone).

Run the rounds alternately (1 process, K processes, 1 process, ...) because the machine is
shared; medians over rounds. On a busy machine the wall-clock speed-up measures the share of
the cores the runs got; the CPU time per global step (all ranks together against the single
process) still shows what the distribution adds: ``cpu_efficiency``. ``python -m benchmarks.distributed --backend torch --batch 16``
runs one configuration; ``python -m benchmarks --only distributed`` all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np

from benchmarks.machine import load_snapshot

#: Steps not timed (tracing, first allocations), then steps timed, per run.
WARMUP_STEPS = 3


def _worker(backend: str, n: int, gridsize: int, batch: int, steps: int, threads: int) -> dict:
    """One rank (or the single process): time ``steps`` training steps; JSON on rank 0."""
    from benchmarks.worker import _dataset
    from ptycho.config import ModelConfig
    from ptycho.training import epoch_batches, local_part
    from ptycho.weights import network_weight_spec
    from ptycho.workflows.distributed import process_group

    cfg = ModelConfig(N=n, gridsize=gridsize)
    tc, data = _dataset(cfg, batch)
    with process_group(backend, threads=threads) as group:
        impl_model = _build(backend, cfg, tc, data, group)
        order = [b for e in range(1000) for b in epoch_batches(len(data), batch, tc.seed, e)]
        walls, cpus = [], []
        for step in range(WARMUP_STEPS + steps):
            w0, c0 = time.perf_counter(), time.process_time()
            if group is not None:
                group.any(False)                      # fit's stop agreement
            terms = impl_model.train_step(data.batch(local_part(order[step], group)))
            if step >= WARMUP_STEPS:
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
        finite = all(math.isfinite(v) for v in terms.values())
        comm = {}
        if group is not None:
            n_params = sum(int(np.prod(e.shape)) for e in network_weight_spec(cfg).values())
            buf = np.zeros(n_params, np.float32)
            group.all_reduce_sum([buf])                # trace / warm up
            t = [_timed(lambda: group.all_reduce_sum([buf])) for _ in range(10)]
            a = [_timed(lambda: group.any(False)) for _ in range(10)]
            comm = {"n_parameters": n_params, "gradient_all_reduce_ms": _ms(t),
                    "stop_agreement_ms": _ms(a)}
        if group is not None and group.rank != 0:
            return {}
        step_s = statistics.median(walls)
        return {"backend": backend, "N": n, "gridsize": gridsize, "batch": batch,
                "processes": 1 if group is None else group.size, "threads_per_process": threads,
                "steps": steps, "step_s": round(step_s, 5),
                "step_cpu_s": round(statistics.median(cpus), 5),
                "patterns_per_s": round(batch * cfg.n_channels / step_s, 1),
                "finite": finite, **comm}


def _build(backend, cfg, tc, data, group):
    from backends import get_backend
    from ptycho.weights import init_weights

    weights = init_weights(cfg, 0, data.probe, math.log(data.intensity_scale))
    impl = get_backend(backend)
    model = (impl.build_model(cfg, weights) if group is None
             else impl.build_model(cfg, weights, group=group))
    model.configure_training(tc)
    return model


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ms(times: Sequence[float]) -> float:
    return round(1e3 * statistics.median(times), 3)


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "TF_CONFIG"):
        env.pop(key, None)
    return env


def measure(backend: str, nproc: int, n: int, gridsize: int, batch: int, steps: int,
            threads: int, timeout: float = 900) -> dict:
    """Run one configuration in fresh processes (``nproc`` ranks of ``threads`` threads)."""
    from ptycho.cli.launch import free_ports

    args = [sys.executable, "-m", "benchmarks.distributed", "--worker", "--backend", backend,
            "--N", str(n), "--gridsize", str(gridsize), "--batch", str(batch),
            "--steps", str(steps), "--threads", str(threads)]
    envs = [_env(threads)]
    if nproc > 1:
        ports = free_ports(nproc + 1)
        workers = [f"localhost:{p}" for p in ports[:nproc]]
        envs = [dict(_env(threads), RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_RANK=str(r),
                     LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(ports[nproc]),
                     TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                           "task": {"type": "worker", "index": r}}))
                for r in range(nproc)]
    load = load_snapshot()
    procs = [subprocess.Popen(args, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for e in envs]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}):\n{err[-2000:]}")
    rec = json.loads(outs[0][0].strip().splitlines()[-1])
    rec["load"] = load
    return rec


def cases(quick: bool) -> list[dict]:
    """The configurations: N=64, gridsize 1, batch 16 and 64 (the README's main rows)."""
    batches = [16] if quick else [16, 64]
    return [{"N": 64, "gridsize": 1, "batch": b} for b in batches]


def compare(backend: str, case: dict, nproc: int, rounds: int, steps: int, log=print) -> dict:
    """``rounds`` alternating rounds of 1 process (``nproc`` threads) and ``nproc`` processes
    (1 thread each) for one case; both medians and the speed-up."""
    single, multi = [], []
    for r in range(rounds):
        for kind in (("single", "multi") if r % 2 == 0 else ("multi", "single")):
            log(f"distributed: {backend} {case} {kind}, round {r + 1}/{rounds}")
            if kind == "single":
                single.append(measure(backend, 1, steps=steps, threads=nproc, **_k(case)))
            else:
                multi.append(measure(backend, nproc, steps=steps, threads=1, **_k(case)))
    s = statistics.median(x["patterns_per_s"] for x in single)
    m = statistics.median(x["patterns_per_s"] for x in multi)
    return {"benchmark": "distributed", "backend": backend, **case, "nproc": nproc,
            "single_patterns_per_s": s, "multi_patterns_per_s": m, "speedup": round(m / s, 3),
            **cpu_per_step(single, multi, nproc),
            "single_runs": single, "multi_runs": multi, "load": load_snapshot()}


def cpu_per_step(single: Sequence[dict], multi: Sequence[dict], nproc: int) -> dict:
    """CPU seconds per global step: the single process's (all threads), and the K processes'
    together (K x rank 0's: the ranks do the same work); their ratio is the share of the work
    that distribution adds, which a busy machine does not hide the way it hides speed-ups.

    >>> cpu_per_step([{"step_cpu_s": 1.0}], [{"step_cpu_s": 0.55}], 2)["cpu_efficiency"]
    0.909
    """
    one = statistics.median(x["step_cpu_s"] for x in single)
    each = statistics.median(x["step_cpu_s"] for x in multi)
    return {"single_cpu_s_per_step": round(one, 4), "multi_cpu_s_per_step": round(nproc * each, 4),
            "cpu_efficiency": round(one / (nproc * each), 3)}


def run(backends: Sequence[str], quick: bool, nproc: int = 2, rounds: Optional[int] = None,
        log=print) -> list[dict]:
    """:func:`compare` for each backend and case."""
    rounds = rounds or (1 if quick else 2)
    steps = 10 if quick else 20
    return [compare(b, case, nproc, rounds, steps, log) for b in backends for case in cases(quick)]


def _k(case: dict) -> dict:
    return {"n": case["N"], "gridsize": case["gridsize"], "batch": case["batch"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="torch")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--gridsize", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    if a.worker:
        rec = _worker(a.backend, a.N, a.gridsize, a.batch, a.steps, a.threads)
        if rec:
            print(json.dumps(rec), flush=True)
        return 0
    rec = compare(a.backend, {"N": a.N, "gridsize": a.gridsize, "batch": a.batch}, a.nproc,
                  a.rounds, a.steps, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
