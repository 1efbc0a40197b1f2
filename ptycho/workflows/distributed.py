"""Joining a multi-process run: the process group a launcher described, for a backend.

Launch K processes with ``torchrun`` (or ``ptycho train --nproc K``, see
``docs/distributed.md``), each running the same program; in each::

    from ptycho.workflows.distributed import process_group
    from ptycho.workflows.train import train

    with process_group("torch") as group:     # None when not launched as a group
        result = train(config, raw_train, backend="torch", group=group)
        if group is None or group.rank == 0:
            print(result.history.losses())

:func:`process_group` applies the backend's process settings (threads: the cores of this
node shared among its ranks), starts the group from the environment and leaves it at the
end. Models built with ``group=`` train and reconstruct as one rank of the group
(:mod:`ptycho.distributed`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping, Optional

from backends import configure_process
from ptycho.distributed import DEFAULT_TIMEOUT_S, World, world_from_environment


def default_threads(world: World, environ: Optional[Mapping[str, str]] = None) -> int:
    """Intra-op threads of one rank: ``OMP_NUM_THREADS`` when set (torchrun sets 1), else
    this node's cores shared among its ``local_size`` ranks (at least one)."""
    env = os.environ if environ is None else environ
    text = env.get("OMP_NUM_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // world.local_size)


@contextlib.contextmanager
def process_group(backend: Optional[str] = None, *, threads: Optional[int] = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S,
                  environ: Optional[Mapping[str, str]] = None) -> Iterator:
    """Configure the process for ``backend`` and join the group the launcher described in
    ``environ`` (default ``os.environ``: torchrun's variables or ``TF_CONFIG``); yields the
    started :class:`backends.common.distributed.ProcessGroup`, or None when the environment
    describes no group (then only the process settings are applied). The group is left when
    the block ends. ``timeout_s``: how long a collective waits for the other ranks.
    """
    world = world_from_environment(environ)
    if threads is None and world is not None:
        threads = default_threads(world, environ)
    impl = configure_process(backend, threads=threads)
    if world is None:
        yield None
        return
    group = impl.start_process_group(world, timeout_s)
    try:
        yield group
    finally:
        group.close()
