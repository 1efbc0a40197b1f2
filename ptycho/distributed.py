"""Data parallelism across processes, the backend-neutral part: who this process is, which part
of the work is its own, and what the training driver needs from a process group.

A run of K processes is a *group*; each process is one *rank* (0 .. K-1). The launcher
describes the group in the environment, in one of two ways:

* torchrun's variables (``torchrun``, ``ptycho ... --nproc K`` with PyTorch, SLURM scripts):
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``;
* TensorFlow's ``TF_CONFIG`` (``ptycho ... --nproc K`` with TensorFlow, or set by hand per
  process): ``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
  "index": i}}`` (a ``chief`` entry, if any, is rank 0).

:func:`world_from_environment` reads either into a :class:`World`; the backend turns a world
into a started process group (``backend.start_process_group(world, timeout_s)``), which the
model uses to add up gradients and the driver to split batches (:func:`shard`) and to agree
on stopping (:class:`Communicator`). Nothing here starts anything or imports a framework.

Every rank takes a contiguous slice of each global batch, so K processes with global batch B
follow the optimisation path of one process with batch B: each rank's loss terms are its
share of the whole batch's means (sums over its groups divided by the whole batch's counts),
and the sums over ranks of terms and gradients are the whole batch's.

>>> [shard(5, rank, 2) for rank in range(2)]
[slice(0, 3, None), slice(3, 5, None)]
>>> world_from_environment({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "node0",
...                         "MASTER_PORT": "29500"})
World(rank=1, size=2, local_rank=0, local_size=1, master='node0:29500', workers=())
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Protocol, Sequence, runtime_checkable

from ptycho.errors import ConfigError

if TYPE_CHECKING:       # numpy only for annotations: the CLI's parsers import this module
    import numpy as np

#: Seconds a collective may wait for the other ranks before the group gives up (a rank that
#: died is usually noticed much sooner: its connections close).
DEFAULT_TIMEOUT_S = 300.0

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in a group of ``size`` processes.

    rank: 0 .. size-1 (rank 0 writes every file); local_rank, local_size: the same on this
    node (which GPU a rank takes); master: ``host:port`` of rank 0's rendezvous (torch);
    workers: every rank's ``host:port`` in rank order (TensorFlow's cluster), or empty.
    """

    rank: int
    size: int
    local_rank: int = 0
    local_size: int = 1
    master: Optional[str] = None
    workers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.size, int) and self.size >= 1):
            raise ConfigError(f"World.size must be an int >= 1, got {self.size!r}")
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.size):
            raise ConfigError(f"World.rank must be in [0, {self.size}), got {self.rank!r}")
        if not (isinstance(self.local_size, int) and self.local_size >= 1
                and isinstance(self.local_rank, int) and 0 <= self.local_rank < self.local_size):
            raise ConfigError(f"World.local_rank must be in [0, local_size = {self.local_size}), "
                              f"got {self.local_rank!r}")
        if self.workers and len(self.workers) != self.size:
            raise ConfigError(f"World.workers lists {len(self.workers)} addresses for "
                              f"{self.size} ranks")

    @property
    def is_lead(self) -> bool:
        """Whether this is rank 0 (the one that writes bundles, figures and summaries)."""
        return self.rank == 0


def _int_var(environ: Mapping[str, str], name: str, default: Optional[int] = None) -> int:
    text = environ.get(name)
    if text is None or text.strip() == "":
        if default is None:
            raise ConfigError(f"environment variable {name} is required for a multi-process run "
                              f"(torchrun sets {', '.join(_TORCHRUN_VARS)})")
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def _from_torchrun(environ: Mapping[str, str]) -> World:
    size = _int_var(environ, "WORLD_SIZE")
    rank = _int_var(environ, "RANK")
    local_rank = _int_var(environ, "LOCAL_RANK", 0)
    local_size = _int_var(environ, "LOCAL_WORLD_SIZE", local_rank + 1)
    master = None
    if size > 1:
        addr = environ.get("MASTER_ADDR", "").strip()
        port = _int_var(environ, "MASTER_PORT")
        if not addr:
            raise ConfigError("environment variable MASTER_ADDR is required for a multi-process "
                              "run (the host of rank 0)")
        master = f"{addr}:{port}"
    return World(rank, size, local_rank, local_size, master)


def _from_tf_config(text: str) -> World:
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        chief = list(cluster.get("chief", []))
        workers = list(cluster.get("worker", []))
        kind, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"TF_CONFIG must be JSON {{'cluster': {{'worker': [host:port, ...]}}, "
                          f"'task': {{'type': 'worker', 'index': i}}}}: {err}") from None
    extra = sorted(set(cluster) - {"chief", "worker"})
    if extra:
        raise ConfigError(f"TF_CONFIG: only 'chief' and 'worker' jobs take part in training, "
                          f"got {extra}")
    if len(chief) > 1:
        raise ConfigError(f"TF_CONFIG: at most one chief, got {len(chief)}")
    addresses = chief + workers
    if kind not in ("chief", "worker"):
        raise ConfigError(f"TF_CONFIG: task type must be 'chief' or 'worker', got {kind!r}")
    rank = index if kind == "chief" else len(chief) + index
    if not 0 <= rank < len(addresses) or (kind == "chief" and index != 0):
        raise ConfigError(f"TF_CONFIG: task {kind}:{index} is not in the cluster of "
                          f"{len(addresses)} processes")
    host = addresses[rank].rsplit(":", 1)[0]
    same_host = [a for a in addresses if a.rsplit(":", 1)[0] == host]
    local_rank = sum(a.rsplit(":", 1)[0] == host for a in addresses[:rank])
    return World(rank, len(addresses), local_rank, len(same_host), None, tuple(addresses))


def world_from_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[World]:
    """The group the launcher described in ``environ`` (default ``os.environ``), or None when
    it describes none or a group of one process (a single process needs no group).

    torchrun's variables (``WORLD_SIZE`` ...) or ``TF_CONFIG`` (see the module docstring);
    when both are set they must agree on rank and size. With ``TF_CONFIG``, ``LOCAL_RANK`` is
    the number of earlier ranks on the same host (unless ``LOCAL_RANK`` is set).
    """
    env = os.environ if environ is None else environ
    from_torchrun = _from_torchrun(env) if env.get("WORLD_SIZE", "").strip() else None
    from_tf = _from_tf_config(env["TF_CONFIG"]) if env.get("TF_CONFIG", "").strip() else None
    if from_torchrun and from_tf and (from_torchrun.rank, from_torchrun.size) != \
            (from_tf.rank, from_tf.size):
        raise ConfigError(f"RANK/WORLD_SIZE say rank {from_torchrun.rank} of "
                          f"{from_torchrun.size} but TF_CONFIG says rank {from_tf.rank} of "
                          f"{from_tf.size}")
    world = from_torchrun or from_tf
    if from_torchrun and from_tf:
        world = World(from_tf.rank, from_tf.size, from_torchrun.local_rank,
                      from_torchrun.local_size, from_torchrun.master, from_tf.workers)
    elif from_tf is not None and env.get("LOCAL_RANK", "").strip():
        world = World(from_tf.rank, from_tf.size, _int_var(env, "LOCAL_RANK"),
                      _int_var(env, "LOCAL_WORLD_SIZE", from_tf.local_size), None,
                      from_tf.workers)
    if world is None or world.size == 1:
        return None
    return world


def shard(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous part of ``range(n)`` split over ``size`` ranks; the parts'
    lengths differ by at most one, the first ones longer; a part may be empty when
    ``n < size``.

    >>> [shard(3, r, 4) for r in range(4)]
    [slice(0, 1, None), slice(1, 2, None), slice(2, 3, None), slice(3, 3, None)]
    """
    if not (isinstance(size, numbers.Integral) and size >= 1 and 0 <= rank < size):
        raise ValueError(f"need 0 <= rank < size, got rank={rank!r}, size={size!r}")
    return slice(_start(int(n), int(rank), int(size)), _start(int(n), int(rank) + 1, int(size)))


def _start(n: int, rank: int, size: int) -> int:
    """Where rank ``rank``'s part begins: the first ``n % size`` parts hold one more."""
    base, extra = divmod(n, size)
    return rank * base + min(rank, extra)


@runtime_checkable
class Communicator(Protocol):
    """What the training driver and the reconstruction need of a started process group.

    ``rank`` and ``size`` as in :class:`World`; ``all_reduce_sum`` returns, on every rank, the
    elementwise sums over ranks of each array (same shapes and dtypes on every rank; float32,
    float64, complex64 or complex128); ``any`` whether any rank passed True.
    Every rank must make the same calls in the same order.
    """

    rank: int
    size: int

    def all_reduce_sum(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def any(self, flag: bool) -> bool: ...
