"""Hostile inputs: each must be refused quickly, in little memory, with a clear error.

The cases of issue 15, built in a folder and each run in a fresh process (through the
``ptycho`` command, or a loader called directly), under a fixed memory budget
(``PTYCHO_MAX_BYTES`` = :data:`BUDGET`). Per case the process reports its wall time (imports of
the command included, interpreter start-up not), its peak resident memory (the kernel's
``VmHWM``: every page the process touched, numpy alone is ~30 MiB), and the exit status and
error it ended with.
``tests/test_hostile_inputs.py`` runs the same cases and asserts the error and
:data:`PEAK_LIMIT_MIB`; this module prints the numbers::

    python -m benchmarks.hostile                 # a table on stderr, JSON records on stdout
    python -m benchmarks.hostile --only fifo     # the cases whose name contains "fifo"

Classes of cases: special files on every loader (FIFOs, devices, sockets, also behind a link
with a good suffix), lying sizes (zip64 directory and .npy header, zip end records, huge
requested simulations and images), compression ratio (1 GiB of zeros in a 1 MB scan), extra
bundle entries (two 1 GiB members, sparse on disk), an expensive bundle config, an outlying
scan position, a second writer into a locked output folder; every refused run must leave no
output folder behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from typing import Callable, Optional

#: The memory budget every case runs under.
BUDGET = "2GiB"
#: Peak resident memory a refusal may take (MiB).
PEAK_LIMIT_MIB = 300
#: A case that runs longer than this has hung (a FIFO opened without O_NONBLOCK blocks forever).
HANG_SECONDS = 120

_CHILD = r"""
import contextlib, importlib, io, json, resource, sys, time


def peak_mib():
    # VmHWM: the peak resident set of this process image. (ru_maxrss would also count the
    # parent's memory: Linux carries the high-water mark of the forked parent across exec.)
    try:
        with open("/proc/self/status") as f:
            return [int(l.split()[1]) for l in f if l.startswith("VmHWM:")][0] / 1024.0
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


for spec in json.loads(sys.argv[1]):
    t0 = time.perf_counter()
    out = {"case": spec["name"]}
    if spec["kind"] == "cli":
        from ptycho.cli.main import main
        err, std = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            out["rc"] = main(spec["argv"])
        out["error"] = err.getvalue()
    else:
        fn = getattr(importlib.import_module(spec["module"]), spec["function"])
        try:
            fn(*spec["args"])
            out["error_type"], out["error"], out["error_classes"] = None, "", []
        except Exception as exc:
            out["error_type"], out["error"] = type(exc).__name__, str(exc)
            out["error_classes"] = [c.__name__ for c in type(exc).__mro__]
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mib"] = peak_mib()
    print(json.dumps(out), flush=True)
"""


@dataclasses.dataclass
class Case:
    """One hostile input and what must come of it.

    kind ``"cli"``: ``argv`` of ``ptycho``, which must exit with ``rc`` and print ``expect``
    (a substring) in its one-line error. kind ``"call"``: ``module.function(*args)``, which
    must raise ``error`` (a class name in the exception's MRO) with ``expect`` in its message.
    ``absent``: paths that must not exist afterwards (output folders and files).
    ``hold_lock``: an output folder another process holds locked while the case runs.
    """

    name: str
    group: str
    kind: str
    expect: str
    argv: list = dataclasses.field(default_factory=list)
    module: str = ""
    function: str = ""
    args: list = dataclasses.field(default_factory=list)
    error: str = ""
    rc: int = 2
    absent: list = dataclasses.field(default_factory=list)
    hold_lock: Optional[str] = None


# --------------------------------------------------------------------------------------------
# hand-made zip archives (zipfile cannot write a sparse member or a lying directory)

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_LOCATOR = struct.Struct("<4sLQL")
_ZIP_TIME, _ZIP_DATE = 0, (40 << 9) | (1 << 5) | 1     # 2020-01-01 00:00


@dataclasses.dataclass
class Member:
    """A zip member: ``data`` (stored or deflated as ``method`` says), followed by ``hole``
    zero bytes left as a hole in the file (sparse: no disk used); the sizes and CRC written
    to the directory may be overridden to lie."""

    name: str
    data: bytes
    method: int = 0                 # 0 stored, 8 deflated (``data`` is then the raw stream)
    file_size: Optional[int] = None  # uncompressed size (default: len(data) + hole)
    crc: Optional[int] = None
    hole: int = 0
    dir_file_size: Optional[int] = None   # a lie told by the central directory only


def _crc_with_zeros(data: bytes, zeros: int) -> int:
    crc = zlib.crc32(data)
    block = bytes(1 << 20)
    while zeros > 0:
        step = min(zeros, len(block))
        crc = zlib.crc32(block[:step], crc)
        zeros -= step
    return crc


def write_zip(path: str, members: list[Member], zip64: bool = False) -> None:
    """Write ``members`` as a zip archive at ``path`` (zip64 end records with ``zip64``)."""
    central = []
    with open(path, "wb") as f:
        for m in members:
            offset = f.tell()
            size = m.file_size if m.file_size is not None else len(m.data) + m.hole
            crc = m.crc if m.crc is not None else _crc_with_zeros(m.data, m.hole)
            csize = len(m.data) + m.hole
            name = m.name.encode()
            f.write(_LOCAL.pack(b"PK\x03\x04", 20, 0, m.method, _ZIP_TIME, _ZIP_DATE, crc,
                                min(csize, 0xFFFFFFFF), min(size, 0xFFFFFFFF), len(name), 0))
            f.write(name + m.data)
            if m.hole:
                f.seek(m.hole, os.SEEK_CUR)
            dsize = m.dir_file_size if m.dir_file_size is not None else size
            extra = b""
            if dsize >= 0xFFFFFFFF or csize >= 0xFFFFFFFF:
                extra = struct.pack("<HHQQ", 1, 16, dsize, csize)
            central.append(_CENTRAL.pack(
                b"PK\x01\x02", 45, 3, 45 if extra else 20, 0, 0, m.method, _ZIP_TIME, _ZIP_DATE,
                crc, 0xFFFFFFFF if extra else csize, 0xFFFFFFFF if extra else dsize, len(name),
                len(extra), 0, 0, 0, 0o644 << 16, offset) + name + extra)
        start = f.tell()
        directory = b"".join(central)
        f.write(directory)
        if zip64:
            end64 = f.tell()
            f.write(_END64.pack(b"PK\x06\x06", _END64.size - 12, 45, 45, 0, 0, len(members),
                                len(members), len(directory), start))
            f.write(_END64_LOCATOR.pack(b"PK\x06\x07", 0, end64, 1))
            f.write(_END.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
        else:
            f.write(_END.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(directory),
                              start, 0))
        f.truncate()


def deflated_zeros(prefix: bytes, n_zeros: int) -> bytes:
    """A raw deflate stream of ``prefix`` then ``n_zeros`` zero bytes (a multiple of 16 MiB),
    made in a fraction of a second: after a full flush, each 16 MiB of zeros deflates to the
    same bytes."""
    block = 1 << 24
    assert n_zeros % block == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    repeat = z.compress(bytes(block)) + z.flush(zlib.Z_FULL_FLUSH)
    return head + repeat * (n_zeros // block) + tail


def npy_header(shape, dtype="<f4") -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                              "shape": tuple(shape)})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# the inputs

def _scan_arrays(m: int = 25, n: int = 16):
    import numpy as np

    from ptycho.simulate import simulate_dataset

    raw, _ = simulate_dataset(m, n, nphotons=1e4, seed=0, store_object=False, workers=1)
    return {k: np.asarray(v) for k, v in raw.to_arrays().items()}


def _save_scan(path: str, arrays: dict) -> None:
    from ptycho.data import save_npz, validate_raw

    save_npz(validate_raw(arrays), path)


def _npz_members(arrays: dict) -> list[Member]:
    import io

    import numpy as np

    out = []
    for key, value in arrays.items():
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        out.append(Member(key + ".npy", buf.getvalue()))
    return out


def _tiny_bundle(path: str, gridsize: int = 2) -> None:
    import numpy as np

    from ptycho.bundle import save_bundle
    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.weights import init_weights

    cfg = TrainingConfig(model=ModelConfig(N=16, gridsize=gridsize, base_filters=1,
                                           n_filters_scale=1), batch_size=4, nepochs=1)
    weights = init_weights(cfg.model, 0, np.ones((16, 16), np.complex64), 0.0)
    save_bundle(path, weights, cfg, backend_name="torch")


def _bundle_members(path: str) -> tuple[dict, list[Member]]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        members = [Member(i.filename, zf.read(i)) for i in zf.infolist()
                   if i.filename != "manifest.json"]
    return manifest, members


def _fifo(path: str) -> str:
    os.mkfifo(path)
    return path


def _link(target: str, path: str) -> str:
    os.symlink(target, path)
    return path


def _socket_file(path: str) -> tuple[str, socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    return path, s


def build_cases(folder: str) -> tuple[list[Case], list[Callable[[], None]]]:
    """Make every hostile input under ``folder``; return the cases and cleanups to call."""
    j = lambda *p: os.path.join(folder, *p)   # noqa: E731
    cleanups: list[Callable[[], None]] = []
    arrays = _scan_arrays()
    good_scan = j("scan.npz")
    _save_scan(good_scan, arrays)
    bundle = j("model.zip")
    _tiny_bundle(bundle)
    cases: list[Case] = []
    out = j("out-{}")

    # special files, on every loader and through the commands
    fifo_npz, fifo_zip, fifo_yaml, fifo_npy = (_fifo(j(n)) for n in
                                               ("fifo.npz", "fifo.zip", "fifo.yaml", "fifo.npy"))
    zero_npz, zero_zip, zero_yaml, zero_npy = (_link("/dev/zero", j(n)) for n in
                                               ("zero.npz", "zero.zip", "zero.yaml", "zero.npy"))
    sock, s = _socket_file(j("socket.npz"))
    cleanups.append(s.close)
    for name, loader, path, error in (
            ("fifo-load_npz", ("ptycho.data", "load_npz"), fifo_npz, "DataError"),
            ("fifo-read_bundle", ("ptycho.bundle", "read_bundle"), fifo_zip, "NotABundleError"),
            ("fifo-load_config", ("ptycho.config", "load_config"), fifo_yaml, "ConfigError"),
            ("fifo-load_image", ("ptycho.simulate", "load_image"), fifo_npy, "ValueError"),
            ("dev-zero-load_npz", ("ptycho.data", "load_npz"), zero_npz, "DataError"),
            ("dev-zero-read_bundle", ("ptycho.bundle", "read_bundle"), zero_zip,
             "NotABundleError"),
            ("dev-zero-load_config", ("ptycho.config", "load_config"), zero_yaml, "ConfigError"),
            ("dev-zero-load_image", ("ptycho.simulate", "load_image"), zero_npy, "ValueError"),
            ("socket-load_npz", ("ptycho.data", "load_npz"), sock, "DataError")):
        kind = ("FIFO" if "fifo" in name else "socket" if "socket" in name
                else "character device")
        cases.append(Case(name, "special files", "call", f"(it is a {kind}", module=loader[0],
                          function=loader[1], args=[path], error=error))
    cases += [
        Case("fifo-cli-reconstruct-model", "special files", "cli", "FIFO",
             argv=["reconstruct", "--model", fifo_zip, "--data", good_scan, "--output-dir",
                   out.format(1)], absent=[out.format(1)]),
        Case("fifo-cli-reconstruct-data", "special files", "cli", "FIFO",
             argv=["reconstruct", "--model", bundle, "--data", fifo_npz, "--output-dir",
                   out.format(2)], absent=[out.format(2)]),
        Case("dev-zero-cli-bundle-inspect", "special files", "cli", "character device",
             argv=["bundle", "inspect", zero_zip]),
        Case("fifo-cli-train-config", "special files", "cli", "FIFO",
             argv=["train", "--train-data", good_scan, "--config", fifo_yaml, "--output-dir",
                   out.format(3)], absent=[out.format(3)]),
        Case("dev-zero-cli-train-config", "special files", "cli", "character device",
             argv=["train", "--train-data", good_scan, "--config", zero_yaml, "--output-dir",
                   out.format(4)], absent=[out.format(4)]),
        Case("fifo-cli-train-data", "special files", "cli", "FIFO",
             argv=["train", "--train-data", fifo_npz, "--output-dir", out.format(5)],
             absent=[out.format(5)]),
        Case("fifo-cli-simulate-object", "special files", "cli", "FIFO",
             argv=["simulate", "-o", j("sim.npz"), "--object", fifo_npy], absent=[j("sim.npz")]),
        Case("fifo-cli-parity-config", "special files", "cli", "FIFO",
             argv=["parity", "--config", fifo_yaml]),
    ]

    # lying sizes
    header = npy_header((1 << 36,), "<f4")                     # 256 GiB declared
    lying = j("zip64-lying.npz")
    members = [m for m in _npz_members(arrays) if m.name != "diffraction.npy"]
    stream = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = stream.compress(header + bytes(8192)) + stream.flush()
    members.append(Member("diffraction.npy", data, method=8, file_size=len(header) + 8192,
                          dir_file_size=32 << 40))             # the directory says 32 TiB
    write_zip(lying, members, zip64=True)
    cases += [
        Case("zip64-32TiB-load_npz", "lying sizes", "call", "'diffraction.npy'",
             module="ptycho.data", function="load_npz", args=[lying], error="DataLimitError"),
        Case("zip64-32TiB-cli-train", "lying sizes", "cli", "'diffraction.npy'",
             argv=["train", "--train-data", lying, "--output-dir", out.format(6)],
             absent=[out.format(6)]),
    ]
    honest = j("header-256GiB.npz")
    members = [m for m in _npz_members(arrays) if m.name != "diffraction.npy"]
    members.append(Member("diffraction.npy", header + bytes(4096)))
    write_zip(honest, members)
    cases.append(Case("npy-header-256GiB-load_npz", "lying sizes", "call", "declares shape",
                      module="ptycho.data", function="load_npz", args=[honest],
                      error="DataError"))
    big = j("sparse-3GiB.npz")                                 # a real 3 GiB member, sparse
    members = [m for m in _npz_members(arrays) if m.name != "diffraction.npy"]
    hdr = npy_header((3 << 18, 32, 32), "<f4")
    members.append(Member("diffraction.npy", hdr, hole=3 << 30))
    write_zip(big, members, zip64=True)
    cases.append(Case("3GiB-member-over-budget-load_npz", "lying sizes", "call",
                      "more than the memory budget", module="ptycho.data", function="load_npz",
                      args=[big], error="DataLimitError"))
    many = j("end-record-65535-members.npz")
    members = _npz_members(arrays)
    write_zip(many, members)
    with open(many, "r+b") as f:                               # the end record lies
        f.seek(-_END.size, os.SEEK_END)
        fields = list(_END.unpack(f.read(_END.size)))
        fields[3] = fields[4] = 0xFFFF
        fields[5] = 0x7FFFFFFF
        f.seek(-_END.size, os.SEEK_END)
        f.write(_END.pack(*fields))
    cases.append(Case("end-record-65535-members-load_npz", "lying sizes", "call",
                      "zip directory declares", module="ptycho.data", function="load_npz",
                      args=[many], error="DataLimitError"))
    from ptycho.config.io import MAX_CONFIG_BYTES
    yaml_bomb = j("empty-mappings.yaml")                       # as large as allowed, costly
    with open(yaml_bomb, "w") as f:
        f.write("[" + "{}, " * (MAX_CONFIG_BYTES // 4 - 1) + "{}]")
    sparse_cfg = j("sparse-1GiB.yaml")
    with open(sparse_cfg, "wb") as f:
        f.truncate(1 << 30)
    cases += [
        Case("config-64KiB-of-empty-mappings-load_config", "lying sizes", "call",
             "more than 10000 nodes", module="ptycho.config", function="load_config",
             args=[yaml_bomb], error="ConfigError"),
        Case("config-sparse-1GiB-cli-train", "lying sizes", "cli", "is larger than",
             argv=["train", "--train-data", good_scan, "--config", sparse_cfg, "--output-dir",
                   out.format(13)], absent=[out.format(13)]),
    ]
    huge_npy = j("huge-object.npy")
    with open(huge_npy, "wb") as f:
        f.write(npy_header((1 << 20, 1 << 20), "<c16") + bytes(64))
    cases += [
        Case("bundle-dev-zero-read_bundle", "lying sizes", "call", "(it is a character device",
             module="ptycho.bundle", function="read_bundle", args=["/dev/zero"],
             error="NotABundleError"),
        Case("simulate-1e8-patterns-N4096", "lying sizes", "cli", "more than the memory budget",
             argv=["simulate", "-o", j("sim2.npz"), "--n-patterns", "100000000", "--N", "4096"],
             absent=[j("sim2.npz")]),
        Case("simulate-huge-object-header", "lying sizes", "cli", "more than the memory budget",
             argv=["simulate", "-o", j("sim3.npz"), "--object", huge_npy],
             absent=[j("sim3.npz")]),
        Case("simulate-huge-step", "lying sizes", "cli", "more than the memory budget",
             argv=["simulate", "-o", j("sim4.npz"), "--n-patterns", "100", "--step", "1e6"],
             absent=[j("sim4.npz")]),
    ]

    # compression ratio: 1 GiB of zeros in a 1 MB scan
    bomb = j("gib-of-zeros.npz")
    members = [m for m in _npz_members(arrays) if m.name != "diffraction.npy"]
    hdr = npy_header((1 << 16, 64, 64), "<f4")
    members.append(Member("diffraction.npy", deflated_zeros(hdr, 1 << 30), method=8,
                          file_size=len(hdr) + (1 << 30), crc=_crc_with_zeros(hdr, 1 << 30)))
    write_zip(bomb, members)
    cases += [
        Case("compressed-1GiB-zeros-load_npz", "compression ratio", "call", "ratio",
             module="ptycho.data", function="load_npz", args=[bomb], error="DataLimitError"),
        Case("compressed-1GiB-zeros-cli-reconstruct", "compression ratio", "cli", "ratio",
             argv=["reconstruct", "--model", bundle, "--data", bomb, "--output-dir",
                   out.format(7)], absent=[out.format(7)]),
    ]

    # a manifest as large as allowed, of the JSON that takes the most memory per byte
    from ptycho.bundle import MAX_MANIFEST_BYTES
    text = ("[" + "{}," * (MAX_MANIFEST_BYTES // 3 - 1) + "{}]").encode()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    json_bomb = j("manifest-of-empty-objects.zip")
    write_zip(json_bomb, [Member("manifest.json", c.compress(text) + c.flush(), method=8,
                                 file_size=len(text), crc=zlib.crc32(text))])
    cases.append(Case("bundle-4MiB-manifest-of-empty-objects-read_bundle", "compression ratio",
                      "call", "not a ptycho-pinn-bundle", module="ptycho.bundle",
                      function="read_bundle", args=[json_bomb], error="NotABundleError"))

    # extra bundle entries: two 1 GiB members, listed in the manifest (sparse on disk)
    manifest, members = _bundle_members(bundle)
    for k in ("bonus.a", "bonus.b"):
        hdr = npy_header((1 << 28,), "<f4")
        members.append(Member(f"weights/{k}.npy", hdr, hole=1 << 30))
        manifest["entries"][k] = {"member": f"weights/{k}.npy", "shape": [1 << 28],
                                  "dtype": "float32", "sha256": "0" * 64}
    extra = j("extra-entries.zip")
    write_zip(extra, [Member("manifest.json", json.dumps(manifest).encode()), *members])
    manifest, members = _bundle_members(bundle)                 # the same, deflated: 2 MB
    for k in ("bonus.a", "bonus.b"):
        hdr = npy_header((1 << 28,), "<f4")
        members.append(Member(f"weights/{k}.npy", deflated_zeros(hdr, 1 << 30), method=8,
                              file_size=len(hdr) + (1 << 30), crc=0))
        manifest["entries"][k] = {"member": f"weights/{k}.npy", "shape": [1 << 28],
                                  "dtype": "float32", "sha256": "0" * 64}
    extra_deflated = j("extra-entries-deflated.zip")
    write_zip(extra_deflated, [Member("manifest.json", json.dumps(manifest).encode()),
                               *members])
    cases += [
        Case("bundle-2x1GiB-deflated-extra-entries-read_bundle", "extra bundle entries", "call",
             "would inflate", module="ptycho.bundle", function="read_bundle",
             args=[extra_deflated], error="BundleLimitError"),
        Case("bundle-2x1GiB-extra-entries-read_bundle", "extra bundle entries", "call",
             "unexpected entries ['bonus.a', 'bonus.b']", module="ptycho.bundle",
             function="read_bundle", args=[extra], error="WeightsError"),
        Case("bundle-2x1GiB-extra-entries-cli-inspect", "extra bundle entries", "cli",
             "unexpected entries", argv=["bundle", "inspect", extra]),
    ]

    # an expensive bundle config: N=512, gridsize 4, base_filters 256 (payloads never read)
    from ptycho.config import ModelConfig, TrainingConfig, config_to_dict
    from ptycho.weights import weight_spec
    cfg = TrainingConfig(model=ModelConfig(N=512, gridsize=4, base_filters=256), neighbor_count=16)
    manifest, _ = _bundle_members(bundle)
    manifest["config"] = config_to_dict(cfg)
    manifest["entries"] = {name: {"member": f"weights/{name}.npy", "shape": list(e.shape),
                                  "dtype": e.dtype, "sha256": "0" * 64}
                           for name, e in weight_spec(cfg.model).items()}
    expensive = j("expensive.zip")
    write_zip(expensive, [Member("manifest.json", json.dumps(manifest).encode())]
              + [Member(meta["member"], b"not read") for meta in manifest["entries"].values()])
    cases += [
        Case("bundle-N512-gridsize4-filters256-read_bundle", "expensive bundle config", "call",
             "the network (N=512, gridsize 4", module="ptycho.bundle", function="read_bundle",
             args=[expensive], error="BundleLimitError"),
        Case("bundle-N512-gridsize4-filters256-cli-reconstruct", "expensive bundle config",
             "cli", "the network (N=512, gridsize 4",
             argv=["reconstruct", "--model", expensive, "--data", good_scan, "--output-dir",
                   out.format(8)], absent=[out.format(8)]),
    ]

    # one outlying scan position
    import numpy as np
    far = dict(arrays)
    far["xcoords"] = arrays["xcoords"].copy()
    far["xcoords"][17] = 12000.0
    outlier = j("outlier-12000.npz")
    _save_scan(outlier, far)
    very_far = dict(arrays)
    very_far["xcoords"] = arrays["xcoords"].copy()
    very_far["xcoords"][17] = 1e7
    outlier_far = j("outlier-1e7.npz")
    _save_scan(outlier_far, very_far)
    bundle_g1 = j("model-g1.zip")
    _tiny_bundle(bundle_g1, gridsize=1)
    needle = "index 17 (x=12000"
    cases += [
        Case("outlier-x12000-gridsize2-cli-reconstruct", "outlying position", "cli", needle,
             argv=["reconstruct", "--model", bundle, "--data", outlier, "--output-dir",
                   out.format(9)], absent=[out.format(9)]),
        Case("outlier-x1e7-gridsize1-cli-reconstruct", "outlying position", "cli",
             "index 17 (x=1e+07",
             argv=["reconstruct", "--model", bundle_g1, "--data", outlier_far, "--output-dir",
                   out.format(10)], absent=[out.format(10)]),
        Case("outlier-x12000-gridsize2-cli-train", "outlying position", "cli", needle,
             argv=["train", "--train-data", outlier, "--output-dir", out.format(11), "--N", "16",
                   "--gridsize", "2", "--base-filters", "1", "--n-filters-scale", "1"],
             absent=[out.format(11)]),
        Case("outlier-x12000-test-data-cli-train", "outlying position", "cli", needle,
             argv=["train", "--train-data", good_scan, "--test-data", outlier, "--output-dir",
                   out.format(12), "--gridsize", "2", "--base-filters", "1",
                   "--n-filters-scale", "1"], absent=[out.format(12)]),
    ]
    assert np.isfinite(far["xcoords"]).all()

    # a second writer into an output folder that a running process holds
    busy = j("busy-run")
    cases.append(Case("second-writer-cli-train", "concurrent writers", "cli",
                      "in use by another run", hold_lock=busy,
                      argv=["train", "--train-data", good_scan, "--output-dir", busy,
                            "--base-filters", "1", "--n-filters-scale", "1"],
                      absent=[os.path.join(busy, "model.zip")]))
    return cases, cleanups


# --------------------------------------------------------------------------------------------
# running

def _env() -> dict:
    env = dict(os.environ)
    env["PTYCHO_MAX_BYTES"] = BUDGET
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _holder(folder: str) -> subprocess.Popen:
    """A process that holds ``folder``'s lock until killed; returns once it holds it."""
    code = ("import sys, time\nfrom ptycho.outdir import output_folder\n"
            f"with output_folder({folder!r}, 'ptycho train'):\n"
            "    print('locked', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=_env())
    if proc.stdout.readline().strip() != "locked":
        proc.kill()
        raise RuntimeError("the lock holder did not start")
    return proc


def run_cases(cases: list[Case]) -> list[dict]:
    """Run ``cases`` one after the other in one fresh process; one record per case.

    A record holds what the case ended with (``rc`` and ``error`` of a command; ``error_type``,
    ``error_classes`` and ``error`` of a call), its ``seconds``, the process's peak resident
    memory so far (``peak_rss_mib``: a case run after others is charged their peak too, so
    run a case alone for its own number), and ``left_behind``: the paths of its ``absent``
    that exist. A case that does not end within :data:`HANG_SECONDS` gets ``hung``. At most
    one case may hold a lock (``hold_lock``).
    """
    specs = [{"name": c.name, "kind": c.kind, "argv": c.argv, "module": c.module,
              "function": c.function, "args": c.args} for c in cases]
    locks = [c.hold_lock for c in cases if c.hold_lock]
    assert len(locks) <= 1, "one lock holder per process"
    holder = _holder(locks[0]) if locks else None
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(specs)],
                              capture_output=True, text=True, env=_env(),
                              timeout=HANG_SECONDS * len(cases))
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, code = "(hung)", None
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    done = {r["case"]: r for r in map(json.loads, stdout.strip().splitlines()) if r}
    records = []
    for c in cases:
        record = {"case": c.name, "group": c.group, **done.get(c.name, {})}
        if c.name not in done:
            record.update(hung=code is None, exit=code, stderr=stderr[-3000:])
        record["holder_pid"] = holder.pid if holder is not None and c.hold_lock else None
        record["left_behind"] = [p for p in c.absent if os.path.exists(p)]
        records.append(record)
    return records


def check(case: Case, record: dict) -> list[str]:
    """What is wrong with ``record`` for ``case`` (an empty list when it was refused as it
    must be: the right error, a clear message, the peak bound, nothing left behind)."""
    problems = []
    if "seconds" not in record:
        return [f"did not finish (hung: {record.get('hung')}): {record.get('stderr', '')[-800:]}"]
    if case.expect not in record.get("error", ""):
        problems.append(f"expected {case.expect!r} in the error, got {record.get('error')!r}")
    if case.kind == "cli":
        if record.get("rc") != case.rc:
            problems.append(f"exit status {record.get('rc')}, expected {case.rc}")
        lines = record.get("error", "").strip().splitlines()
        if len(lines) != 1 or "Traceback" in record.get("error", ""):
            problems.append(f"expected a one-line error, got {record.get('error')!r}")
    elif case.error not in record.get("error_classes", []):
        problems.append(f"expected a {case.error}, got {record.get('error_type')}")
    if record["peak_rss_mib"] > PEAK_LIMIT_MIB:
        problems.append(f"peak memory {record['peak_rss_mib']:.0f} MiB > {PEAK_LIMIT_MIB} MiB")
    if record["left_behind"]:
        problems.append(f"left behind {record['left_behind']}")
    return problems


def main(argv: Optional[list] = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run the cases whose name contains this")
    p.add_argument("--json", metavar="OUT", help="also write the records to OUT")
    args = p.parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory() as folder:
        cases, cleanups = build_cases(folder)
        try:
            for case in cases:
                if args.only in case.name:
                    records += run_cases([case])      # alone: its own peak memory
                    r = records[-1]
                    r["problems"] = check(case, r)
                    print(f"{case.name:50s} {r.get('seconds', float('nan')):6.2f} s "
                          f"{r.get('peak_rss_mib', float('nan')):7.1f} MiB  "
                          f"{(r.get('error') or '').strip()[:90]}", file=sys.stderr, flush=True)
                    print(json.dumps({k: v for k, v in r.items() if k != "stderr"}), flush=True)
        finally:
            for cleanup in cleanups:
                cleanup()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:   # a benchmark's report, not the library
            json.dump(records, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
