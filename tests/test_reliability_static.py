"""Source checks over ptycho/, backends/ and parity/: nothing loads pickles or runs code from
a file, and every file is written through :mod:`ptycho.atomic`.

Two complementary checks each: the plain ``grep`` the design review asks for (a line that
matches ``pickle|dill|allow_pickle=True`` must not be one that loads), and an AST scan that
looks at calls (imports of pickle-like modules, ``allow_pickle=True``, unsafe YAML, eval/exec,
framework loaders; ``open`` for writing, ``np.save*``, ``savefig``, ``tofile``, ... whose
target is not a handle from :func:`ptycho.atomic.atomic_write` or an in-memory buffer).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ptycho", "backends", "parity")
ATOMIC = REPO / "ptycho" / "atomic.py"


def _sources():
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    assert len(files) > 20
    return files


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO))


# --------------------------------------------------------------------------------------------
# nothing unpickles


#: A grep hit is acceptable only as prose (a docstring, comment or message saying that
#: nothing is pickled) or as the safe setting itself.
_LOADS = re.compile(r"allow_pickle\s*=\s*True|import\s+(c?pickle|dill)|from\s+(c?pickle|dill)\s"
                    r"|\b(c?pickle|dill)\.(load|loads|Unpickler)\b")


def test_grep_finds_no_pickle_loading():
    out = subprocess.run(["grep", "-rn", "--include=*.py", r"pickle\|dill\|allow_pickle=True",
                          *PACKAGES], cwd=REPO, capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr
    hits = out.stdout.splitlines()
    loading = [h for h in hits if _LOADS.search(h.split(":", 2)[2])]
    assert not loading, "code that can unpickle:\n" + "\n".join(loading)


_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal",
                   "joblib"}


def _call_name(node: ast.Call) -> str:
    """Dotted name of the called object, e.g. 'np.load', 'yaml.load', 'open'."""
    parts, f = [], node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def test_no_module_can_load_code_from_a_file():
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{_rel(path)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name.split(".")[0] in _UNSAFE_MODULES]
                if bad:
                    problems.append(f"{where}: imports {bad}")
            elif isinstance(node, ast.ImportFrom) and node.module \
                    and node.module.split(".")[0] in _UNSAFE_MODULES:
                problems.append(f"{where}: imports from {node.module}")
            elif isinstance(node, ast.Call):
                name = _call_name(node)
                if _is_const(_kw(node, "allow_pickle"), True):
                    problems.append(f"{where}: {name}(allow_pickle=True)")
                if name in ("np.load", "numpy.load") and not _is_const(_kw(node, "allow_pickle"),
                                                                       False):
                    problems.append(f"{where}: {name} without an explicit allow_pickle=False")
                if name in ("eval", "exec", "compile", "__import__"):
                    problems.append(f"{where}: {name}()")
                if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                    problems.append(f"{where}: {name}()")
                if name == "yaml.load":
                    loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                    ok = isinstance(loader, (ast.Name, ast.Attribute)) and (
                        "Safe" in ast.unparse(loader) or ast.unparse(loader) == "_Loader")
                    if not ok:
                        problems.append(f"{where}: yaml.load with Loader "
                                        f"{ast.unparse(loader) if loader else None}")
                if name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
                    problems.append(f"{where}: torch.load without weights_only=True")
                if name.endswith(("load_model", "saved_model.load")):
                    problems.append(f"{where}: {name} (a framework loader that may run code)")
    assert not problems, "\n".join(problems)


def test_the_yaml_loader_is_a_safe_loader():
    import yaml

    from ptycho.config import io
    assert issubclass(io._Loader, yaml.SafeLoader)
    assert not issubclass(io._Loader, (yaml.FullLoader, yaml.UnsafeLoader))


# --------------------------------------------------------------------------------------------
# every write is atomic

#: Calls that write to the file (or handle) given as argument ``index`` (None: any write is a
#: finding, the call cannot be made safe by its arguments).
_WRITERS = {
    "np.save": 0, "np.savez": 0, "np.savez_compressed": 0, "np.savetxt": 0,
    "numpy.save": 0, "numpy.savez": 0, "numpy.savez_compressed": 0, "numpy.savetxt": 0,
    "savefig": 0, "tofile": 0, "imsave": 0, "imwrite": 0,
    "json.dump": 1, "yaml.dump": 1, "yaml.safe_dump": 1, "pickle.dump": 1,
    "torch.save": 1, "write_text": None, "write_bytes": None, "shutil.copy": None,
    "shutil.copyfile": None, "shutil.copy2": None, "shutil.move": None, "os.rename": None,
    "os.replace": None, "tf.io.write_file": None, "save_weights": None,
    "zipfile.ZipFile": 0, "ZipFile": 0, "h5py.File": 0,
}


def _writer_index(name: str):
    if name in _WRITERS:
        return name, _WRITERS[name]
    last = name.rsplit(".", 1)[-1]
    if last in ("savefig", "tofile", "write_text", "write_bytes", "save_weights"):
        return last, _WRITERS[last]
    return None, None


#: What the flags of a read-only ``os.open`` may be made of (anything else, a variable too,
#: makes the call a finding).
_READ_FLAG_NAMES = {"os", "getattr", "O_RDONLY", "O_NONBLOCK", "O_CLOEXEC", "O_NOCTTY",
                    "O_BINARY", "O_NOFOLLOW"}


def _read_only_flags(node: ast.Call) -> bool:
    """Whether ``os.open(path, flags)``'s flags are spelled out and open for reading only."""
    flags = node.args[1] if len(node.args) > 1 else _kw(node, "flags")
    if flags is None:
        return False
    names = set()
    for sub in ast.walk(flags):
        if isinstance(sub, ast.Attribute):
            names.add(sub.attr)
        elif isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            names.add(sub.value)
        elif isinstance(sub, ast.Constant) and sub.value != 0:
            return False
    return "O_RDONLY" in names and names <= _READ_FLAG_NAMES


def _open_mode(node: ast.Call):
    mode = _kw(node, "mode") or (node.args[1] if len(node.args) > 1 else None)
    return mode


class _Scope(ast.NodeVisitor):
    """Per function: which names are safe write targets (atomic handles, in-memory buffers)."""

    def __init__(self, rel: str):
        self.rel, self.problems = rel, []

    def visit_FunctionDef(self, node):
        safe = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.withitem) and isinstance(sub.context_expr, ast.Call) \
                    and _call_name(sub.context_expr).endswith("atomic_write") \
                    and isinstance(sub.optional_vars, ast.Name):
                safe.add(sub.optional_vars.id)
            if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Call) \
                    and _call_name(sub.value) in ("io.BytesIO", "BytesIO", "io.StringIO",
                                                  "StringIO"):
                safe.update(t.id for t in sub.targets if isinstance(t, ast.Name))
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                self._check(sub, safe)

    visit_AsyncFunctionDef = visit_FunctionDef

    def _check(self, node: ast.Call, safe: set):
        name = _call_name(node)
        where = f"{self.rel}:{node.lineno}: {ast.unparse(node)[:100]}"
        if name in ("open", "io.open", "builtins.open"):
            mode = _open_mode(node)
            if mode is None:
                return                                   # read mode
            if not isinstance(mode, ast.Constant) or set(str(mode.value)) & set("wax+"):
                self.problems.append(where)
            return
        if name == "os.open":
            path = node.args[0] if node.args else None
            to_devnull = isinstance(path, ast.Attribute) and ast.unparse(path) == "os.devnull"
            if not (_read_only_flags(node) or to_devnull):
                self.problems.append(where)
            return
        key, index = _writer_index(name)
        if key is None:
            return
        if key in ("zipfile.ZipFile", "ZipFile", "h5py.File"):
            mode = node.args[1] if len(node.args) > 1 else _kw(node, "mode")
            if mode is None or (isinstance(mode, ast.Constant) and mode.value == "r"):
                return
        if index is None:
            self.problems.append(where)
            return
        target = node.args[index] if len(node.args) > index else _kw(node, "file") \
            or _kw(node, "fname") or _kw(node, "fp") or _kw(node, "stream") or _kw(node, "f")
        if key in ("json.dump", "yaml.dump", "yaml.safe_dump") and target is None:
            return                                       # returns a string, writes nothing
        if not (isinstance(target, ast.Name) and target.id in safe):
            self.problems.append(where)


def test_every_file_is_written_through_ptycho_atomic():
    problems = []
    for path in _sources():
        if path == ATOMIC:
            continue
        scope = _Scope(_rel(path))
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        scope.visit(tree)
        # module-level statements (outside any function) too
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Call):
                        scope._check(sub, set())
        problems += scope.problems
    assert not problems, "writes that bypass ptycho.atomic:\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet,flagged", [
    ("def f(p, a):\n    np.save(p, a)", True),
    ("def f(p, a):\n    with open(p, 'w') as f:\n        f.write(a)", True),
    ("def f(p, a):\n    with open(p, mode) as f:\n        f.write(a)", True),
    ("def f(p, fig):\n    fig.savefig(p)", True),
    ("def f(p, d):\n    json.dump(d, open(p, 'w'))", True),
    ("def f(p, d):\n    Path(p).write_text(d)", True),
    ("def f(p, a):\n    with atomic_write(p) as out:\n        np.save(out, a)", False),
    ("def f(p, fig):\n    buf = io.BytesIO()\n    fig.savefig(buf)", False),
    ("def f(p):\n    with open(p, encoding='utf-8') as f:\n        return f.read()", False),
    ("def f(d):\n    return json.dumps(d)", False),
    ("def f(p):\n    return zipfile.ZipFile(p, 'r')", False),
    ("def f(p):\n    return zipfile.ZipFile(p, 'w')", True),
    ("def f(p):\n    return os.open(p, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))", False),
    ("def f(p):\n    return os.open(p, os.O_RDONLY | os.O_CREAT)", True),
    ("def f(p):\n    return os.open(p, os.O_WRONLY)", True),
    ("def f(p, flags):\n    return os.open(p, flags)", True),
    ("def f(p):\n    return os.open(p, os.O_RDONLY | 2)", True),
    ("def f():\n    return os.open(os.devnull, os.O_WRONLY)", False),
])
def test_the_write_scan_catches_what_it_should(snippet, flagged):
    scope = _Scope("snippet.py")
    scope.visit(ast.parse(snippet))
    assert bool(scope.problems) == flagged, scope.problems
