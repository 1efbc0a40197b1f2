"""What the processor does in hardware, where a choice of the user depends on it.

Mixed precision (``precision="bfloat16"``, in training and inference) is fast only where the
CPU has bfloat16 arithmetic: Intel AMX, AVX512-BF16, Arm's BF16. Elsewhere the frameworks
emulate it: on an AVX2 CPU (AMD EPYC, 2 cores; N=64, 256 patterns, skip connections) a
two-epoch ``ptycho train`` took 8.7x (torch) and 7.0x (TensorFlow) as long as in float32,
torch's inference 9x, TensorFlow's the same (``benchmarks/README.md``, "Mixed precision
without bfloat16 arithmetic"). Asking for it there is almost certainly a mistake, so the
library says so (:func:`warn_if_bfloat16_emulated`) and still does what was asked.

Flags are read from ``/proc/cpuinfo`` at each call (nothing cached); where it cannot be read
(not Linux) nothing is known and nothing is said.

>>> sorted(cpu_flags(["flags\\t\\t: fpu avx2 fma", "flags\\t\\t: fpu avx2 fma"]))
['avx2', 'fma', 'fpu']
>>> bfloat16_emulated(frozenset({"avx2", "fma"})), bfloat16_emulated(frozenset({"amx_bf16"}))
(True, False)
>>> bfloat16_emulated(None)   # unknown: not said to be emulated
False
"""

from __future__ import annotations

import warnings
from typing import Iterable, Optional

from ptycho.errors import PerformanceWarning

#: Flags (``/proc/cpuinfo``: x86 ``flags``, Arm ``Features``) of bfloat16 arithmetic in hardware.
BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_flags(lines: Optional[Iterable[str]] = None) -> Optional[frozenset[str]]:
    """The first processor's feature flags from ``lines`` of ``/proc/cpuinfo`` (read now
    when None), or None where the file cannot be read or holds no flags."""
    if lines is None:
        try:
            with open(CPUINFO) as f:      # read up to the first flags line only (one
                return cpu_flags(f)          # block per core: long on a large machine)
        except OSError:
            return None
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def bfloat16_emulated(flags: Optional[frozenset[str]]) -> bool:
    """Whether a CPU with these ``flags`` lacks bfloat16 arithmetic (False when unknown)."""
    return flags is not None and not any(f in flags for f in BFLOAT16_FLAGS)


def warn_if_bfloat16_emulated(precision: str, what: str) -> None:
    """Warn (:class:`PerformanceWarning`) when ``precision`` is bfloat16 and this CPU would
    emulate it; ``what`` names the step, e.g. "training"."""
    if precision != "bfloat16":
        return
    flags = cpu_flags()
    if not bfloat16_emulated(flags):
        return
    warnings.warn(
        f"precision='bfloat16' for {what}, but this CPU has no bfloat16 arithmetic (none of "
        f"{', '.join(BFLOAT16_FLAGS)} in {CPUINFO}): the framework emulates it (on an AVX2 "
        f"CPU training ran 7-9x slower than in float32, inference up to 9x); use "
        f"precision='float32' here (a GPU, where the backend uses one, is not affected)",
        PerformanceWarning, stacklevel=3)
