"""Bounded resources on hostile input (issue 15): every class of hostile input is refused with a
clear error, in little memory, and leaves nothing behind.

The inputs are built by :mod:`benchmarks.hostile` (``python -m benchmarks.hostile`` prints each
case's time and peak memory, run alone). Here each class runs in one fresh process under the
budget ``PTYCHO_MAX_BYTES`` = 2 GiB, and each case must end with its documented error, a one-line
message naming what is wrong, and the process's peak resident memory (``VmHWM``, which also
counts every case run before it in that process) under 300 MiB. No time is asserted; a case that
hangs (a FIFO opened for reading blocks forever) fails after two minutes.

Next to them: the memory budget itself, output-folder locks and stale temporaries, a full disk,
a closed stdout, and runs that fail early leaving no folder behind.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:       # benchmarks/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import hostile as H  # noqa: E402
from ptycho import limits  # noqa: E402
from ptycho.cli.main import main  # noqa: E402
from ptycho.errors import (ConfigError, DataLimitError, OutputFolderBusyError,  # noqa: E402
                           ResourceLimitError)

GROUPS = ("special files", "lying sizes", "compression ratio", "extra bundle entries",
          "expensive bundle config", "outlying position", "concurrent writers")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    built, cleanups = H.build_cases(str(folder))
    yield built
    for cleanup in cleanups:
        cleanup()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, /dev/zero, VmHWM")
@pytest.mark.parametrize("group", GROUPS)
def test_each_class_of_hostile_input_is_refused_in_little_memory(cases, group):
    chosen = [c for c in cases if c.group == group]
    assert chosen, group
    records = H.run_cases(chosen)
    problems = {c.name: H.check(c, r) for c, r in zip(chosen, records)}
    assert not any(problems.values()), problems
    for c, r in zip(chosen, records):
        assert r["peak_rss_mib"] < H.PEAK_LIMIT_MIB
        if c.hold_lock:
            assert f"pid {r['holder_pid']}" in r["error"]      # names the holder


def test_every_class_of_the_issue_has_cases(cases):
    assert {c.group for c in cases} == set(GROUPS)
    loaders = {c.function for c in cases if c.group == "special files" and c.kind == "call"}
    assert loaders == {"load_npz", "read_bundle", "load_config", "load_image"}
    commands = {c.argv[0] for c in cases if c.group == "special files" and c.kind == "cli"}
    assert commands == {"train", "reconstruct", "bundle", "simulate", "parity"}


# --------------------------------------------------------------------------------------------
# the budget


def test_budget_from_the_environment_with_units(monkeypatch):
    for text, expected in (("1000", 1000), ("1.5GiB", 3 << 29), ("500M", 500_000_000),
                           ("2 G", 2_000_000_000), ("64KiB", 65536), ("1e9", 10 ** 9)):
        monkeypatch.setenv(limits.ENV_VAR, text)
        assert limits.memory_budget() == expected, text


@pytest.mark.parametrize("text", ["lots", "-1", "0", "1.5XB", "nan", "GiB"])
def test_a_malformed_budget_is_a_clear_config_error(monkeypatch, text):
    monkeypatch.setenv(limits.ENV_VAR, text)
    with pytest.raises(ConfigError, match=rf"{limits.ENV_VAR}="):
        limits.memory_budget()


def test_default_budget_is_a_fraction_of_the_usable_memory(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    usable = limits.usable_memory()
    budget = limits.current_budget()
    if usable is None:
        assert budget.bytes == limits.FALLBACK_BYTES
    else:
        assert budget.bytes == int(usable * limits.DEFAULT_FRACTION)
        assert "unset" in budget.source


def test_the_budget_is_read_at_each_check(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "1MiB")
    with pytest.raises(ResourceLimitError, match=r"2 MiB, more than the memory budget of 1 MiB"):
        limits.check_bytes(2 << 20, "two MiB")
    monkeypatch.setenv(limits.ENV_VAR, "4MiB")
    limits.check_bytes(2 << 20, "two MiB")            # no cached value


def test_a_malformed_budget_at_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(limits.ENV_VAR, "lots")
    assert main(["simulate", "-o", str(tmp_path / "s.npz"), "--n-patterns", "4", "--N",
                 "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptycho simulate: error:") and "PTYCHO_MAX_BYTES='lots'" in err
    assert "\n" not in err and not (tmp_path / "s.npz").exists()


# --------------------------------------------------------------------------------------------
# canvases and models, in the library (before anything large is allocated)


def _scan(m=25, outlier=None):
    from ptycho.data import RawData
    from ptycho.simulate import simulate_dataset

    raw, _ = simulate_dataset(m, 16, nphotons=1e4, seed=0, store_object=False, workers=1)
    x = raw.xcoords.copy()
    if outlier is not None:
        x[outlier[0]] = outlier[1]
    return RawData(raw.diffraction, raw.probe, x, raw.ycoords)


def test_plan_names_the_outlying_position_before_any_canvas_is_allocated(monkeypatch):
    import tracemalloc

    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.workflows.reconstruct import plan_reconstruction

    monkeypatch.setenv(limits.ENV_VAR, "1GiB")
    raw = _scan(outlier=(7, 3e6))
    cfg = TrainingConfig(model=ModelConfig(N=16, base_filters=1, n_filters_scale=1))
    tracemalloc.start()
    try:
        with pytest.raises(DataLimitError, match=r"index 7 \(x=3e\+06, y=[0-9.]+\)") as info:
            plan_reconstruction(cfg, raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "object canvas of" in str(info.value) and peak < 16 << 20
    ok = plan_reconstruction(cfg, _scan())           # the same scan without it plans fine
    assert ok.object_shape[1] < 100


def test_group_canvas_of_training_names_the_outlier(monkeypatch):
    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.workflows.train import check_training_memory, prepare

    monkeypatch.setenv(limits.ENV_VAR, "1GiB")
    cfg = TrainingConfig(model=ModelConfig(N=16, gridsize=2, base_filters=1, n_filters_scale=1),
                         batch_size=8)
    grouped = prepare(_scan(outlier=(3, 12000.0)), cfg)
    with pytest.raises(DataLimitError, match=r"training batch.*index 3 \(x=12000"):
        check_training_memory(cfg, grouped)
    check_training_memory(cfg, prepare(_scan(), cfg))


def test_grouping_and_models_too_large_are_refused_before_allocation(monkeypatch):
    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.model_memory import check_model_memory
    from ptycho.stitching import Stitcher
    from ptycho.workflows.train import prepare

    monkeypatch.setenv(limits.ENV_VAR, "256MiB")
    cfg = TrainingConfig(model=ModelConfig(N=16, gridsize=4, base_filters=1, n_filters_scale=1),
                         n_groups=1 << 20, neighbor_count=16)
    with pytest.raises(ResourceLimitError, match=r"grouped training data \(1048576 groups"):
        prepare(_scan(), cfg)
    with pytest.raises(ResourceLimitError, match=r"object canvas of 100000 x 100000"):
        Stitcher((100_000, 100_000), 16)
    with pytest.raises(ResourceLimitError, match=r"training in batches of 64"):
        check_model_memory(ModelConfig(N=256, base_filters=64), 64, training=True)
    check_model_memory(ModelConfig(N=16, base_filters=2), 16, training=True)


def test_model_estimate_counts_every_parameter():
    from ptycho.config import ModelConfig
    from ptycho.model_memory import estimate_model_memory
    from ptycho.weights import init_weights

    cfg = ModelConfig(N=32, gridsize=2, base_filters=3, n_filters_scale=1)
    w = init_weights(cfg, 0, np.ones((32, 32), np.complex64), 0.0)
    mem = estimate_model_memory(cfg)
    assert mem.parameter_bytes == sum(a.nbytes for a in w.values())
    # training keeps at least the input, every conv output and the physics, in float32;
    # inference at least the widest layer's input and output (enc0.conv2: 3 x 32 x 32 each)
    assert mem.activation_bytes_per_group > 4 * (4 * 32 * 32) * 10
    assert 4 * 2 * 3 * 32 * 32 < mem.inference_bytes_per_group < mem.activation_bytes_per_group
    assert mem.inference_bytes(10) == mem.parameter_bytes + 10 * mem.inference_bytes_per_group
    assert mem.training_bytes(10) == 4 * mem.parameter_bytes + 20 * mem.activation_bytes_per_group


# --------------------------------------------------------------------------------------------
# output folders: created late, locked, cleaned


def _holder(folder):
    return H._holder(str(folder))


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_dies_with_it(tmp_path):
    from ptycho.outdir import LOCK_NAME, output_folder

    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(OutputFolderBusyError, match=rf"pid {holder.pid}\b") as info:
            with output_folder(run, "test"):
                pass
        assert info.value.filename == str(run) and isinstance(info.value, OSError)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK_NAME).exists()          # a killed holder leaves its file, not its lock
    with output_folder(run, "test") as folder:
        assert os.listdir(folder) == [LOCK_NAME]
    assert os.listdir(run) == []               # the lock file goes with the run


def test_output_folder_cleans_up_only_what_it_created(tmp_path):
    from ptycho.outdir import output_folder

    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "a" / "b" / "c"):
            raise RuntimeError("the run failed before writing")
    assert os.listdir(tmp_path) == []          # a, b and c were made by it and are empty
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "kept"):
            raise RuntimeError("x")
    assert (tmp_path / "kept").is_dir()        # it existed before
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "new") as folder:
            (Path(folder) / "model.zip").write_bytes(b"x")
            raise RuntimeError("failed after writing")
    assert (tmp_path / "new" / "model.zip").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        with output_folder(tmp_path / "file"):
            pass


def test_stale_temporaries_of_killed_writers_are_removed_on_the_next_run(tmp_path):
    from ptycho.atomic import _host_tag
    from ptycho.outdir import output_folder

    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys, time\nfrom ptycho.atomic import atomic_write\n"
            f"with atomic_write({str(run / 'reconstruction.npz')!r}) as f:\n"
            "    f.write(b'x' * 100000); f.flush(); print('writing', flush=True); time.sleep(600)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert writer.stdout.readline().strip() == "writing"
    live = [n for n in os.listdir(run) if n.endswith(".part")]
    assert len(live) == 1 and f".{writer.pid}@" in live[0]
    with output_folder(run):                                  # the writer still runs: kept
        assert live[0] in os.listdir(run)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    other_host = f".tmp-model.zip.{writer.pid}@another-host.abcdefgh.part"
    unrelated = ".tmp-notes.txt"
    for name in (other_host, unrelated):
        (run / name).write_bytes(b"")
    with output_folder(run):
        left = sorted(os.listdir(run))
    assert live[0] not in left                                # the dead writer's file is gone
    assert other_host in left and unrelated in left           # never touched
    assert _host_tag() in live[0]


def test_simulate_removes_the_stale_temporary_of_its_own_target(tmp_path):
    from ptycho.atomic import _host_tag

    stale = tmp_path / f".tmp-sim.npz.{2 ** 22 + 7}@{_host_tag()}.zzzzzzzz.part"
    other = tmp_path / f".tmp-other.npz.{2 ** 22 + 7}@{_host_tag()}.zzzzzzzz.part"
    stale.write_bytes(b"x" * 1000)
    other.write_bytes(b"x")
    assert main(["simulate", "-o", str(tmp_path / "sim.npz"), "--n-patterns", "4", "--N",
                 "16", "--workers", "1"]) == 0
    assert not stale.exists() and other.exists()


def _bundle(path, gridsize=1):
    H._tiny_bundle(str(path), gridsize=gridsize)
    return path


def test_runs_that_fail_on_their_inputs_leave_no_output_folder(tmp_path, capsys):
    scan = tmp_path / "scan.npz"
    H._save_scan(str(scan), H._scan_arrays())
    bundle = _bundle(tmp_path / "model.zip")
    fifo = tmp_path / "fifo.zip"
    os.mkfifo(fifo)
    other_n = tmp_path / "n32.npz"
    H._save_scan(str(other_n), H._scan_arrays(m=16, n=32))
    runs = [["reconstruct", "--model", str(fifo), "--data", str(scan)],
            ["reconstruct", "--model", str(bundle), "--data", str(other_n)],
            ["train", "--train-data", str(scan), "--test-data", str(other_n)],
            ["train", "--train-data", str(scan), "--set", "model.gridsise=2"]]
    for argv in runs:
        out = tmp_path / "out" / "nested" / "run"
        assert main(argv + ["--output-dir", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not (tmp_path / "out").exists(), argv


def test_a_broken_bundle_in_an_existing_folder_leaves_it_as_it_was(tmp_path, capsys):
    scan = tmp_path / "scan.npz"
    H._save_scan(str(scan), H._scan_arrays())
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x05\x06" + bytes(18))
    assert main(["reconstruct", "--model", str(broken), "--data", str(scan), "--output-dir",
                 str(out)]) == 2
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert "not a bundle" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# a full disk, a closed stdout, running out of memory all the same


def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from ptycho import atomic

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    target = tmp_path / "model.zip"
    with pytest.raises(OSError) as info:
        with atomic.atomic_write(target) as f:
            f.write(b"x" * 1000)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert "No space left on device while writing it" in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="POSIX file size limit")
def test_a_write_past_the_file_size_limit_is_one_line_naming_the_file(tmp_path):
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG instead of a kill

    target = tmp_path / "sim.npz"
    proc = subprocess.run([sys.executable, "-m", "ptycho", "simulate", "-o", str(target),
                           "--n-patterns", "64", "--N", "32", "--workers", "1"],
                          capture_output=True, text=True, preexec_fn=limit_file_size,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "File too large while writing it" in err and str(target) in err
    assert os.listdir(tmp_path) == []                        # no partial file, no temporary


@pytest.mark.parametrize("argv", [["--help"], ["backends"], ["bundle", "inspect", "{bundle}"]])
def test_a_closed_stdout_ends_quietly(tmp_path, argv):
    bundle = _bundle(tmp_path / "model.zip")
    read, write = os.pipe()
    os.close(read)                                           # the reader is gone: `| head`
    try:
        proc = subprocess.run([sys.executable, "-m", "ptycho",
                               *[a.format(bundle=bundle) for a in argv]],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(write)
    assert proc.stderr == ""
    # 141 (128 + SIGPIPE, what a shell shows for `git log | head`); argparse itself swallows a
    # failed write of --help, which then ends with 0 when stdout is unbuffered
    assert proc.returncode == 141 or (argv == ["--help"] and proc.returncode == 0)


def test_running_out_of_memory_all_the_same_is_one_line(monkeypatch, capsys):
    import ptycho.cli.backends as command

    def exhausted(_args):
        raise MemoryError()

    monkeypatch.setattr(command, "run", exhausted)
    assert main(["backends"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptycho backends: error: out of memory") and "\n" not in err
    assert "PTYCHO_MAX_BYTES" in err


# --------------------------------------------------------------------------------------------
# reading once (and saying where the backend came from)


def test_train_reads_its_config_file_once(tmp_path, monkeypatch, capsys):
    from ptycho.config import io as config_io

    scan = tmp_path / "scan.npz"
    H._save_scan(str(scan), H._scan_arrays())
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"kind: training\ntrain_data_file: {scan}\nseed: 3\nbackend: torch\n"
                   "model:\n  base_filters: 1\n  n_filters_scale: 1\n")
    reads = []
    real = config_io._read_config_text
    monkeypatch.setattr(config_io, "_read_config_text", lambda n: reads.append(n) or real(n))
    busy = tmp_path / "busy"
    holder = _holder(busy)            # the run stops at the lock, after reading everything
    try:
        assert main(["train", "--config", str(cfg), "--output-dir", str(busy)]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "in use by another run" in capsys.readouterr().err
    assert reads == [str(cfg)]


def test_backend_reason_names_the_config_file(tmp_path):
    from ptycho.cli.options import resolve_backend

    assert resolve_backend("tf", "torch", "run.yaml") == ("tensorflow", "argument")
    assert resolve_backend(None, "pytorch", "run.yaml") == ("torch", "config run.yaml")
    name, why = resolve_backend(None, None, "run.yaml")
    assert why != "argument" and not why.startswith("config")
    from ptycho.cli.main import build_parser
    from ptycho.cli.options import load_model_config_file
    from ptycho.cli.train import _backend_choice, build_config
    from ptycho.config import TrainingConfig

    cfg = tmp_path / "run.yaml"
    cfg.write_text("kind: training\nbackend: torch\n")
    for argv, expected in ((["--config", str(cfg)], ("torch", f"config {cfg}")),
                           (["--config", str(cfg), "--backend", "tf"], ("tensorflow", "argument")),
                           (["--backend", "tf", "--set", "backend=torch"], ("torch", "argument"))):
        args = build_parser().parse_args(["train", *argv])
        loaded = load_model_config_file(args.config, TrainingConfig)
        assert _backend_choice(args, build_config(args, 16, loaded), loaded[1]) == expected


@pytest.mark.torch
def test_two_real_training_runs_into_one_folder(tmp_path):
    """The second `ptycho train` is refused naming the first one's pid; the first finishes."""
    scan = tmp_path / "scan.npz"
    H._save_scan(str(scan), H._scan_arrays(m=64))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ptycho", "train", "--train-data", str(scan), "--output-dir",
            str(run), "--backend", "torch", "--base-filters", "1", "--n-filters-scale", "1",
            "--quiet", "--nepochs"]
    first = subprocess.Popen(argv + ["200"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "model.zip").exists():        # it holds the folder and is training
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.1)
        second = subprocess.run(argv + ["1"], capture_output=True, text=True, env=env,
                                timeout=120)
        assert second.returncode == 2
        err = second.stderr.strip()
        assert f"pid {first.pid}" in err and "in use by another run" in err and "\n" not in err
        assert first.poll() is None                   # the first run goes on, untouched
    finally:
        first.send_signal(signal.SIGINT)              # ends after saving the epoch (exit 130)
        first.wait(timeout=120)
    assert first.returncode == 130
    assert not (run / ".ptycho.lock").exists()


@pytest.mark.torch
def test_reconstruct_verifies_the_bundle_once(tmp_path, monkeypatch, capsys):
    from ptycho import bundle as B

    scan = tmp_path / "scan.npz"
    H._save_scan(str(scan), H._scan_arrays())
    model = _bundle(tmp_path / "model.zip")
    calls = []
    real = B._read_verified
    monkeypatch.setattr(B, "_read_verified", lambda *a: calls.append(1) or real(*a))
    t0 = time.perf_counter()
    assert main(["reconstruct", "--model", str(model), "--data", str(scan), "--output-dir",
                 str(tmp_path / "out"), "--backend", "torch", "--quiet"]) == 0, \
        capsys.readouterr().err
    assert len(calls) == 1 and time.perf_counter() - t0 > 0
    assert (tmp_path / "out" / "reconstruction.npz").exists()


# --------------------------------------------------------------------------------------------
# writers never replace what is not a regular file, and the lock never follows a link


def test_writes_refuse_to_replace_a_fifo_or_a_socket(tmp_path, capsys):
    import socket
    import stat

    from ptycho.atomic import atomic_write

    fifo = tmp_path / "sim.npz"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"not a regular file \(a FIFO") as info:
        with atomic_write(fifo):
            pass
    assert info.value.filename == str(fifo)
    sock_path = tmp_path / "s.npz"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(sock_path))
        with pytest.raises(OSError, match=r"a socket"):
            with atomic_write(sock_path):
                pass
    assert main(["simulate", "-o", str(fifo), "--n-patterns", "4", "--N", "16"]) == 2
    assert "would destroy it" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)            # still the FIFO it was
    assert sorted(os.listdir(tmp_path)) == ["s.npz", "sim.npz"]


def test_the_lock_file_is_never_a_link_or_a_fifo(tmp_path):
    from ptycho.outdir import LOCK_NAME, output_folder

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim, run / LOCK_NAME)
    with pytest.raises(OSError, match="symbolic link"):
        with output_folder(run):
            pass
    assert victim.read_text() == "keep me"                  # not truncated through the link
    os.unlink(run / LOCK_NAME)
    os.mkfifo(run / LOCK_NAME)
    with pytest.raises(OSError, match=r"not a regular file \(a FIFO"):
        with output_folder(run):
            pass
