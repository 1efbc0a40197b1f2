"""One benchmark worker process per backend, driven by the parent over a pipe.

Each backend runs in its own (spawned) process, so TensorFlow and PyTorch never share a
process, and each process holds the framework with exactly the settings the backend gives it
(the yardstick of that framework runs in the same process, under the same settings). The
parent asks the workers for short rounds of measurements in turn, alternating which backend
goes first, so that both backends, and ours against the yardstick, see the same machine.

Kinds of case (``setup``; ``precision`` applies to ours):

* ``train``: *a* = one step of the training driver's loop body on our model
  (``model.train_step(data.batch(idx))`` on a simulated, grouped dataset, batches in the
  driver's seeded order); *b* = one step of the bare-framework yardstick.
* ``infer``: *a* = what :func:`ptycho.workflows.reconstruct` does for one chunk before
  stitching (:func:`~ptycho.workflows.reconstruct.predict_chunk`: numpy in, network, patches,
  the overlap constraint for gridsize > 1, numpy out); *b* = the yardstick's forward pass.
* ``bf16``: *a* = ``predict_chunk`` in float32, *b* = the same in bfloat16; the setup also
  reports the bfloat16 patches' error against float32.
* ``train_peer`` / ``infer_peer``: *a* as for ``train`` / ``infer``; *b* = the peer's
  network (PtychoPINN's, :mod:`benchmarks.peer`) on the same batch: one pass of C channels
  per group, as the peer runs a group.
* ``scan_peer`` (gridsize > 1): a whole grouped scan, one group per scan position, as
  :func:`~ptycho.workflows.reconstruct.reconstruct` forms and predicts it: *a* =
  ``predict_chunk`` of every group with their scan indices (our per-pattern network runs
  each distinct pattern once, then the overlap constraint of every group), *b* = the peer's
  network on every group (one pass of C channels each), ``batch`` groups a call. Patterns
  are the scan's distinct patterns, for both.

A worker started with ``runtime="default"`` imports the framework alone, with its own
defaults (no backend, none of its settings), and measures only the yardstick (*a*): the
framework out of the box.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from typing import Any, Optional

import numpy as np

from benchmarks.machine import load_snapshot
from benchmarks.timing import time_calls

#: Distinct batches cycled through by a training case (epochs of the driver's order).
N_BATCHES = 4


class _FrameworkDefaults:
    """Stands in for a backend in a worker that measures the bare yardstick only, with the
    framework exactly as it comes (imported first, none of the backend's settings)."""

    def __init__(self, name: str):
        self.name = name

    def version(self) -> str:
        import importlib
        return importlib.import_module(self.name).__version__


def _configure(backend: str, threads: Optional[int], runtime: str = "library") -> Any:
    """Import the backend (its settings first, then the framework), apply a thread override.

    ``runtime="default"``: import the framework alone, with its own defaults (for the
    out-of-the-box yardstick); no backend is imported.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    t0 = time.perf_counter()
    if runtime == "default":
        from backends.registry import canonical_name
        name = canonical_name(backend)
        if name == "torch":
            import torch
            if threads:
                torch.set_num_threads(threads)
        else:
            import tensorflow  # noqa: F401
        return _FrameworkDefaults(name), time.perf_counter() - t0
    from backends import configure_process
    impl = configure_process(backend, threads=threads)   # as the CLI and training do
    return impl, time.perf_counter() - t0


def _threads(backend: str) -> dict:
    if backend == "torch":
        import torch
        return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE")}
    import tensorflow as tf
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads() or "default",
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or "default"}


def _dataset(cfg, batch: int, seed: int = 0, precision: str = "float32"):
    """A simulated scan grouped for training: ``N_BATCHES * batch`` groups."""
    from ptycho.config import TrainingConfig
    from ptycho.data.grouping import group_data_for_training
    from ptycho.simulate import simulate_dataset

    n_groups = N_BATCHES * batch
    tc = TrainingConfig(model=cfg, batch_size=batch, nphotons=1e6, n_groups=n_groups, seed=seed,
                        precision=precision)
    raw, _ = simulate_dataset(max(n_groups, 16), cfg.N, nphotons=1e6, seed=seed, scan="jitter")
    return tc, group_data_for_training(raw, tc)


class Case:
    """One set-up measurement: two callables *a* and *b* and what describes them."""

    def __init__(self, impl, kind: str, n: int, gridsize: int, batch: int, model: dict,
                 precision: str = "float32"):
        from benchmarks.bare import YARDSTICKS
        from benchmarks.peer import PEERS
        from ptycho.config import ModelConfig
        from ptycho.training import epoch_batches
        from ptycho.weights import init_weights
        from ptycho.workflows.model import PtychoModel
        from ptycho.workflows.reconstruct import constraint_canvas, predict_chunk

        cfg = ModelConfig(N=n, gridsize=gridsize, **model)
        if isinstance(impl, _FrameworkDefaults):      # the out-of-the-box yardstick alone
            train, forward = YARDSTICKS[impl.name](cfg, batch)
            self.a = {"train": train, "infer": forward}[kind]
            self.b = None
            self.labels = ("bare", None)
            self.patterns = batch * cfg.n_channels
            self.nonfinite = 0
            self.info = {"groups_per_call": batch, "patterns_per_call": self.patterns,
                         "first_a_s": time_calls(self.a, 1)[0][0]}
            self.info["est_a_s"] = self.info["est_b_s"] = time_calls(self.a, 1)[0][0]
            return
        tc, data = _dataset(cfg, batch, precision=precision)
        weights = init_weights(cfg, 0, data.probe, math.log(data.intensity_scale))
        backend_model = impl.build_model(cfg, weights)
        self.patterns = batch * cfg.n_channels
        self.info: dict = {"groups_per_call": batch, "patterns_per_call": self.patterns}
        self.nonfinite = 0
        if kind in ("train", "train_peer"):
            backend_model.configure_training(tc)
            order = itertools.chain.from_iterable(
                epoch_batches(len(data), batch, tc.seed, e) for e in itertools.count())

            def ours() -> None:
                terms = backend_model.train_step(data.batch(next(order)))
                if not all(math.isfinite(float(v)) for v in terms.values()):
                    self.nonfinite += 1

            if kind == "train":
                self.b, _ = YARDSTICKS[impl.name](cfg, batch)
                self.labels = ("ours", "bare")
            else:
                self.b, _ = PEERS[impl.name](n, cfg.n_channels, batch)
                self.labels = ("ours", "peer")
            self.a = ours
        elif kind == "scan_peer":
            pmodel = PtychoModel(backend_model, tc)
            pos = data.global_offsets[:, None, :] + data.rel_offsets.astype(np.float64)
            canvas = constraint_canvas(pmodel, pos)
            distinct = len(np.unique(data.indices))
            if cfg.n_channels < 2 or distinct != len(data):
                raise ValueError(f"scan_peer needs gridsize > 1 and one group per scan "
                                 f"position, got gridsize {cfg.gridsize}, {len(data)} groups "
                                 f"of {distinct} patterns")
            _, peer_forward = PEERS[impl.name](n, cfg.n_channels, batch)

            def scan() -> None:
                predict_chunk(pmodel, data.diffraction, pos, canvas, batch_size=batch,
                              precision=precision, indices=data.indices)

            def peer_scan() -> None:
                for _ in range(len(data) // batch):     # the peer's net takes `batch` groups
                    peer_forward()

            self.a, self.b = scan, peer_scan
            self.labels = ("ours", "peer")
            self.patterns = distinct
            self.info.update(groups_per_call=len(data), patterns_per_call=distinct)
        else:
            pmodel = PtychoModel(backend_model, tc)
            pos = data.global_offsets[:, None, :] + data.rel_offsets.astype(np.float64)
            d, p = data.diffraction[:batch], pos[:batch]
            canvas = constraint_canvas(pmodel, pos)

            def run(dtype: str):
                return predict_chunk(pmodel, d, p, canvas, batch_size=batch, precision=dtype)

            if kind == "infer":
                _, bare_forward = YARDSTICKS[impl.name](cfg, batch)
                self.a, self.b = (lambda: run(precision)), bare_forward
                self.labels = ("ours", "bare")
            elif kind == "infer_peer":
                _, peer_forward = PEERS[impl.name](n, cfg.n_channels, batch)
                self.a, self.b = (lambda: run(precision)), peer_forward
                self.labels = ("ours", "peer")
            elif kind == "bf16":
                self.a, self.b = (lambda: run("float32")), (lambda: run("bfloat16"))
                self.labels = ("float32", "bfloat16")
                f32, b16 = run("float32"), run("bfloat16")
                scale = float(np.abs(f32).max())
                self.info["bf16_max_abs_err_rel_to_max"] = float(np.abs(b16 - f32).max()) / scale
                self.info["bf16_mean_abs_err_rel_to_max"] = float(np.abs(b16 - f32).mean()) / scale
            else:
                raise ValueError(f"unknown kind {kind!r}")
        self.info["first_a_s"] = time_calls(self.a, 1)[0][0]
        self.info["first_b_s"] = time_calls(self.b, 1)[0][0]
        warm = time_calls(self.a, 1) + time_calls(self.b, 1)
        self.info["est_a_s"], self.info["est_b_s"] = warm[0][0], warm[1][0]

    def round(self, steps: int) -> dict:
        a, b = [], []
        for _ in range(steps):
            a += time_calls(self.a, 1)
            if self.b is not None:
                b += time_calls(self.b, 1)
        return {"a": a, "b": b, "load": load_snapshot(), "nonfinite": self.nonfinite}


def serve(conn, backend: str, threads: Optional[int], runtime: str = "library") -> None:
    """The worker's loop: answer ``setup``/``round``/``drop``/``exit`` messages on ``conn``."""
    cases: dict[str, Case] = {}
    try:
        impl, import_s = _configure(backend, threads, runtime)
        conn.send({"ok": True, "backend": impl.name, "framework_version": impl.version(),
                   "import_s": import_s, "threads": _threads(impl.name), "runtime": runtime})
    except BaseException as err:  # report, don't hang the parent
        conn.send({"ok": False, "error": f"{type(err).__name__}: {err}"})
        return
    while True:
        msg = conn.recv()
        op = msg.get("op")
        try:
            if op == "exit":
                conn.send({"ok": True})
                return
            if op == "setup":
                case = Case(impl, msg["kind"], msg["N"], msg["gridsize"], msg["batch"],
                            msg.get("model", {}), msg.get("precision", "float32"))
                cases[msg["key"]] = case
                conn.send({"ok": True, "labels": case.labels, "info": case.info,
                           "patterns": case.patterns})
            elif op == "round":
                conn.send({"ok": True, **cases[msg["key"]].round(int(msg["steps"]))})
            elif op == "peak":
                from benchmarks.peak import conv_peak
                conn.send({"ok": True, "peak": conv_peak(impl.name, msg["precision"])})
            elif op == "drop":
                cases.pop(msg["key"], None)
                conn.send({"ok": True})
            else:
                conn.send({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as err:  # noqa: BLE001 (sent to the parent, which reports it)
            conn.send({"ok": False, "error": f"{type(err).__name__}: {err}"})


class Worker:
    """The parent's handle on a worker process for one backend."""

    def __init__(self, backend: str, threads: Optional[int] = None, runtime: str = "library"):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.runtime = runtime
        self.proc = ctx.Process(target=serve, args=(child, backend, threads, runtime),
                                daemon=True)
        self.proc.start()
        child.close()
        self.hello = self.conn.recv()
        if not self.hello.get("ok"):
            self.proc.join(5)
            raise RuntimeError(f"{backend} worker failed to start: {self.hello.get('error')}")
        self.backend = self.hello["backend"]

    def ask(self, **msg) -> dict:
        self.conn.send(msg)
        reply = self.conn.recv()
        if not reply.get("ok"):
            raise RuntimeError(f"{self.backend} worker: {reply.get('error')}")
        return reply

    def close(self) -> None:
        try:
            self.ask(op="exit")
        except (OSError, EOFError, RuntimeError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
