"""The ``ptycho`` commands that run models: ``train``, ``reconstruct``, ``bundle inspect``,
``backends``; in process through :func:`ptycho.cli.main.main` and once as a subprocess.

The data are what ``ptycho simulate`` writes; networks are tiny (N=16, base_filters 2) and
train for two epochs: what is tested is the command line (outputs, summaries, precedence of
config sources, errors and exit codes), not image quality.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptycho.bundle import read_bundle
from ptycho.cli.main import build_parser, main
from ptycho.cli.progress import ProgressBar, TrainingProgress, bars_enabled

REPO = Path(__file__).resolve().parents[1]
N = 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--nepochs", "2", "--base-filters", "2", "--n-filters-scale", "1", "--nphotons", "1e6",
        "--seed", "4"]
BACKENDS = [pytest.param("tensorflow", marks=pytest.mark.tensorflow),
            pytest.param("torch", marks=pytest.mark.torch)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for torch: xdist already runs one worker per core, and two threads
    on a shared core are many times slower than one (OpenMP workers wait for each other)."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def env_for_subprocess(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
           "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train.npz and test.npz written by ``ptycho simulate`` (with objectGuess)."""
    folder = tmp_path_factory.mktemp("data")
    train, test = folder / "train.npz", folder / "test.npz"
    assert main(["simulate", "--output", str(train), "--n-patterns", "64", "--N", str(N),
                 "--nphotons", "1e6", "--seed", "1"]) == 0
    assert main(["simulate", "--output", str(test), "--n-patterns", "36", "--N", str(N),
                 "--nphotons", "1e6", "--seed", "2"]) == 0
    return train, test


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, data):
    """``ptycho train`` (with --test-data) per backend, run once per module, lazily."""
    cache: dict = {}

    def get(backend: str):
        if backend not in cache:
            out = tmp_path_factory.mktemp(f"cli-{backend}")
            train, test = data
            argv = ["train", "--train-data", str(train), "--test-data", str(test),
                    "--output-dir", str(out), "--backend", backend, *TINY, "--quiet"]
            import contextlib

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main(argv)
            cache[backend] = {"code": code, "out": out, "stdout": buf.getvalue()}
        return cache[backend]
    return get


@pytest.fixture(params=BACKENDS)
def trained(request, cli_runs):
    return request.param, cli_runs(request.param)


def test_train_writes_bundle_figures_reconstruction_and_summary(trained, data):
    backend, r = trained
    assert r["code"] == 0, r["stdout"]
    out = r["out"]
    assert sorted(os.listdir(out)) == ["comparison.png", "loss.png", "model.zip",
                                       "reconstruction.npz", "reconstruction.png", "summary.json"]
    for name in ("comparison.png", "loss.png", "reconstruction.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    contents = read_bundle(out / "model.zip")
    cfg = contents.config
    assert contents.backend == backend and cfg.backend == backend
    assert (cfg.model.N, cfg.nepochs, cfg.model.base_filters, cfg.seed) == (N, 2, 2, 4)
    assert cfg.train_data_file == str(data[0]) and cfg.output_dir == str(out)
    assert len(contents.history.epochs) == 2
    text = r["stdout"]
    assert "\r" not in text                           # --quiet: no progress bar
    for piece in ("ptycho train: done in", "patterns/s", "final loss (epoch 2): total",
                  "final validation loss", "reconstruction: 36 patterns", "PSNR", "SSIM",
                  f"outputs in {out}/"):
        assert piece in text, piece
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == backend and summary["history"]["epochs"] == 2
    assert summary["metrics"]["amplitude"]["psnr"] > 0
    assert summary["timings"]["patterns_per_s"] > 0
    assert summary["paths"]["bundle"] == str(out / "model.zip")


def test_reconstruct_writes_the_object_and_figures(trained, data, tmp_path, capsys):
    backend, r = trained
    out = tmp_path / "recon"
    code = main(["reconstruct", "--model", str(r["out"] / "model.zip"), "--data", str(data[1]),
                 "--output-dir", str(out), "--backend", backend, "--batch-size", "16"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert sorted(os.listdir(out)) == ["comparison.png", "reconstruction.npz",
                                       "reconstruction.png", "summary.json"]
    for piece in ("ptycho reconstruct: done in", f"on {backend}", "patterns/s", "PSNR"):
        assert piece in text, piece
    with np.load(out / "reconstruction.npz") as a, np.load(r["out"] / "reconstruction.npz") as b:
        assert a["obj"].dtype == np.complex64 and a["obj"].shape == b["obj"].shape
        # same bundle, backend and batch size as the reconstruction at the end of training
        np.testing.assert_array_equal(a["obj"], b["obj"])
        np.testing.assert_array_equal(a["amplitude"], np.abs(a["obj"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bundle_backend"] == backend and summary["reconstruction"]["n_patterns"] == 36


def test_reconstruct_accepts_the_run_folder_and_bfloat16(trained, data, tmp_path, capsys):
    backend, r = trained
    out = tmp_path / "bf16"
    code = main(["reconstruct", "--model", str(r["out"]), "--data", str(data[1]),
                 "--output-dir", str(out), "--backend", backend, "--precision", "bfloat16",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    with np.load(out / "reconstruction.npz") as a, np.load(r["out"] / "reconstruction.npz") as b:
        covered = b["coverage"] > 0
        ref = np.abs(b["obj"][covered])
        err = np.abs(a["obj"][covered] - b["obj"][covered]).max()
        assert 0 < err < 0.05 * ref.max()        # bfloat16 differs, but only a little


def test_reconstruct_with_a_spacing_predicts_fewer_points_and_covers_the_same(trained, data,
                                                                             tmp_path, capsys):
    """--spacing PX: the network sees the sparse subset only; the object covers what the whole
    scan's does; the summary records the spacing; a spacing that is not positive is refused."""
    backend, r = trained
    with np.load(data[1]) as d:
        step = float(np.diff(np.unique(d["xcoords"])).min())
    out = tmp_path / "sparse"
    code = main(["reconstruct", "--model", str(r["out"] / "model.zip"), "--data", str(data[1]),
                 "--output-dir", str(out), "--backend", backend, "--spacing", str(2 * step),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["spacing"] == 2 * step and summary["reconstruction"]["n_patterns"] < 36
    with np.load(out / "reconstruction.npz") as a, np.load(r["out"] / "reconstruction.npz") as b:
        np.testing.assert_array_equal(a["coverage"] > 0, b["coverage"] > 0)
    code = main(["reconstruct", "--model", str(r["out"] / "model.zip"), "--data", str(data[1]),
                 "--output-dir", str(tmp_path / "bad"), "--backend", backend, "--spacing", "0"])
    assert code == 2 and "--spacing" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_reconstruct_refines_the_networks_object(trained, data, tmp_path, capsys):
    """--refine K: K iterations of physics refinement after the network; the summary holds
    both objects' metrics, and the refined object fits the data far better."""
    backend, r = trained
    out = tmp_path / "refined"
    code = main(["reconstruct", "--model", str(r["out"] / "model.zip"), "--data", str(data[1]),
                 "--output-dir", str(out), "--backend", backend, "--refine", "15"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "refinement: 15 iterations" in text and "network alone (before refinement)" in text
    summary = json.loads((out / "summary.json").read_text())
    nll = summary["refinement"]["nll"]
    assert summary["refinement"]["iterations"] == 15 and len(nll) == 15
    assert nll[-1] < 0.1 * nll[0]
    for part in ("amplitude", "phase"):    # a two-epoch network, then refinement
        assert summary["metrics"][part]["ssim"] > summary["network_metrics"][part]["ssim"]
    code = main(["reconstruct", "--model", str(r["out"] / "model.zip"), "--data", str(data[1]),
                 "--output-dir", str(tmp_path / "bad"), "--backend", backend, "--refine-probe"])
    assert code == 2 and "--refine-probe needs --refine" in capsys.readouterr().err


@pytest.mark.parity
def test_reconstruct_in_the_other_backend_matches(cli_runs, data, tmp_path, capsys):
    r = cli_runs("tensorflow")
    out = tmp_path / "cross"
    assert main(["reconstruct", "--model", str(r["out"] / "model.zip"), "--data", str(data[1]),
                 "--output-dir", str(out), "--backend", "pytorch", "--batch-size", "16"]) == 0
    assert "model written by tensorflow" in capsys.readouterr().out
    with np.load(out / "reconstruction.npz") as a, np.load(r["out"] / "reconstruction.npz") as b:
        np.testing.assert_allclose(a["obj"], b["obj"], rtol=0,
                                   atol=1e-5 * float(np.abs(b["obj"]).max()))


def test_bundle_inspect_readable_and_json(trained, capsys):
    backend, r = trained
    path = r["out"] / "model.zip"
    assert main(["bundle", "inspect", str(path)]) == 0
    text = capsys.readouterr().out
    contents = read_bundle(path)
    for piece in ("format:       ptycho-pinn-bundle version 1", f"written by:   {backend}",
                  "model.N = 16", "history:      2 epochs (completed)", "intensity scale:",
                  "probe ", "complex64", contents.manifest["entries"]["probe"]["sha256"][:12]):
        assert piece in text, piece
    assert main(["bundle", "inspect", str(r["out"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is True and doc["backend"] == backend
    assert doc["entries"] == contents.manifest["entries"] and doc["config"]["nepochs"] == 2


def test_bundle_inspect_reports_a_corrupted_bundle(trained, tmp_path, capsys):
    _, r = trained
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(r["out"] / "model.zip") as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "weights/probe.npy":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    assert main(["bundle", "inspect", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.count("\n") == 0 and "checksum mismatch" in err and "'probe'" in err


@pytest.mark.torch
def test_train_and_reconstruct_as_subprocesses(data, tmp_path):
    """The real entry point: ``python -m ptycho``; stdout is a pipe, so no progress bars."""
    train, test = data
    run_dir, recon_dir = tmp_path / "run", tmp_path / "recon"
    env = env_for_subprocess(PTYCHO_BACKEND="torch")
    done = subprocess.run([sys.executable, "-m", "ptycho", "train", "--train-data", str(train),
                           "--output-dir", str(run_dir), *TINY], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "on torch" in done.stdout and "\r" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "note:" not in done.stderr   # nphotons matches
    # without --test-data: the bundle, the loss curve and the summary, no reconstruction
    assert sorted(os.listdir(run_dir)) == ["loss.png", "model.zip", "summary.json"]
    done = subprocess.run([sys.executable, "-m", "ptycho", "reconstruct", "--model",
                           str(run_dir / "model.zip"), "--data", str(test), "--output-dir",
                           str(recon_dir)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(recon_dir)) == ["comparison.png", "reconstruction.npz",
                                             "reconstruction.png", "summary.json"]
    assert "PSNR" in done.stdout and "\r" not in done.stdout


def test_backends_and_inspect_import_no_framework(tmp_path):
    """``ptycho backends`` reads versions from package metadata; nothing imports a framework."""
    script = ("import sys, json\n"
              "from ptycho.cli.main import main\n"
              "codes = [main(['backends']), main(['backends', '--json']),\n"
              "         main(['backends', '--backend', 'tf'])]\n"
              "loaded = [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules]\n"
              "print('RESULT', json.dumps({'codes': codes, 'loaded': loaded}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env_for_subprocess(PTYCHO_BACKEND="pytorch"), timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["loaded"] == []
    from backends.registry import is_installed

    torch_ok = is_installed("torch")
    assert result["codes"][0] == (0 if torch_ok else 1)
    out = done.stdout
    assert "selected: torch (environment variable PTYCHO_BACKEND = 'pytorch')" in out
    assert "selected: tensorflow (--backend)" in out
    doc = json.loads(out[out.index("{"):out.index("\n}") + 2])
    assert doc["selected"] == "torch" and {b["name"] for b in doc["backends"]} == {
        "tensorflow", "torch"}
    for row in doc["backends"]:
        assert row["installed"] == is_installed(row["name"])
        assert (row["version"] is not None) == row["installed"]


def test_backends_reports_an_unknown_selection(capsys, monkeypatch):
    monkeypatch.setenv("PTYCHO_BACKEND", "jax")
    assert main(["backends"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptycho backends: error:") and "'jax'" in err and "\n" not in err


def _args(argv):
    return build_parser().parse_args(argv)


def test_train_precision_and_central_decoder_reach_the_config():
    from ptycho.cli.train import build_config

    args = _args(["train", "--train-data", "t.npz", "--output-dir", "o", "--precision",
                  "bfloat16", "--set", "model.central_decoder=true"])
    cfg = build_config(args, data_n=32)
    assert cfg.precision == "bfloat16" and cfg.model.central_decoder
    assert build_config(_args(["train", "--train-data", "t.npz"]), data_n=32).precision == \
        "float32"


def test_train_average_epochs_reaches_the_config_and_is_checked():
    from ptycho.cli.main import UsageError
    from ptycho.cli.train import build_config
    from ptycho.errors import ConfigError

    args = _args(["train", "--train-data", "t.npz", "--nepochs", "8", "--average-epochs", "3"])
    assert build_config(args, data_n=32).average_epochs == 3
    assert build_config(_args(["train", "--train-data", "t.npz"]), data_n=32).average_epochs == 0
    with pytest.raises(UsageError, match="--average-epochs"):
        _args(["train", "--train-data", "t.npz", "--average-epochs", "-1"])
    with pytest.raises(ConfigError, match=r"average_epochs must be in \[0, 2\], got 3"):
        build_config(_args(["train", "--train-data", "t.npz", "--nepochs", "2",
                            "--average-epochs", "3"]), data_n=32)
    from ptycho.cli.main import UsageError
    with pytest.raises(UsageError, match="invalid choice: 'float16'.*'bfloat16'"):
        _args(["train", "--train-data", "t.npz", "--precision", "float16"])


def test_config_precedence_file_then_flags_then_set(tmp_path):
    from ptycho.cli.train import build_config

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("kind: training\nnepochs: 5\nbatch_size: 8\nnphotons: 1e7\n"
                        "model:\n  base_filters: 3\n  gridsize: 2\n")
    args = _args(["train", "--train-data", "t.npz", "--output-dir", "o", "--config",
                  str(cfg_file), "--nepochs", "1", "--set", "model.n_filters_scale=1",
                  "--set", "lr_schedule=cosine", "--backend", "tf", "--seed", "9"])
    cfg = build_config(args, data_n=32)
    assert cfg.nepochs == 1                          # flag beats file
    assert cfg.batch_size == 8 and cfg.nphotons == 1e7 and cfg.model.base_filters == 3
    assert cfg.model.gridsize == 2 and cfg.model.n_filters_scale == 1
    assert cfg.lr_schedule == "cosine" and cfg.backend == "tensorflow" and cfg.seed == 9
    assert cfg.model.N == 32                         # from the data: neither file nor flag set it
    assert (cfg.train_data_file, cfg.output_dir) == ("t.npz", "o")
    cfg_file.write_text("kind: training\nmodel:\n  N: 64\n")
    assert build_config(_args(["train", "--config", str(cfg_file)]), data_n=32).model.N == 64
    assert build_config(_args(["train", "--config", str(cfg_file), "--N", "16"]),
                        data_n=32).model.N == 16


def test_reconstruct_config_precedence(tmp_path):
    from ptycho.cli.reconstruct import build_config

    cfg_file = tmp_path / "infer.json"
    cfg_file.write_text(json.dumps({"kind": "inference", "batch_size": 7,
                                    "precision": "bfloat16", "model_path": "m.zip"}))
    cfg = build_config(_args(["reconstruct", "--config", str(cfg_file), "--data", "d.npz",
                              "--output-dir", "o", "--precision", "float32"]))
    assert (cfg.batch_size, cfg.precision, cfg.model_path) == (7, "float32", "m.zip")
    assert (cfg.test_data_file, cfg.output_dir) == ("d.npz", "o")


@pytest.mark.parametrize("argv,needle", [
    (["train", "--output-dir", "{tmp}/o"], "--train-data is required"),
    (["train", "--train-data", "{tmp}/missing.npz", "--output-dir", "{tmp}/o"], "missing.npz"),
    (["train", "--train-data", "{train}"], "--output-dir is required"),
    (["train", "--train-data", "{train}", "--output-dir", "{tmp}/o", "--N", "32"],
     "the training data has N=16 but the config has model.N=32"),
    (["train", "--train-data", "{train}", "--output-dir", "{tmp}/o", "--set", "model.gridsise=2"],
     "gridsise"),
    (["train", "--train-data", "{train}", "--output-dir", "{tmp}/o", "--learning-rate", "-1"],
     "learning_rate"),
    (["train", "--train-data", "{train}", "--output-dir", "{tmp}/o", "--backend", "jax"],
     "unknown backend 'jax'"),
    (["train", "--train-data", "{train}", "--output-dir", "{tmp}/o", "--config", "{tmp}/c.txt"],
     "suffix"),
    (["reconstruct", "--model", "{tmp}/none.zip", "--data", "{test}", "--output-dir", "{tmp}/o"],
     "no such file"),
    (["reconstruct", "--model", "{train}", "--data", "{test}", "--output-dir", "{tmp}/o"],
     "not a bundle"),
    (["reconstruct", "--model", "{tmp}", "--data", "{test}", "--output-dir", "{tmp}/o"],
     "without model.zip"),
    (["reconstruct", "--data", "{test}", "--output-dir", "{tmp}/o"], "--model is required"),
    (["reconstruct", "--model", "{tmp}/m.zip", "--data", "{test}", "--output-dir", "{tmp}/o",
      "--precision", "float16"], "invalid choice"),
    (["bundle"], "an action is required"),
    (["bundle", "inspect", "{tmp}/none.zip"], "no such file"),
])
def test_bad_input_is_one_line_and_exit_status_2(argv, needle, data, tmp_path, capsys):
    (tmp_path / "c.txt").write_text("nepochs: 1\n")
    fill = {"tmp": str(tmp_path), "train": str(data[0]), "test": str(data[1])}
    code = main([a.format(**fill) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, captured
    err = captured.err.strip()
    assert err.startswith(f"ptycho {argv[0]}") and ": error: " in err
    assert "\n" not in err and needle in err, err
    assert not (tmp_path / "o" / "model.zip").exists()


@pytest.mark.torch
def test_reconstruct_with_data_of_another_size_is_refused_before_loading(cli_runs, tmp_path,
                                                                          capsys):
    r = cli_runs("torch")
    other = tmp_path / "n32.npz"
    assert main(["simulate", "--output", str(other), "--n-patterns", "9", "--N", "32"]) == 0
    capsys.readouterr()
    code = main(["reconstruct", "--model", str(r["out"]), "--data", str(other),
                 "--output-dir", str(tmp_path / "o")])
    assert code == 2
    assert "the data has N=32 but the model" in capsys.readouterr().err


def test_progress_bars_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not bars_enabled(False, io.StringIO(), io.StringIO())
    assert not bars_enabled(True, Tty(), Tty())
    assert bars_enabled(False, Tty(), Tty())
    assert not bars_enabled(False, io.StringIO(), Tty())   # stdout piped: quiet


def test_training_progress_draws_one_bar_per_epoch():
    out = io.StringIO()
    progress = TrainingProgress(2, stream=out, enabled=True)
    for epoch in range(2):
        for step in range(3):
            progress(epoch, step, 3, {"total": 10.0 * (epoch + 1) + step})
    progress.close()
    lines = [line.rsplit("\r", 1)[-1] for line in out.getvalue().split("\n") if line]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2 |") and " 3/3 " in lines[0] and "loss 11" in lines[0]
    assert lines[1].startswith("epoch 2/2 |") and "loss 21" in lines[1]
    silent = io.StringIO()
    quiet = TrainingProgress(2, stream=silent, enabled=False)
    quiet(0, 0, 3, {"total": 1.0})
    quiet.close()
    assert silent.getvalue() == ""


def test_progress_bar_throttles_but_always_draws_the_end():
    out = io.StringIO()
    bar = ProgressBar(1000, "x", stream=out, enabled=True, min_interval_s=3600, width=10)
    for i in range(1, 1001):
        bar.update(i)
    bar.close()
    drawn = out.getvalue().count("\r")
    assert 2 <= drawn <= 3                  # the first, the last, and the close
    assert "|##########| 1000/1000" in out.getvalue()


def test_demo_script_parses_and_its_config_is_valid():
    """scripts/demo.sh (``make demo``) is valid bash and embeds a valid training config."""
    from ptycho.config import TrainingConfig, from_yaml

    script = REPO / "scripts" / "demo.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    yaml_text = text.split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    cfg = from_yaml(yaml_text)
    assert isinstance(cfg, TrainingConfig) and cfg.model.N == 32
    for command in ("simulate", "train", "reconstruct"):
        assert f'"${{ptycho[@]}}" {command}' in text


@pytest.mark.torch
def test_gridsize_2_summaries_count_distinct_patterns(data, tmp_path, capsys):
    train, test = data
    run_dir, recon_dir = tmp_path / "g2", tmp_path / "g2-recon"
    assert main(["train", "--train-data", str(train), "--output-dir", str(run_dir),
                 "--backend", "torch", *TINY, "--gridsize", "2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "(64 patterns in 64 groups of 4)" in text, text         # not 256 "patterns"
    summary = json.loads((run_dir / "summary.json").read_text())
    t = summary["timings"]
    assert t["patches_per_s"] == pytest.approx(4 * t["patterns_per_s"])
    assert main(["reconstruct", "--model", str(run_dir), "--data", str(test),
                 "--output-dir", str(recon_dir), "--backend", "torch", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "reconstruction: 36 patterns in 36 groups of 4 in" in text, text
    rec = json.loads((recon_dir / "summary.json").read_text())["reconstruction"]
    assert rec["n_patterns"] == 36 and rec["n_patches"] == 144 and rec["n_channels"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_scan_estimate_from_the_command_line(backend, data, tmp_path, capsys):
    """``--set model.estimate_scope=scan``: trained, saved, and reconstructed from the bundle
    (which recomputes the scan's estimate from the data it is given)."""
    train, test = data
    out = tmp_path / "run"
    assert main(["train", "--train-data", str(train), "--output-dir", str(out), "--backend",
                 backend, *TINY, "--quiet", "--set", "model.backprop_estimate=true",
                 "--set", "model.estimate_scope=scan"]) == 0
    assert read_bundle(out / "model.zip").config.model.estimate_scope == "scan"
    code = main(["reconstruct", "--model", str(out), "--data", str(test),
                 "--output-dir", str(tmp_path / "recon"), "--backend", backend])
    assert code == 0, capsys.readouterr().out
    with np.load(tmp_path / "recon" / "reconstruction.npz") as a:
        assert np.all(np.isfinite(a["obj"])) and np.any(a["obj"])
