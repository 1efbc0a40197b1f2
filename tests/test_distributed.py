"""Training and reconstruction over several processes (data parallelism, ``--nproc``).

The quick tests need no framework: batch shards, the environment a launcher leaves, the
driver's part of a multi-process run (each rank's part of every batch, agreeing on a stop)
with a stand-in group, and the stitching sums. The ``distributed`` tests (also ``slow``) run
real groups of 2 CPU processes through the command line, tiny networks (N=16, gridsize 2,
base_filters 2), and check what the issue asks:

* 2 processes with global batch B follow 1 process with batch B: 20 steps (5 epochs of
  batches 20, 20, 20, 1 over 61 groups: uneven parts, and a last batch of one group, which
  leaves rank 1 an empty part), weights within ``optimizer.weights`` at 20 steps and
  per-epoch training and validation losses within ``e2e.losses`` (the losses catch a wrong
  gradient scale, to which Adam's weights are blind), per backend;
* 2-process TensorFlow against 2-process PyTorch, the same bounds as single-process parity;
* reconstruction with 2 processes equals 1 process to float32 rounding (with refinement on
  rank 0; without phase synchronisation, whose chunk-by-chunk reference changes where the
  ranks' parts meet: the parts are turned to one another instead, tested on its own);
* a killed rank makes the other exit with a clear error in bounded time, the bundle of the
  last completed epoch kept; Ctrl-C to the launcher stops every rank, rank 0 keeping the
  bundle marked interrupted.

Runs are shared between tests and between xdist workers (made once, under a file lock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho.distributed import World, shard, world_from_environment
from ptycho.errors import ConfigError
from ptycho.stitching import Stitcher
from ptycho.training import epoch_batches, fit
from ptycho.config import TrainingConfig

REPO = Path(__file__).resolve().parents[1]
F32_EPS = 2.0 ** -24

BACKENDS = [pytest.param("tensorflow", marks=pytest.mark.tensorflow, id="tensorflow"),
            pytest.param("torch", marks=pytest.mark.torch, id="torch")]
#: 61 groups in batches of 20: 20, 20, 20, 1 per epoch; 5 epochs = 20 steps.
#: Without the intensity match: it makes the loss nearly blind to some directions (the
#: intensity scale, and in a network 2 channels wide the first layer's biases), whose
#: gradients are then float32 noise that Adam turns into steps of ~lr of either sign, so two
#: summation orders (2 ranks vs 1) follow weight paths ~lr apart (measured: 1.9e-4 on
#: enc0.conv1.bias after 20 steps). Parity's optimizer stage bounds that by each gradient's
#: noise; this test is about splitting the batch over processes, not about the match.
TRAIN = ["--nepochs", "5", "--batch-size", "20", "--gridsize", "2", "--base-filters", "2",
         "--n-filters-scale", "1", "--nphotons", "1e6", "--seed", "4", "--quiet",
         "--set", "model.match_intensity=false"]
STEPS = 20
#: Wall-clock bound for the other rank to stop after one was killed: gloo sees the closed
#: connection at once; TensorFlow's health check takes up to ~60 s in the worst case;
#: generous, the machine may be busy with the rest of the suite.
KILL_BOUND_S = 150.0
RUN_TIMEOUT_S = 600


# ------------------------------------------------------------------ quick: no framework
@given(n=st.integers(0, 200), size=st.integers(1, 9))
def test_shards_cut_a_batch_into_contiguous_parts_of_near_equal_length(n, size):
    parts = [shard(n, rank, size) for rank in range(size)]
    assert parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_world_from_torchrun_variables_and_tf_config():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert world_from_environment(env) == World(3, 4, 1, 2, "node0:29500")
    tf_config = {"cluster": {"chief": ["a:1"], "worker": ["a:2", "b:1", "b:2"]},
                 "task": {"type": "worker", "index": 2}}
    w = world_from_environment({"TF_CONFIG": json.dumps(tf_config)})
    # the chief is rank 0; local rank: earlier ranks on the same host (b)
    assert (w.rank, w.size, w.local_rank, w.local_size) == (3, 4, 1, 2)
    assert w.workers == ("a:1", "a:2", "b:1", "b:2") and w.master is None
    both = dict(env, TF_CONFIG=json.dumps(tf_config))
    assert world_from_environment(both).master == "node0:29500"
    assert world_from_environment({}) is None
    assert world_from_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None


@pytest.mark.parametrize("env, words", [
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, "MASTER_ADDR"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "MASTER_PORT"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK"),
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "rank"),
    ({"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK='x'"),
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:1"]},
                               "task": {"type": "worker", "index": 0}})}, "'ps'"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "a:2"]},
                               "task": {"type": "worker", "index": 2}})}, "worker:2"),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1",
      "TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "a:2"]},
                               "task": {"type": "worker", "index": 0}})}, "TF_CONFIG says rank 0"),
])
def test_a_wrong_launcher_environment_is_named(env, words):
    with pytest.raises(ConfigError, match=None) as err:
        world_from_environment(env)
    assert words in str(err.value)


class _Group:
    """A stand-in group: this process plays ``rank`` of ``size``; the other ranks agree."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size
        self.stop_checks = 0

    def all_reduce_sum(self, arrays):
        return [np.asarray(a) * self.size for a in arrays]

    def any(self, flag: bool) -> bool:
        self.stop_checks += 1
        return bool(flag)


class _Data:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batch(self, idx):
        return np.asarray(idx)


class _Model:
    """Records the groups of every step; its weight is the number of steps taken."""

    def __init__(self, group, on_step=None):
        self.process_group = group
        self.seen: list = []
        self.w = 0
        self.on_step = on_step

    def configure_training(self, config):
        pass

    def set_learning_rate(self, lr):
        pass

    def get_weights(self):
        return {"w": np.array(self.w)}

    def set_weights(self, weights):
        self.w = int(weights["w"])

    def train_step(self, batch):
        self.seen.append(batch.tolist())
        if self.on_step is not None:
            self.on_step(len(self.seen) - 1)
        self.w += 1
        return {"nll": 1.0, "mae": 1.0, "realspace": 0.0, "total": 1.0}


def test_each_rank_trains_on_its_contiguous_part_of_every_global_batch():
    config = TrainingConfig(nepochs=2, batch_size=3, seed=5)
    group = _Group(rank=1, size=2)
    model = _Model(group)
    history = fit(model, _Data(7), config)
    expected = [b[shard(len(b), 1, 2)].tolist()
                for e in range(2) for b in epoch_batches(7, 3, 5, e)]
    assert model.seen == expected and [len(p) for p in expected[:3]] == [1, 1, 0]
    assert len(history.epochs) == 2 and group.stop_checks == 6   # one agreement per step


def test_a_signal_to_one_rank_stops_every_rank_at_the_next_step():
    """SIGTERM (what launchers send) or SIGINT is held, announced before the next step, and
    training ends as interrupted with the last completed epoch's weights; Python's
    handlers are back afterwards."""
    config = TrainingConfig(nepochs=4, batch_size=3, seed=5)    # 3 steps per epoch
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    for sig in (signal.SIGTERM, signal.SIGINT):
        model = _Model(_Group(0, 2),
                       on_step=lambda s, sig=sig: os.kill(os.getpid(), sig) if s == 4 else None)
        history = fit(model, _Data(7), config)
        assert history.interrupted and [r.epoch for r in history.epochs] == [0]
        assert len(model.seen) == 5 and model.w == 3      # step 4 ran, then restored
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_stitching_sums_over_ranks_equal_one_stitcher():
    rng = np.random.default_rng(0)
    patches = (rng.normal(size=(30, 8, 8)) + 1j * rng.normal(size=(30, 8, 8))).astype(np.complex64)
    pos = rng.uniform(4, 20, size=(30, 2))
    whole = Stitcher((26, 26), 8)
    whole.add(patches, pos)
    parts = [Stitcher((26, 26), 8) for _ in range(3)]
    for rank, st_ in enumerate(parts):
        sl = shard(30, rank, 3)
        st_.add(patches[sl], pos[sl])

    def all_reduce_sum(arrays_of_rank0):
        return [sum(p.accumulators()[i] for p in parts) for i in range(len(arrays_of_rank0))]

    parts[0].sum_over(all_reduce_sum)
    assert parts[0].count == 30
    np.testing.assert_allclose(parts[0].coverage, whole.coverage, rtol=1e-12)
    np.testing.assert_allclose(parts[0].result(), whole.result(), rtol=0, atol=4 * F32_EPS
                               * np.abs(whole.result()).max())
    with pytest.raises(ValueError, match="canvas is"):
        Stitcher((5, 5), 8).sum_over(lambda arrays: [np.zeros((2, 2)), np.zeros((2, 2)), [1.0]])


class _ThreadRanks:
    """``size`` ranks played by threads of this process: ``all_reduce_sum`` sums what every
    thread passed (a barrier on each side), so that code written for a group runs as is."""

    def __init__(self, size: int):
        import threading
        self.size = size
        self._barrier = threading.Barrier(size)
        self._inbox: list = [None] * size

    def rank(self, r: int) -> "_ThreadRanks._Rank":
        return _ThreadRanks._Rank(self, r)

    class _Rank:
        def __init__(self, ranks, r):
            self.ranks, self.rank, self.size = ranks, r, ranks.size

        def all_reduce_sum(self, arrays):
            ranks = self.ranks
            ranks._inbox[self.rank] = [np.array(a, copy=True) for a in arrays]
            ranks._barrier.wait()
            out = [sum(box[i] for box in ranks._inbox) for i in range(len(arrays))]
            ranks._barrier.wait()       # every rank has read before the next call writes
            return out


def test_the_ranks_parts_are_turned_to_one_phase_before_they_are_summed():
    """Three ranks stitch contiguous parts of a scan of one object, each part with its own
    phase offset (what a part's chunk-by-chunk synchronisation leaves): turned to one another
    (``_align_parts``) and summed, they give the object; summed as they are, they do not."""
    import threading

    from ptycho.workflows.reconstruct import _align_parts
    rng = np.random.default_rng(1)
    obj = (1.0 + 0.3 * rng.normal(size=(40, 48))) * np.exp(1j * rng.normal(size=(40, 48)))
    pos = np.array([[x, y] for y in range(8, 33, 3) for x in range(8, 41, 3)], np.float64)
    patches = np.stack([obj[int(y) - 8:int(y) + 8, int(x) - 8:int(x) + 8] for x, y in pos])
    offsets = np.exp(1j * np.array([0.4, -2.0, 2.9]))

    def stitch(turn: bool) -> np.ndarray:
        ranks, parts = _ThreadRanks(3), [Stitcher((40, 48), 16, "full") for _ in range(3)]

        def run(r: int) -> None:
            sl = shard(len(pos), r, 3)
            parts[r].add(patches[sl] * offsets[r], pos[sl])
            if turn:
                _align_parts(parts[r], ranks.rank(r))
            parts[r].sum_over(ranks.rank(r).all_reduce_sum)

        threads = [threading.Thread(target=run, args=(r,)) for r in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return parts[0].result()

    covered = slice(0, 40), slice(0, 46)          # what the patches reach
    turned = stitch(True)[covered] * np.conj(offsets[0])
    assert np.max(np.abs(turned - obj[covered])) <= 1e-5 * np.abs(obj).max()
    assert np.max(np.abs(stitch(False)[covered] * np.conj(offsets[0]) - obj[covered])) > 0.1


def test_nproc_must_agree_with_the_group_a_launcher_started():
    from ptycho.cli.launch import check_nproc
    check_nproc(2, World(0, 2, master="h:1"))
    check_nproc(1, World(0, 2, master="h:1"))
    with pytest.raises(ValueError, match="--nproc 3.*group of 2"):
        check_nproc(3, World(1, 2, master="h:1"))


# ------------------------------------------------------------------ real groups of processes
def _child_env() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("PTYCHO_BACKEND", "TF_CONFIG", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _ptycho(*argv, timeout=RUN_TIMEOUT_S) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ptycho", *map(str, argv)], env=_child_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return {"code": proc.returncode, "stderr": proc.stderr[-4000:], "stdout": proc.stdout[-2000:]}


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """A folder shared by every xdist worker of this session, and a way to make something
    in it once (under a file lock; the others wait and read the result)."""
    filelock = pytest.importorskip("filelock", reason="filelock is in the test extra")
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "distributed"
    root.mkdir(exist_ok=True)

    def once(key: str, make) -> dict:
        with filelock.FileLock(str(root / f"{key}.lock")):
            folder = root / key
            done = folder / "result.json"
            if not done.exists():
                folder.mkdir(exist_ok=True)
                done.write_text(json.dumps(make(folder)))
            return json.loads(done.read_text())
    return root, once


@pytest.fixture(scope="session")
def scans(shared):
    root, once = shared

    def make(folder):
        from ptycho.cli.main import main
        out = {}
        for name, n, seed in (("train", 61, 1), ("test", 37, 2)):
            path = folder / f"{name}.npz"
            assert main(["simulate", "--output", str(path), "--n-patterns", str(n), "--N", "16",
                         "--nphotons", "1e6", "--seed", str(seed), "--scan", "jitter"]) == 0
            out[name] = str(path)
        return out
    return once("scans", make)


@pytest.fixture(scope="session")
def trained(shared, scans):
    """``trained(backend, nproc)``: a ``ptycho train`` run, made once."""
    _, once = shared

    def get(backend: str, nproc: int) -> dict:
        def make(folder):
            out = folder / "run"
            r = _ptycho("train", "--train-data", scans["train"], "--test-data", scans["test"],
                        "--output-dir", out, "--backend", backend, *TRAIN, "--nproc", nproc)
            return dict(r, bundle=str(out / "model.zip"), summary=str(out / "summary.json"))
        r = once(f"train-{backend}-{nproc}", make)
        assert r["code"] == 0, r["stderr"]
        return r
    return get


def _weights_and_losses(run: dict):
    from ptycho.bundle import read_bundle
    contents = read_bundle(run["bundle"])
    keys = ("nll", "mae", "realspace", "total")
    losses = np.array([[r.loss[k] for k in keys] + [r.val_loss[k] for k in keys]
                       for r in contents.history.epochs])
    return contents.weights, losses


def _assert_same_path(a: dict, b: dict) -> None:
    """Weights within optimizer.weights at 20 steps (relative to each entry's largest
    |w|), per-epoch training and validation losses within e2e.losses at 20 steps."""
    from parity.tolerances import tolerance
    (wa, la), (wb, lb) = _weights_and_losses(a), _weights_and_losses(b)
    assert la.shape == lb.shape == (5, 8)
    tol_w = tolerance("optimizer.weights", steps=STEPS)
    assert list(wa) == list(wb)
    for name in wa:
        err = float(np.max(np.abs(wa[name] - wb[name])))
        assert err <= tol_w.rtol * float(np.max(np.abs(wb[name]))), (name, err)
    tol_l = tolerance("e2e.losses", steps=STEPS)
    assert np.all(np.abs(la - lb) <= tol_l.atol + tol_l.rtol * np.abs(lb)), (la, lb)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_follow_one_process(trained, backend):
    one, two = trained(backend, 1), trained(backend, 2)
    summary = json.loads(Path(two["summary"]).read_text())
    assert summary["processes"] == 2 and summary["history"]["epochs"] == 5
    _assert_same_path(two, one)
    # rank 0 alone wrote, each file atomically: the same files as one process, nothing stray
    assert sorted(os.listdir(Path(two["bundle"]).parent)) == \
        sorted(os.listdir(Path(one["bundle"]).parent)) == \
        ["comparison.png", "loss.png", "model.zip", "reconstruction.npz", "reconstruction.png",
         "summary.json"]
    # the test scan, reconstructed after training by both ranks (each its part of the scan;
    # the objects themselves differ where phase synchronisation's reference does, see
    # test_reconstruction_with_two_processes_equals_one)
    cov_one, cov_two = (np.load(Path(r["bundle"]).parent / "reconstruction.npz")["coverage"]
                        for r in (one, two))
    assert summary["reconstruction"]["n_patterns"] == 37
    assert np.max(np.abs(cov_two - cov_one)) <= 4 * F32_EPS * cov_one.max()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parity
def test_two_process_tensorflow_and_torch_agree(trained):
    _assert_same_path(trained("tensorflow", 2), trained("torch", 2))


#: One rank (or the single process) of a reconstruction through the library: the object
#: without phase synchronisation (whose reference changes where the ranks' parts meet), then
#: one refinement iteration on rank 0; rank 0 saves what it got.
RECONSTRUCT = """
import sys
import numpy as np
from ptycho.data.contract import load_npz
from ptycho.workflows.distributed import process_group
from ptycho.workflows.inference import load_inference_bundle
from ptycho.workflows.reconstruct import reconstruct

bundle, scan, backend, out = sys.argv[1:5]
with process_group(backend) as group:
    model, _ = load_inference_bundle(bundle, backend=backend, group=group)
    recon = reconstruct(model, load_npz(scan), batch_size=3, chunk_groups=12, keep_patches=False,
                        phase_sync=False, refine=1)
    if group is None or group.rank == 0:
        np.savez(out, obj=recon.obj, network_obj=recon.network_obj, coverage=recon.coverage)
    else:
        assert recon is None
"""


def _rank_env(rank: int, size: int, ports: list) -> dict:
    """The environment of rank ``rank`` of a group started by hand: torchrun's variables and
    TF_CONFIG (``ports``: one per rank, then the rendezvous's)."""
    workers = [f"localhost:{p}" for p in ports[:size]]
    return dict(_child_env(), RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[size]),
                TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                      "task": {"type": "worker", "index": rank}}))


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_reconstruction_with_two_processes_equals_one(tmp_path, scans, trained, backend):
    """The scan (37 groups of 4, chunks of 12 groups: each rank stitches more than one)
    split over 2 processes, the stitching sums added up, rank 0 normalising and refining
    (one iteration): the same object, network object and coverage as one process, to
    float32 rounding. Then ``ptycho reconstruct --nproc 2`` (with phase synchronisation):
    rank 0 writes, refinement ran, the same coverage."""
    from ptycho.cli.launch import free_ports
    bundle = trained(backend, 1)["bundle"]
    args = [sys.executable, "-c", RECONSTRUCT, bundle, scans["test"], backend]
    one = subprocess.run(args + [str(tmp_path / "one.npz")], env=_child_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert one.returncode == 0, one.stderr[-3000:]
    ports = free_ports(3)
    ranks = [subprocess.Popen(args + [str(tmp_path / "two.npz")], env=_rank_env(r, 2, ports),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    outs = [p.communicate(timeout=RUN_TIMEOUT_S)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outs
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for key in ("obj", "network_obj", "coverage"):
        scale = float(np.max(np.abs(a[key])))
        assert scale > 0
        assert np.max(np.abs(b[key] - a[key])) <= 4 * F32_EPS * scale, key

    out = tmp_path / "cli"
    r = _ptycho("reconstruct", "--model", bundle, "--data", scans["test"], "--output-dir", out,
                "--backend", backend, "--batch-size", 3, "--refine", 1, "--quiet", "--nproc", 2)
    assert r["code"] == 0, r["stderr"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["refinement"]["iterations"] == 1
    assert (summary["reconstruction"]["n_patterns"], summary["reconstruction"]["n_patches"]) \
        == (37, 37 * 4)
    cli = np.load(out / "reconstruction.npz")
    assert np.max(np.abs(cli["coverage"] - a["coverage"])) <= 4 * F32_EPS * a["coverage"].max()
    assert np.all(np.isfinite(cli["obj"])) and sorted(os.listdir(out)) == [
        "comparison.png", "reconstruction.npz", "reconstruction.png", "summary.json"]


def _wait_for(path: Path, procs, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs), "a rank ended before the first epoch"
        assert time.monotonic() < end, f"{path} did not appear within {timeout} s"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_rank_makes_the_other_exit_with_a_clear_error(tmp_path, scans, backend):
    """Two ranks started by hand (no launcher to clean up after them); rank 1 is killed
    after the first epoch: rank 0 must exit by itself, status 1, naming what happened,
    within a bounded time, its last bundle intact."""
    from ptycho.bundle import read_bundle
    from ptycho.cli.launch import free_ports
    ports = free_ports(3)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "ptycho", "train", "--train-data", scans["train"],
            "--output-dir", str(out), "--backend", backend, *TRAIN[2:], "--nepochs", "500"]
    procs, logs = [], []
    for rank in range(2):
        logs.append(open(tmp_path / f"rank{rank}.log", "w+"))
        procs.append(subprocess.Popen(argv, env=_rank_env(rank, 2, ports), stdout=logs[-1],
                                      stderr=subprocess.STDOUT, cwd=REPO))
    try:
        _wait_for(out / "model.zip", procs, RUN_TIMEOUT_S)
        procs[1].kill()
        killed_at = time.monotonic()
        code = procs[0].wait(timeout=KILL_BOUND_S)
        took = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    text = (tmp_path / "rank0.log").read_text()
    assert code == 1, text[-3000:]
    assert took < KILL_BOUND_S
    line = next((ln for ln in text.splitlines() if ln.startswith("ptycho train: error:")), "")
    assert "rank 0 of 2" in line and "collective operation with the other ranks" in line, \
        text[-3000:]
    assert "the last completed epoch is saved in" in line
    assert "Traceback" not in text
    contents = read_bundle(out / "model.zip")
    assert len(contents.history.epochs) >= 1


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_to_the_launcher_stops_every_rank_and_keeps_the_bundle(tmp_path, scans, backend):
    """``ptycho train --nproc 2`` (torchrun for torch, TF_CONFIG processes for TensorFlow),
    SIGINT once the first epoch is saved: status 130, every rank gone, the bundle marked
    interrupted with the completed epochs."""
    from ptycho.bundle import read_bundle
    out = tmp_path / "run"
    log = open(tmp_path / "launcher.log", "w+")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "ptycho", "train", "--train-data", scans["train"], "--output-dir",
         str(out), "--backend", backend, *TRAIN[2:], "--nepochs", "500", "--nproc", "2"],
        env=_child_env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        _wait_for(out / "model.zip", [launcher], RUN_TIMEOUT_S)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2, ranks
        launcher.send_signal(signal.SIGINT)
        code = launcher.wait(timeout=KILL_BOUND_S)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        log.close()
    text = (tmp_path / "launcher.log").read_text()
    assert code == 130, text[-3000:]
    assert not any(_alive(pid) for pid in ranks)
    contents = read_bundle(out / "model.zip")
    assert contents.history.interrupted and len(contents.history.epochs) >= 1, text[-3000:]
    assert "Traceback" not in text


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
