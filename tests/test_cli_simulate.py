"""Tests of the ``ptycho`` command line and its ``simulate`` subcommand."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho.cli import main as cli_main
from ptycho.cli.main import COMMANDS, build_parser, main
from ptycho.data.contract import load_npz

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_the_simulate_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: ptycho" in out and "simulate" in out


def test_simulate_help_lists_its_options(capsys):
    assert main(["simulate", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--output", "--n-patterns", "--N", "--nphotons", "--object", "--probe", "--scan",
                "--seed", "--ground-truth"):
        assert opt in out


def test_version(capsys):
    from ptycho import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ptycho {__version__}"


def test_simulate_writes_a_valid_dataset_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    truth = tmp_path / "truth.npz"
    code = main(["simulate", "--output", str(out), "--n-patterns", "25", "--N", "16",
                 "--nphotons", "1e4", "--object", "grf", "--probe", "defocus", "--scan", "jitter",
                 "--seed", "7", "--ground-truth", str(truth)])
    assert code == 0
    summary = capsys.readouterr().out
    assert summary.count("\n") == 1
    for piece in ("25 patterns", "N=16", "nphotons=10000", str(out), " s"):
        assert piece in summary
    raw = load_npz(out)
    assert raw.diffraction.shape == (25, 16, 16) and raw.diffraction.dtype == np.float32
    assert raw.object_guess is not None
    counts = (raw.diffraction.astype(np.float64) ** 2).sum(axis=(1, 2)).mean()
    assert counts == pytest.approx(1e4, rel=0.05)
    with np.load(truth, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["objectGuess"], raw.object_guess)
    assert sorted(os.listdir(tmp_path)) == ["sim.npz", "truth.npz"]     # no temporaries left


def test_simulate_is_reproducible_through_the_cli(tmp_path, capsys):
    a, b, c = (tmp_path / f"{k}.npz" for k in "abc")
    for path, seed in ((a, "1"), (b, "1"), (c, "2")):
        assert main(["simulate", "-o", str(path), "--n-patterns", "9", "--N", "16",
                     "--seed", seed, "--scan", "random"]) == 0
    ra, rb, rc = load_npz(a), load_npz(b), load_npz(c)
    np.testing.assert_array_equal(ra.diffraction, rb.diffraction)
    assert not np.array_equal(ra.diffraction, rc.diffraction)


def test_simulate_from_an_image_file(tmp_path, capsys):
    img = np.random.default_rng(0).random((40, 50))
    np.save(tmp_path / "img.npy", img)
    out = tmp_path / "sim.npz"
    assert main(["simulate", "-o", str(out), "--object", str(tmp_path / "img.npy"),
                 "--n-patterns", "9", "--N", "16", "--no-noise", "--no-object-guess",
                 "--amplitude-range", "0.2", "0.9"]) == 0
    assert "img.npy object 40x50" in capsys.readouterr().out
    raw = load_npz(out)
    assert raw.object_guess is None and raw.n_patterns == 9
    assert raw.xcoords.max() + 8 <= 50 and raw.ycoords.max() + 8 <= 40


def test_simulate_from_separate_amplitude_and_phase_images(tmp_path, capsys):
    import matplotlib.image

    rng = np.random.default_rng(1)
    amp_img, ph_img = rng.random((40, 50)), rng.random((40, 50))
    np.save(tmp_path / "amp.npy", amp_img)
    matplotlib.image.imsave(tmp_path / "phase.png", ph_img, cmap="gray")
    out = tmp_path / "sim.npz"
    assert main(["simulate", "-o", str(out), "--object", "image",
                 "--amplitude-image", str(tmp_path / "amp.npy"),
                 "--phase-image", str(tmp_path / "phase.png"), "--n-patterns", "9", "--N", "16",
                 "--no-noise", "--amplitude-range", "0.2", "0.9", "--phase-range", "-1", "1"]) == 0
    assert "amp.npy (amplitude) / phase.png (phase) object 40x50" in capsys.readouterr().out
    obj = load_npz(out).object_guess
    np.testing.assert_allclose(np.abs(obj), 0.2 + 0.7 * (amp_img - amp_img.min())
                               / np.ptp(amp_img), atol=1e-5)
    phase = np.angle(obj)
    assert phase.min() == pytest.approx(-1, abs=1e-5) and phase.max() == pytest.approx(1, abs=1e-5)
    assert np.corrcoef(phase.ravel(), ph_img.ravel())[0, 1] > 0.99       # from the other image
    assert abs(np.corrcoef(phase.ravel(), amp_img.ravel())[0, 1]) < 0.2
    # one image for both, through the new form: the same as the old `--object FILE` form
    one, old = tmp_path / "one.npz", tmp_path / "old.npz"
    assert main(["simulate", "-o", str(one), "--object", "image", "--amplitude-image",
                 str(tmp_path / "amp.npy"), "--n-patterns", "9", "--N", "16", "--no-noise"]) == 0
    assert main(["simulate", "-o", str(old), "--object", str(tmp_path / "amp.npy"),
                 "--n-patterns", "9", "--N", "16", "--no-noise"]) == 0
    np.testing.assert_array_equal(load_npz(one).object_guess, load_npz(old).object_guess)


@pytest.mark.parametrize("argv, match", [
    (["simulate", "-o", "x.npz", "--object", "image"], "--object image needs --amplitude-image"),
    (["simulate", "-o", "x.npz", "--phase-image", "p.png"],
     "--phase-image needs --object image (got --object lines)"),
    (["simulate"], "the following arguments are required: --output"),
    (["simulate", "-o", "x.npz", "--N", "abc"], "argument --N: expected a positive integer"),
    (["simulate", "-o", "x.npz", "--nphotons", "-3"], "argument --nphotons"),
    (["simulate", "-o", "x.npz", "--probe", "airy"], "argument --probe: invalid choice"),
    (["simulate", "-o", "x.npz", "--object", "nowhere.png"], "does not exist"),
    (["simulate", "-o", "missing_dir/x.npz"], "does not exist"),
    (["simulate", "-o", "x.npz", "--ground-truth", "x.npz"], "must differ"),
    (["simulate", "-o", "x.npz", "--n-patterns", "4", "--jitter", "-1", "--scan", "jitter"],
     "jitter"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "a command is required"),
])
def test_errors_are_one_line_with_exit_code_2(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err, err
    assert err.startswith("ptycho") and ": error: " in err
    assert match in err
    assert captured.out == ""
    assert not any(p.suffix == ".npz" for p in tmp_path.iterdir())


def test_registering_a_command_is_one_line(monkeypatch, capsys):
    """A module with add_parser / run becomes a subcommand by being listed in COMMANDS."""
    import types

    mod = types.ModuleType("ptycho_test_dummy_cmd")

    def add_parser(subparsers):
        p = subparsers.add_parser("dummy", help="a test command")
        p.add_argument("--value", type=int, default=1)
        return p

    mod.add_parser = add_parser
    mod.run = lambda args: args.value + 40
    monkeypatch.setitem(sys.modules, "ptycho_test_dummy_cmd", mod)
    monkeypatch.setattr(cli_main, "COMMANDS", COMMANDS + ("ptycho_test_dummy_cmd",))
    assert main(["dummy", "--value", "2"]) == 42
    assert "dummy" in build_parser().format_help()


def test_commands_modules_follow_the_protocol():
    import importlib

    for name in COMMANDS:
        mod = importlib.import_module(name)
        assert callable(mod.add_parser) and callable(mod.run)
        sub = argparse.ArgumentParser().add_subparsers()
        assert isinstance(mod.add_parser(sub), argparse.ArgumentParser)


def test_importing_the_cli_imports_no_framework():
    code = ("import sys, ptycho.cli.main as m; m.build_parser(); "
            "bad = [k for k in ('tensorflow', 'torch') if k in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stdout + res.stderr


def test_python_dash_m_ptycho_runs_simulate_in_a_subprocess(tmp_path):
    out = tmp_path / "sub.npz"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "ptycho", "simulate", "--output", str(out),
                          "--n-patterns", "4", "--N", "16"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert "4 patterns" in res.stdout
    assert load_npz(out).n_patterns == 4
    bad = subprocess.run([sys.executable, "-m", "ptycho", "simulate", "--N", "16"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--output" in bad.stderr


def test_every_probe_kind_is_a_choice(tmp_path):
    """The CLI lists the kinds without importing the simulator (its start-up stays light)."""
    from ptycho.cli.simulate import PROBE_CHOICES
    from ptycho.simulate import PROBE_KINDS, diffuser_probe

    assert PROBE_CHOICES == PROBE_KINDS
    out = tmp_path / "d.npz"
    assert main(["simulate", "-o", str(out), "--probe", "diffuser", "--n-patterns", "9",
                 "--N", "16", "--no-noise"]) == 0
    np.testing.assert_allclose(load_npz(out).probe, diffuser_probe(16), atol=1e-6)
