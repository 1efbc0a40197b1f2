"""What every benchmark record carries: the machine, the versions, and how busy the machine was.

Nothing here imports a framework: versions come from the installed distributions' metadata,
so the parent process of a benchmark run stays free of TensorFlow and PyTorch.

>>> info = machine_info()
>>> info["cores"] >= 1 and isinstance(info["cpu_model"], str)
True
>>> {"loadavg_1m", "loadavg_5m"} <= set(load_snapshot())
True
"""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from importlib import metadata
from typing import Optional

#: CPU flags worth recording (the vector units the convolutions and bf16 paths use).
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    key, val = line.split(":", 1)
                    out.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    return out


def _mem_total_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def machine_info() -> dict:
    """Cores, CPU model and vector flags, memory, OS and Python (cached)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        usable = os.cpu_count()
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "cpu_flags": [f for f in FLAGS if f in flags],
        "mem_gib": _mem_total_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def versions() -> dict:
    """The library's and the frameworks' versions (None where not installed)."""
    import ptycho
    return {
        "ptycho": ptycho.__version__,
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
        "torch": _version("torch"),
    }


def load_snapshot() -> dict:
    """How busy the machine is now: load averages, runnable tasks, CPU pressure (Linux PSI).

    ``cpu_pressure_10s`` is the share of the last 10 s in which some runnable task waited for
    a CPU (percent); on a quiet machine it is near 0. Other engineers' jobs on the same
    machine show up here even when they are invisible to ``ps`` (other containers).
    """
    one, five, _ = os.getloadavg()
    snap = {"loadavg_1m": round(one, 2), "loadavg_5m": round(five, 2)}
    try:
        with open("/proc/pressure/cpu") as f:
            first = f.readline().split()
        snap["cpu_pressure_10s"] = float(first[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    snap["procs_running"] = int(line.split()[1])
    except OSError:
        pass
    return snap


def busy(snapshot: dict, cores: Optional[int] = None) -> bool:
    """Whether a snapshot says other work was competing for the CPUs (pressure above 20 %,
    or a 1-minute load above the core count)."""
    cores = cores or os.cpu_count() or 1
    return (snapshot.get("cpu_pressure_10s", 0.0) > 20.0
            or snapshot.get("loadavg_1m", 0.0) > cores)
