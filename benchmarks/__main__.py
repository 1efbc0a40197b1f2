"""``python -m benchmarks``: run the benchmarks, print JSON (stdout) and a short table (stderr).

Examples::

    python -m benchmarks                      # everything (~20-25 min on 2 cores)
    python -m benchmarks --quick              # reduced sizes and rounds (~6-8 min)
    python -m benchmarks --only throughput,scaling --backends torch
    python -m benchmarks --json out.json --readme benchmarks/README.md

``--readme`` replaces the results section of that file (between the ``bench`` markers)
with this run's table, date, machine and command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

from benchmarks import report
from benchmarks.machine import load_snapshot, machine_info, versions

SECTIONS = ("throughput", "peer_size", "stitching", "simulation", "memory", "scaling", "startup",
            "distributed", "parity")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _subprocess_json(args: list[str], timeout: float = 900) -> dict:
    """Run ``python args...`` in a fresh process; its last stdout line is a JSON record."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stitching(quick: bool) -> list[dict]:
    import numpy as np

    from benchmarks.timing import summarize, time_calls
    from ptycho.physics.patches import central_mask
    from ptycho.simulate import make_probe
    from ptycho.stitching import Stitcher

    n, side, count = 64, 1024, 4096 if quick else 16384
    rng = np.random.default_rng(0)
    patches = (rng.normal(size=(1024, n, n)) + 1j * rng.normal(size=(1024, n, n))).astype(np.complex64)
    pos = rng.uniform(n // 2 + 1, side - n // 2 - 2, size=(count, 2))
    # the window reconstruct uses by default: probe intensity on the central N/2 square
    intensity = np.abs(make_probe("disk", n)) ** 2
    window = intensity / intensity.max() * central_mask(n)

    def run() -> None:
        st = Stitcher((side, side), n, window=window)
        for lo in range(0, count, 1024):
            st.add(patches, pos[lo:lo + 1024])

    s = summarize(time_calls(run, 3))
    return [{"benchmark": "stitching", "N": n, "patterns": count, "object": [side, side],
             "window": "probe intensity x central N/2 square (reconstruct's)", "subpixel": "bilinear",
             "seconds": s["wall_s"], "cpu_s": s["cpu_s"],
             "us_per_pattern": round(1e6 * s["wall_s"] / count, 2),
             "patterns_per_s": round(count / s["wall_s"], 1), "load": load_snapshot()}]


def _simulation(quick: bool) -> list[dict]:
    from benchmarks.timing import summarize, time_calls
    from ptycho.simulate import simulate_dataset

    s = summarize(time_calls(lambda: simulate_dataset(10000, 64, nphotons=1e9, seed=0),
                             1 if quick else 3))
    return [{"benchmark": "simulation", "patterns": 10000, "N": 64, "noise": "poisson",
             "seconds": s["wall_s"], "cpu_s": s["cpu_s"], "runs": s["n"],
             "load": load_snapshot()}]


def _memory(backends: list[str], quick: bool, threads: Optional[int]) -> list[dict]:
    out = []
    for b in backends:
        _log(f"memory: training ({b}) in a fresh process")
        args = ["-m", "benchmarks.memory", "train", "--backend", b,
                "--epochs", "1" if quick else "2"]
        if threads:
            args += ["--threads", str(threads)]
        rec = _subprocess_json(args)
        rec["load"] = load_snapshot()
        out.append(rec)
    return out


def _scaling(backends: list[str], quick: bool, threads: Optional[int], tmp: str) -> list[dict]:
    from benchmarks.scaling import make_scan

    sizes = [1000, 10000] if quick else [1000, 10000, 100000]
    path = os.path.join(tmp, "scan.npy")
    _log(f"scaling: writing a {max(sizes)}-pattern scan to {path}")
    info = make_scan(path, max(sizes), 64)
    out = []
    for b in backends:
        for m in sizes:
            _log(f"scaling: {b}, {m} patterns, fresh process")
            args = ["-m", "benchmarks.scaling", "--backend", b, "--data", path,
                    "--patterns", str(m)]
            if threads:
                args += ["--threads", str(threads)]
            rec = _subprocess_json(args, timeout=1800)
            rec["scan_file_mib"] = round(info["bytes"] / 2 ** 20, 1)
            rec["load"] = load_snapshot()
            out.append(rec)
    return out


def _startup(backends: list[str], tmp: str) -> list[dict]:
    from ptycho.data import save_npz
    from ptycho.simulate import simulate_dataset

    path = os.path.join(tmp, "startup.npz")
    raw, _ = simulate_dataset(250, 64, nphotons=1e6, seed=0, scan="jitter")
    save_npz(raw, path)
    out = []
    for b in backends:
        _log(f"startup: {b}, fresh process")
        rec = _subprocess_json(["-m", "benchmarks.startup", "--backend", b, "--data", path,
                                "--t0", repr(time.time())])
        rec["load"] = load_snapshot()
        out.append(rec)
    return out


def _parity(tmp: str) -> list[dict]:
    path = os.path.join(tmp, "parity.json")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ptycho", "parity", "--json", path],
                          capture_output=True, text=True, env=_env(), timeout=1800)
    wall = time.perf_counter() - t0
    rec = {"benchmark": "parity", "command": "ptycho parity (default config, all stages)",
           "seconds": round(wall, 2), "exit_code": proc.returncode, "load": load_snapshot()}
    try:
        with open(path) as f:
            rep = json.load(f)
        rec["passed"] = bool(rep.get("passed"))
        rec["stage_seconds"] = {s["name"]: s["seconds"] for s in rep.get("stages", [])}
        rec["config"] = rep.get("config")
    except (OSError, ValueError):
        rec["passed"] = False
    return [rec]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced sizes and rounds")
    p.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--backends", default="tensorflow,torch",
                   help="comma-separated backends (default: tensorflow,torch)")
    p.add_argument("--threads", type=int, default=None,
                   help="override the framework's thread count (default: the backend's)")
    p.add_argument("--rounds", type=int, default=None, help="throughput rounds per case")
    p.add_argument("--json", dest="json_out", help="also write the JSON to this file")
    p.add_argument("--readme", help="replace the results section of this README")
    a = p.parse_args(argv)

    from backends.registry import canonical_name
    backends = [canonical_name(b.strip()) for b in a.backends.split(",") if b.strip()]
    only = set(a.only.split(",")) if a.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    command = "python -m benchmarks" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                          if (argv or sys.argv[1:]) else "")
    head = {"benchmark": "run", "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": command, "quick": a.quick, "backends": backends,
            "machine": machine_info(), "versions": versions(), "load_start": load_snapshot()}
    records: list[dict] = []
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="ptycho-bench-")
    steps: list[tuple[str, Callable[[], list[dict]]]] = [
        ("throughput", lambda: __import__("benchmarks.throughput", fromlist=["run"]).run(
            backends, a.quick, a.threads, a.rounds, log=_log)),
        ("peer_size", lambda: __import__("benchmarks.peer_size", fromlist=["run"]).run(
            backends, a.quick, a.threads, a.rounds, log=_log)),
        ("stitching", lambda: _stitching(a.quick)),
        ("simulation", lambda: _simulation(a.quick)),
        ("startup", lambda: _startup(backends, tmp)),
        ("memory", lambda: _memory(backends, a.quick, a.threads)),
        ("scaling", lambda: _scaling(backends, a.quick, a.threads, tmp)),
        ("distributed", lambda: __import__("benchmarks.distributed", fromlist=["run"]).run(
            backends, a.quick, log=_log)),
        ("parity", lambda: _parity(tmp)),
    ]
    errors = []
    try:
        for name, fn in steps:
            if name not in only:
                continue
            if name == "parity" and len(backends) < 2:
                continue
            _log(f"{name} ...")
            t0 = time.perf_counter()
            try:
                records += fn()
            except Exception as err:  # noqa: BLE001 (one failed section must not lose the rest)
                errors.append({"section": name, "error": f"{type(err).__name__}: {err}"})
                _log(f"{name} FAILED: {err}")
            _log(f"{name} done in {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head["seconds"] = round(time.perf_counter() - t_start, 1)
    head["load_end"] = load_snapshot()
    if errors:
        head["errors"] = errors
    # every record carries the machine, the versions and the run's date (self-contained)
    context = {"machine": head["machine"], "versions": head["versions"], "date": head["date"]}
    out = [head] + [{**r, **context} for r in records]
    checks = report.targets(out)
    doc = {"records": out, "targets": checks}
    text = json.dumps(doc, indent=1, default=str)
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(text + "\n")
    summary = report.table(out, checks)
    print(summary, file=sys.stderr)
    if a.readme:
        report.update_readme(a.readme, f"```\n{summary}\n```\n\nTotal run time: "
                                       f"{head['seconds']:.0f} s.")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
