"""Interrupted writes: a SIGKILL at any moment leaves the old file or the new one, never a mix.

A child process rewrites, in a loop, every kind of file the library writes (a dataset, a model
bundle, a reconstruction, a figure, a config, a parity report), alternating between two known
versions of each. We SIGKILL it several times: at random moments of the loop, and at random
moments just after a write has begun (a temporary file has appeared). After every kill each
file must load and be exactly one of the two versions. Left-over temporary files
(``.tmp-*.part``, hidden; safe to delete) prove that kills did land in the middle of writes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: Builds the two versions of every file; run by the child and by this test.
_VERSIONS = r'''
import numpy as np
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data import RawData
from ptycho.weights import init_weights
from ptycho.workflows.reconstruct import Reconstruction

def versions():
    out = {}
    rng = np.random.default_rng(0)
    diff = rng.random((2048, 64, 64), dtype=np.float32)          # 32 MiB
    x = rng.random(2048) * 100
    out["dataset"] = [RawData(diff + v, np.ones((64, 64), np.complex64), x + v, x)
                      for v in (0, 1)]
    cfg = TrainingConfig(model=ModelConfig(N=64, base_filters=16, n_filters_scale=2))
    out["bundle"] = [(init_weights(cfg.model, v, np.ones((64, 64)), 0.0), cfg) for v in (0, 1)]
    obj = (rng.random((1024, 1024)) + 1j).astype(np.complex64)     # 8 MiB
    out["reconstruction"] = [Reconstruction(obj * (v + 1), np.ones((1024, 1024)),
                                            np.zeros((4, 1, 2)), None, 0.0, 4) for v in (0, 1)]
    small = (rng.random((48, 48)) * np.exp(1j * rng.random((48, 48)))).astype(np.complex64)
    out["figure"] = [small * (v + 1) for v in (0, 1)]
    out["config"] = [TrainingConfig(nepochs=v + 1, output_dir=f"run{v}") for v in (0, 1)]
    out["report"] = [dict(backend_a="tensorflow", backend_b="torch", versions={"v": str(v)},
                          config={"seed": v}, seed=v) for v in (0, 1)]
    return out

FILES = {"dataset": "scan.npz", "bundle": "model.zip", "reconstruction": "reconstruction.npz",
         "figure": "reconstruction.png", "config": "run.yaml", "report": "parity.json"}

def write(kind, value, path):
    if kind == "dataset":
        from ptycho.data import save_npz
        save_npz(value, path)
    elif kind == "bundle":
        from ptycho.bundle import save_bundle
        save_bundle(path, value[0], value[1], backend_name="torch")
    elif kind == "reconstruction":
        from ptycho.workflows.cdi import save_reconstruction
        save_reconstruction(path, value)
    elif kind == "figure":
        from ptycho.figures import save_object_figure
        save_object_figure(path, value)
    elif kind == "config":
        from ptycho.config import save_config
        save_config(value, path)
    else:
        from parity.report import ParityReport
        ParityReport(**value).write_json(path)
'''

_CHILD = _VERSIONS + r'''
import os, sys
folder = sys.argv[1]
vs = versions()
first = True
v = 0
while True:
    for kind, name in FILES.items():
        write(kind, vs[kind][v], os.path.join(folder, name))
    if first:
        print("ready", flush=True)
        first = False
    v = 1 - v
'''

ROUNDS = 4


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", MPLBACKEND="Agg")


def _which_version(kind, path, vs, reference_png) -> int:
    """0 or 1: the version the file holds (fails if it loads as neither)."""
    if kind == "dataset":
        from ptycho.data import load_npz
        got = load_npz(path)
        hits = [v for v in (0, 1) if np.array_equal(got.diffraction, vs[kind][v].diffraction)
                and np.array_equal(got.xcoords, vs[kind][v].xcoords)]
    elif kind == "bundle":
        from ptycho.bundle import read_bundle
        got = read_bundle(path).weights
        hits = [v for v in (0, 1) if all(np.array_equal(got[k], w) for k, w in
                                         vs[kind][v][0].items())]
    elif kind == "reconstruction":
        with np.load(path, allow_pickle=False) as z:
            got = z["obj"]
        hits = [v for v in (0, 1) if np.array_equal(got, vs[kind][v].obj)]
    elif kind == "figure":
        import matplotlib.image as mpimg
        got = mpimg.imread(path)
        hits = [v for v in (0, 1) if np.array_equal(got, reference_png[v])]
    elif kind == "config":
        from ptycho.config import load_config
        got = load_config(path)
        hits = [v for v in (0, 1) if got == vs[kind][v]]
    else:
        got = json.loads(Path(path).read_text())
        hits = [v for v in (0, 1) if got["seed"] == v and got["versions"] == {"v": str(v)}]
    assert len(hits) == 1, f"{kind}: {path} is neither version"
    return hits[0]


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_old_or_new_files(tmp_path):
    namespace: dict = {}
    exec(compile(_VERSIONS, "versions", "exec"), namespace)      # the same code as the child
    vs, files, write = namespace["versions"](), namespace["FILES"], namespace["write"]
    import matplotlib.image as mpimg
    reference_png = []
    for v in (0, 1):
        p = tmp_path / f"ref{v}.png"
        write("figure", vs["figure"][v], str(p))
        reference_png.append(mpimg.imread(p))
    assert not np.array_equal(*reference_png)

    folder = tmp_path / "out"
    folder.mkdir()
    rnd = random.Random(1234)
    seen = {kind: set() for kind in files}
    leftovers_per_kill, known = [], set()
    for round_ in range(ROUNDS):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(folder)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=_env(), cwd=str(REPO))
        try:
            line = child.stdout.readline()
            assert line.strip() == "ready", child.stderr.read()[-3000:]
            if round_ % 2 == 0:       # at a random moment of the loop
                time.sleep(rnd.uniform(0.0, 1.0))
            else:                     # soon after some write has started (a temporary exists)
                before = {n for n in os.listdir(folder) if n.startswith(".tmp-")}
                deadline = time.monotonic() + 30
                while not ({n for n in os.listdir(folder) if n.startswith(".tmp-")} - before):
                    assert time.monotonic() < deadline, "no write started"
                    time.sleep(0.001)
                time.sleep(rnd.uniform(0.0, 0.02))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL
        for kind, name in files.items():
            seen[kind].add(_which_version(kind, folder / name, vs, reference_png))
        leftovers = {n for n in os.listdir(folder) if n.startswith(".tmp-")}
        leftovers_per_kill.append(len(leftovers - known))
        known |= leftovers
        for n in leftovers:      # what a user may delete after a crash; never a real name
            assert n.endswith(".part") and not n.endswith((".npz", ".zip", ".png", ".yaml"))
    print(f"kills: {ROUNDS}; temporary files left by each kill: {leftovers_per_kill}; "
          f"versions seen: { {k: sorted(v) for k, v in seen.items()} }")
    # at least one kill interrupted a write in progress (else this test proved little)
    assert sum(leftovers_per_kill) >= 1, leftovers_per_kill
