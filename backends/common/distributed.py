"""A started process group, written once over a backend's ops namespace.

:class:`ProcessGroup` is what ``backend.start_process_group(world)`` returns: the model
(:class:`backends.common.model.Model`, built with ``group=``) sums its loss counts, loss terms
and gradients over it; the training driver and the reconstruction use it as a
:class:`ptycho.distributed.Communicator` (numpy all-reduce, agreeing on a stop). The engine
is the framework's own (``ops.start_process_group`` / ``ops.all_reduce_sum``):
``torch.distributed`` (gloo, NCCL) or TensorFlow's ``MultiWorkerMirroredStrategy``.

A failed collective (a rank died, or did not answer within ``timeout_s``) raises
:class:`ptycho.errors.DistributedError` naming this rank and what it was doing.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Sequence

import numpy as np

from ptycho.distributed import DEFAULT_TIMEOUT_S, World
from ptycho.errors import DistributedError

#: numpy dtypes :meth:`ProcessGroup.all_reduce_sum` accepts, by the real dtype sent.
_WIRE = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
         np.dtype(np.complex64): "float32", np.dtype(np.complex128): "float64"}


class ProcessGroup:
    """This process's membership of a group of ``size`` processes, in one backend.

    ``rank``, ``size``, ``world``: who it is; ``device``: where this rank's tensors live
    (torch: ``cuda:local_rank`` or the CPU; None for TensorFlow).
    """

    def __init__(self, ops, world: World, timeout_s: float = DEFAULT_TIMEOUT_S):
        if not isinstance(world, World):
            raise TypeError(f"world must be a ptycho.distributed.World, got {type(world).__name__}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.ops = ops
        self.world = world
        self.rank, self.size = world.rank, world.size
        self.timeout_s = float(timeout_s)
        self._handle, self.device = ops.start_process_group(world, self.timeout_s)
        self._reducers: dict = {}
        self.closed = False

    def __repr__(self) -> str:
        return f"<ProcessGroup rank {self.rank} of {self.size} ({self.ops.FRAMEWORK})>"

    # ------------------------------------------------------------------ tensors (the model)
    def all_reduce(self, tensors: Sequence) -> list:
        """Sums over the ranks of backend tensors of one dtype (one collective), every rank
        the same; usable inside a compiled function. Errors surface where it runs: wrap the
        call of a compiled function in :meth:`guard`."""
        return self.ops.all_reduce_sum(list(tensors), self._handle)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a failed collective inside the block into a :class:`DistributedError`."""
        try:
            yield
        except self.ops.COLLECTIVE_ERRORS as err:
            raise DistributedError(
                f"rank {self.rank} of {self.size}: {what} failed in a collective operation "
                f"with the other ranks: a rank died or stopped, or did not answer within "
                f"{self.timeout_s:g} s (see the other ranks' output); {_framework_message(err)}") from err

    # ------------------------------------------------------------------ numpy (the driver)
    def all_reduce_sum(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Elementwise sums over the ranks of numpy arrays (float32, float64, complex64,
        complex128; same shapes on every rank), each returned in its own dtype. One
        collective per real dtype sent (complex arrays go as their real and imaginary parts).
        """
        arrays = [np.asarray(a) for a in arrays]
        for a in arrays:
            if a.dtype not in _WIRE:
                raise TypeError(f"all_reduce_sum takes float32/64 or complex64/128 arrays, got "
                                f"{a.dtype}")
        out: list = [None] * len(arrays)
        for wire in sorted(set(_WIRE[a.dtype] for a in arrays)):
            picked = [i for i, a in enumerate(arrays) if _WIRE[a.dtype] == wire]
            parts = [np.ascontiguousarray(arrays[i]).reshape(-1).view(wire) for i in picked]
            flat = np.concatenate(parts) if parts else np.zeros(0, wire)
            with self.guard("an all-reduce"):
                summed = self.ops.read(self._reducer(wire)(
                    self.ops.tensor(flat, wire, self.device)))
            start = 0
            for i, part in zip(picked, parts):
                chunk = summed[start:start + part.size]
                out[i] = chunk.view(arrays[i].dtype).reshape(arrays[i].shape).copy()
                start += part.size
        return out

    def _reducer(self, wire: str):
        """The compiled sum over ranks of a 1-D ``wire`` tensor (one trace per dtype)."""
        if wire not in self._reducers:
            self._reducers[wire] = self.ops.compile(lambda x: self.all_reduce([x])[0],
                                                    [((None,), wire)])
        return self._reducers[wire]

    def any(self, flag: bool) -> bool:
        """Whether any rank passed True (every rank gets the same answer)."""
        return bool(self.all_reduce_sum([np.array([1.0 if flag else 0.0], np.float32)])[0][0] > 0)

    def barrier(self) -> None:
        """Wait until every rank got here."""
        self.any(False)

    def close(self) -> None:
        """Leave the group (once; later calls do nothing)."""
        if not self.closed:
            self.closed = True
            handle, self._handle = self._handle, None
            self._reducers.clear()
            self.ops.stop_process_group(handle)
            # the last reference to the engine's group goes here, so that its threads end now
            # and not while the interpreter shuts down (a gloo thread that then releases a
            # tensor aborts the process: "terminate called without an active exception")
            del handle


#: Lines of a framework's message that say where, not what (TensorFlow's graph trace).
_TRACE_LINES = ("Graph execution error", "Detected at node", "File ", "[[")


def _framework_message(err: BaseException, limit: int = 400) -> str:
    """The framework's own words on one line, without TensorFlow's trace of graph nodes."""
    lines = [ln.strip() for ln in str(err).splitlines()]
    text = " ".join(ln for ln in lines if ln and not ln.startswith(_TRACE_LINES))
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = text or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
