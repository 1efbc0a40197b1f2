"""The import contract of pyproject.toml ([tool.importlinter]) holds, covers every module,
and fails when an upward import or a cycle is planted.

Layers, bottom to top: the neutral core of ``ptycho/`` (config, data, physics, simulate,
metrics, stitching, weights, training driver, ...), ``backends``, ``parity``, and the
application layer (``ptycho.workflows``, ``ptycho.cli``). No framework is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the test extra")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("ptycho", "backends", "parity")


def _lint(cwd: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on the packages under ``cwd`` (found before any installed copy)."""
    env = {**os.environ, "PYTHONPATH": cwd, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                           "lint_imports_command()", "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _copy(tmp_path) -> str:
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(ROOT, pkg), tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    return str(tmp_path)


def test_the_contract_is_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_every_ptycho_module_sits_in_a_layer():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["id"] == "layers")["layers"]
    named = {m.strip().strip("()") for layer in layers for m in layer.split(":")}
    top = {os.path.splitext(name)[0] for name in os.listdir(os.path.join(ROOT, "ptycho"))
           if not name.startswith("_") and (name.endswith(".py") or os.path.isdir(
               os.path.join(ROOT, "ptycho", name, "")) and name != "__pycache__")}
    assert {f"ptycho.{m}" for m in top} <= named, sorted({f"ptycho.{m}" for m in top} - named)


@pytest.mark.slow
@pytest.mark.parametrize("module, line, broken", [
    ("ptycho/weights.py", "import backends.registry  # planted\n", "Layers"),
    ("backends/common/physics.py", "import parity.tolerances  # planted\n", "Layers"),
    ("parity/compare.py", "import ptycho.workflows  # planted\n", "Layers"),
    ("ptycho/data/scaling.py", "import ptycho.data.grouping  # planted\n", "cycles"),
])
def test_a_planted_upward_import_or_cycle_breaks_it(tmp_path, module, line, broken):
    where = _copy(tmp_path)
    path = os.path.join(where, module)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(line + text)
    result = _lint(where)
    assert result.returncode != 0, result.stdout
    assert "1 kept, 1 broken" in result.stdout
    assert any(broken in row and "BROKEN" in row for row in result.stdout.splitlines()), \
        result.stdout
