"""``--nproc K``: run a command as K processes of one data-parallel run on this machine.

``ptycho train --nproc K ...`` (or ``reconstruct``) starts K copies of the same command, each
one rank of a process group (see :mod:`ptycho.distributed`), and waits for them:

* PyTorch: delegated to torchrun's launcher (``torch.distributed.run``, standalone
  rendezvous on a free local port), the same as ``torchrun --standalone --nproc-per-node K
  -m ptycho ...``;
* TensorFlow (any other framework): K subprocesses, each given ``TF_CONFIG`` (the cluster of
  K local workers on free ports, its index) and torchrun's variables (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).

A child sees the group in its environment and runs as a rank (the ``--nproc`` it also
receives then only has to agree with the group's size). Each rank gets
``OMP_NUM_THREADS`` = this machine's cores / K unless it is set. Ctrl-C (SIGINT) or SIGTERM
is passed on to every rank, which stop together at the next step (rank 0 keeps the last
completed epoch's bundle); a second one kills them. When a rank fails, the others are given
:data:`GRACE_S` seconds to notice and report it themselves, then stopped (SIGTERM, then
SIGKILL after another :data:`GRACE_S`); the launcher reports which rank failed and how.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

#: Seconds the launcher waits after a rank failed before stopping the others (and again
#: before killing them).
GRACE_S = 10.0
#: Exit status of a run interrupted by Ctrl-C (what a rank returns then).
EXIT_INTERRUPTED = 130


def launched_as_rank(environ=None) -> Optional[object]:
    """The :class:`ptycho.distributed.World` this process is a rank of, or None."""
    from ptycho.distributed import world_from_environment

    return world_from_environment(environ)


def check_nproc(nproc: int, world) -> None:
    """A rank's ``--nproc`` must agree with the group it was started in (1: not given)."""
    if world is not None and nproc not in (1, world.size):
        raise ValueError(f"--nproc {nproc}, but this process was started as rank "
                         f"{world.rank} of a group of {world.size} (its launcher decides "
                         f"the number of processes)")


def launch(prog: str, argv: Sequence[str], nproc: int, backend: str) -> int:
    """Run ``ptycho <argv>`` as ``nproc`` ranks of ``backend``; the run's exit status."""
    from backends.registry import REGISTRY

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(_threads_per_rank(nproc)))
    if REGISTRY[backend].framework == "torch":
        return _torchrun(prog, list(argv), nproc, env)
    return _spawn(prog, list(argv), nproc, env)


def _threads_per_rank(nproc: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on this machine (held open together while chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _describe(rank: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"rank {rank} was killed by {name}"
    return f"rank {rank} exited with status {code}"


# ---------------------------------------------------------------------------- torch: torchrun
def _torchrun(prog: str, argv: list[str], nproc: int, env: dict) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ["OMP_NUM_THREADS"] = env["OMP_NUM_THREADS"]     # torchrun passes its own env
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--module", "ptycho"])
    args.training_script_args = argv    # (not parsed: torchrun's parser would take --nproc)
    try:
        run(args)
    except SignalException:
        _report(prog, "interrupted; every rank was stopped")
        return EXIT_INTERRUPTED
    except ChildFailedError as err:
        failures = sorted(err.failures.items(), key=lambda item: item[1].timestamp)
        codes = {rank: f.exitcode for rank, f in failures}
        if all(code == EXIT_INTERRUPTED for code in codes.values()):
            return EXIT_INTERRUPTED
        first_rank, first = failures[0]
        others = len(failures) - 1
        _report(prog, f"{_describe(first_rank, first.exitcode)} (see the ranks' output above)"
                      + (f"; {others} other rank{'s' if others > 1 else ''} stopped after it"
                         if others else ""))
        return 1
    return 0


# ---------------------------------------------------------------------------- TF_CONFIG ranks
def _spawn(prog: str, argv: list[str], nproc: int, env: dict) -> int:
    ports = free_ports(nproc + 1)
    workers = [f"localhost:{p}" for p in ports[:nproc]]
    procs = []
    for rank in range(nproc):
        child = dict(env, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                     LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(ports[nproc]),
                     TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                           "task": {"type": "worker", "index": rank}}))
        # own session: a terminal's Ctrl-C reaches the launcher, which passes it on once
        procs.append(subprocess.Popen([sys.executable, "-m", "ptycho", *argv], env=child,
                                      start_new_session=True))
    return _supervise(prog, procs)


def _supervise(prog: str, procs: list[subprocess.Popen]) -> int:
    signals: list[int] = []

    def forward(signum, frame) -> None:
        signals.append(signum)
        for p in procs:
            if p.poll() is None:
                _send(p, signum if len(signals) == 1 else signal.SIGKILL)

    before = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    failed: Optional[tuple[int, int]] = None
    stop_at = kill_at = None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if failed is None:
                for rank, p in enumerate(procs):
                    code = p.poll()
                    if code not in (None, 0, EXIT_INTERRUPTED):
                        failed = (rank, code)
                        stop_at = now + GRACE_S
                        break
            if stop_at is not None and now >= stop_at:
                for p in procs:
                    if p.poll() is None:
                        _send(p, signal.SIGTERM)
                stop_at, kill_at = None, now + GRACE_S
            if kill_at is not None and now >= kill_at:
                for p in procs:
                    if p.poll() is None:
                        _send(p, signal.SIGKILL)
                kill_at = None
            time.sleep(0.05)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    codes = [p.returncode for p in procs]
    if failed is None:
        failed = next(((r, c) for r, c in enumerate(codes) if c not in (0, EXIT_INTERRUPTED)),
                      None)
    if failed is not None:
        stopped = sum(1 for r, c in enumerate(codes) if r != failed[0] and c != 0)
        _report(prog, f"{_describe(*failed)} (see the ranks' output above)"
                      + (f"; {stopped} other rank{'s' if stopped > 1 else ''} stopped after it"
                         if stopped else ""))
        return 1
    if signals or EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return 0


def _send(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:      # it ended meanwhile
        pass


def _report(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
