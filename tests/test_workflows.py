"""Workflows on real backends: run_cdi_example persists a run, bundles reload bit-exactly,
cross-backend loading predicts the same patches, and a killed save leaves a loadable bundle.

Tiny networks (N=16, base_filters 2) trained for two epochs: what is tested is the plumbing
(persistence, exact reloads, ordering of the legacy-dictionary update), not image quality.
Each backend trains once per module (and per xdist worker); the tests read that run.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptycho.bundle import read_bundle, weight_payload_digest
from ptycho.config import ModelConfig, TrainingConfig, config_from_legacy, new_legacy_dict
from ptycho.simulate import simulate_dataset
from ptycho.workflows import (BUNDLE_NAME, load_inference_bundle, reconstruct, run_cdi_example)
from ptycho.workflows.model import inference_batch_size

REPO = Path(__file__).resolve().parents[1]
N = 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

BACKENDS = [pytest.param("tensorflow", marks=pytest.mark.tensorflow),
            pytest.param("torch", marks=pytest.mark.torch)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for torch: xdist already runs one worker per core, and two threads
    on a shared core are many times slower than one (OpenMP workers wait for each other)."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(output_dir=None, **kw) -> TrainingConfig:
    base = dict(model=ModelConfig(N=N, base_filters=2, n_filters_scale=1), nepochs=2,
                batch_size=16, nphotons=1e6, seed=3, output_dir=output_dir)
    base.update(kw)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def datasets():
    train, _ = simulate_dataset(64, N, nphotons=1e6, seed=11)
    test, _ = simulate_dataset(36, N, nphotons=1e6, seed=12)
    return train, test


@pytest.fixture(scope="module")
def runs(tmp_path_factory, datasets):
    """Lazily trained runs, one per backend, shared by every test of the module."""
    cache: dict = {}

    def get(backend: str):
        if backend not in cache:
            out = tmp_path_factory.mktemp(f"run-{backend}")
            train, test = datasets
            amp, phase, results = run_cdi_example(train, test, tiny_config(str(out)),
                                                  backend=backend)
            cache[backend] = {"dir": out, "amplitude": amp, "phase": phase, **results}
        return cache[backend]
    return get


@pytest.fixture(params=BACKENDS)
def run(request, runs):
    return request.param, runs(request.param)


def test_run_cdi_example_persists_bundle_reconstruction_and_figures(run):
    backend, r = run
    names = sorted(os.listdir(r["dir"]))
    assert names == ["comparison.png", "loss.png", BUNDLE_NAME, "reconstruction.npz",
                     "reconstruction.png"]
    for name in ("comparison.png", "loss.png", "reconstruction.png"):
        data = (r["dir"] / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
    with np.load(r["dir"] / "reconstruction.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["obj"], r["reconstruction"].obj)
        np.testing.assert_array_equal(z["amplitude"], r["amplitude"].astype(np.float32))
        np.testing.assert_array_equal(z["phase"], r["phase"].astype(np.float32))
        assert z["obj"].dtype == np.complex64 and z["positions"].shape[-1] == 2
        assert z["coverage"].max() > 0
    contents = read_bundle(r["dir"] / BUNDLE_NAME)
    assert contents.backend == backend
    assert contents.config == tiny_config(str(r["dir"]))
    assert len(contents.history.epochs) == 2
    assert r["paths"]["bundle"] == str(r["dir"] / BUNDLE_NAME)
    # ground truth was known: the metrics exist and are numbers
    m = r["metrics"]
    assert m is not None and np.isfinite(m["amplitude"]["mae"]) and np.isfinite(m["phase"]["mae"])


def test_run_cdi_example_without_output_dir_writes_nothing(datasets, tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="torch not installed (pip install 'ptycho-pinn[torch]')")
    monkeypatch.chdir(tmp_path)
    train, _ = datasets
    _, _, results = run_cdi_example(train.subset(np.arange(16)), None,
                                    tiny_config(nepochs=1), backend="torch")
    assert results["paths"] == {} and os.listdir(tmp_path) == []
    assert results["reconstruction"].obj.shape == train.object_guess.shape


def test_loaded_bundle_predicts_bit_equal(run):
    backend, r = run
    trained = r["train_result"].model
    diffraction = r["train_result"].test_data.diffraction
    loaded, config = load_inference_bundle(r["dir"] / BUNDLE_NAME, backend=backend)
    assert loaded.backend == backend and config == trained.config
    for name, w in trained.get_weights().items():
        np.testing.assert_array_equal(loaded.get_weights()[name], w, err_msg=name)
    expected = trained.predict(diffraction)
    got = loaded.predict(diffraction)
    assert got.dtype == np.complex64 and got.shape == diffraction.shape
    np.testing.assert_array_equal(got, expected)
    assert np.abs(expected).max() > 0        # not trivially equal
    assert loaded.history.losses() == r["train_result"].history.losses()


def test_loaded_bundle_reconstructs_exactly_what_the_run_saved(run, datasets):
    backend, r = run
    loaded, _ = load_inference_bundle(r["dir"] / BUNDLE_NAME, backend=backend)
    recon = reconstruct(loaded, datasets[1])
    np.testing.assert_array_equal(recon.obj, r["reconstruction"].obj)


def test_legacy_dict_is_restored_before_the_model_is_built(run, monkeypatch):
    backend, r = run
    import backends
    import ptycho.workflows.inference as inference

    legacy = new_legacy_dict()
    legacy.update({"N": 999, "nepochs": 12345, "not_ours": "kept"})
    seen = {}
    real_get_backend = backends.get_backend

    class Spy:
        def __init__(self, impl):
            self.impl = impl

        def build_model(self, config, weights):
            seen["legacy_at_build"] = dict(legacy)
            return self.impl.build_model(config, weights)

    monkeypatch.setattr(inference, "get_backend", lambda name=None: Spy(real_get_backend(name)))
    model, config = load_inference_bundle(r["dir"] / BUNDLE_NAME, backend=backend,
                                          legacy_dict=legacy)
    at_build = seen["legacy_at_build"]
    assert at_build["N"] == N and at_build["nepochs"] == 2 and at_build["not_ours"] == "kept"
    assert at_build["gridsize"] == 1 and at_build["nphotons"] == 1e6
    assert config_from_legacy(legacy) == config
    assert model.model_config.N == N


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_save_load_save_gives_byte_identical_weights(run, tmp_path):
    backend, r = run
    first = r["dir"] / BUNDLE_NAME
    loaded, _ = load_inference_bundle(first, backend=backend)
    second = tmp_path / "again.zip"
    loaded.save(second)
    a, b = _members(first), _members(second)
    weights = sorted(m for m in a if m.startswith("weights/"))
    assert weights and weights == sorted(m for m in b if m.startswith("weights/"))
    for m in weights:
        assert a[m] == b[m], m
    assert weight_payload_digest(first) == weight_payload_digest(second)
    # same backend, same config and history: the whole file is identical too
    assert first.read_bytes() == second.read_bytes()


def _bundle_predict_tolerance():
    """``bundle.predict`` of the parity table: B predicting with A's bundled weights vs A."""
    from parity.tolerances import tolerance

    return tolerance("bundle.predict")


@pytest.mark.parity
@pytest.mark.parametrize("writer,reader", [("tensorflow", "torch"), ("torch", "tensorflow")])
def test_bundle_written_by_one_backend_predicts_the_same_in_the_other(runs, writer, reader):
    from parity.compare import compare_arrays

    r = runs(writer)
    trained = r["train_result"].model
    diffraction = r["train_result"].test_data.diffraction
    loaded, _ = load_inference_bundle(r["dir"] / BUNDLE_NAME, backend=reader)
    assert loaded.backend == reader
    for name, w in trained.get_weights().items():          # weights cross exactly
        np.testing.assert_array_equal(loaded.get_weights()[name], w, err_msg=name)
    expected = trained.predict(diffraction)
    got = loaded.predict(diffraction)
    tol = _bundle_predict_tolerance()
    diff = compare_arrays(got, expected, tol, name=f"{writer}->{reader} patches")
    assert diff.ok, diff.summary()
    obj = reconstruct(loaded, r["train_result"].test_data).obj
    ref = reconstruct(trained, r["train_result"].test_data).obj
    diff = compare_arrays(obj, ref, tol, name=f"{writer}->{reader} object")
    assert diff.ok, diff.summary()


@pytest.mark.torch
def test_sigkill_while_training_leaves_a_loadable_bundle(tmp_path, datasets):
    """A training run rewrites model.zip after every epoch; SIGKILL it while it does so."""
    data = tmp_path / "train.npz"
    from ptycho.data.contract import save_npz

    save_npz(datasets[0].subset(np.arange(16)), data)
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        from ptycho.config import ModelConfig, TrainingConfig
        from ptycho.data.contract import load_npz
        from ptycho.workflows import train
        cfg = TrainingConfig(model=ModelConfig(N={N}, base_filters=2, n_filters_scale=1),
                             nepochs=100000, batch_size=16, nphotons=1e6,
                             output_dir={str(out)!r})
        print("start", flush=True)
        train(cfg, load_npz({str(data)!r}), backend="torch")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        bundle = out / BUNDLE_NAME
        while not bundle.exists():
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "no bundle after 60 s"
            time.sleep(0.01)
        time.sleep(0.5)                       # many more epochs (and saves) happen meanwhile
        assert child.poll() is None, child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    contents = read_bundle(bundle)             # verified: checksums, config, weight spec
    assert len(contents.history.epochs) >= 1
    model, _ = load_inference_bundle(bundle, backend="torch")
    assert model.predict(np.ones((1, 1, N, N), np.float32)).shape == (1, 1, N, N)
    # whatever the kill left behind is a hidden temporary, never a second dataset or bundle
    assert [p.name for p in out.iterdir() if not p.name.startswith(".tmp-")] == [BUNDLE_NAME]


def test_evaluate_against_truth_scores_only_the_well_lit_region():
    from ptycho.metrics import METRIC_COVERAGE_THRESHOLD, compare_objects
    from ptycho.simulate import grf_object
    from ptycho.workflows.cdi import evaluate_against_truth
    from ptycho.workflows.reconstruct import Reconstruction

    rng = np.random.default_rng(3)
    truth = grf_object((64, 64), rng)
    obj = truth.copy()
    obj[:8] = 5.0 * np.exp(2j)                 # garbage where only the probe's tails reached
    coverage = np.full((64, 64), 1e-7)
    coverage[8:60, 4:60] = 1.0
    recon = Reconstruction(obj=obj, coverage=coverage, positions=np.zeros((1, 1, 2)),
                           patches=None, seconds=0.0, n_patterns=1)
    m = evaluate_against_truth(recon, truth)
    assert m["region"] == (8, 60, 4, 60) and m["coverage_threshold"] == METRIC_COVERAGE_THRESHOLD
    assert m["amplitude"]["ssim"] == 1.0 and m["phase"]["ssim"] == 1.0
    whole = compare_objects(obj, truth)      # what scoring every pixel with coverage > 0 gave
    assert whole["amplitude"]["ssim"] < 0.9


class _PerPatternStandIn:
    """A backend model whose patch is a function of its own pattern only (as a per-pattern
    network's is), counting the patterns it is asked for."""

    backend_name = "numpy"

    def __init__(self, n: int):
        self.predicted, self.batch_sizes = 0, set()
        self.probe = np.ones((n, n), np.complex64)

    def get_weights(self, names=None):   # its one entry, whatever is asked
        return {"probe": self.probe}

    def predict(self, diffraction, batch_size=64, precision="float32"):
        self.predicted += diffraction.shape[0] * diffraction.shape[1]
        self.batch_sizes.add(batch_size)
        total = diffraction.sum(axis=(-1, -2), keepdims=True)
        return (np.sqrt(diffraction) * np.exp(1j * total / 1e3)).astype(np.complex64)


@pytest.mark.parametrize("per_pattern", [True, False])
def test_a_per_pattern_network_runs_once_per_distinct_pattern(per_pattern):
    """At gridsize 2 each pattern is in about four groups; a per-pattern network's patch is
    the same in each, so reconstruct predicts it once and hands it to every group: the same
    object as predicting every member, with about four times fewer patterns through the
    network. A grouped network (whose patch depends on its group) predicts every member."""
    from ptycho.workflows.model import PtychoModel
    from ptycho.workflows.reconstruct import plan_reconstruction, predict_chunk

    raw, _ = simulate_dataset(49, 16, nphotons=1e4, seed=3, scan="jitter")
    cfg = TrainingConfig(model=ModelConfig(N=16, gridsize=2, object_big=False,
                                           per_pattern_network=per_pattern), nphotons=1e4)
    plan = plan_reconstruction(cfg, raw)
    model = PtychoModel(_PerPatternStandIn(16), cfg)
    every = predict_chunk(model, plan.read(slice(None)), plan.positions, None)
    members = every.shape[0] * 4                          # 49 groups of 4, 49 distinct patterns
    for chunk, most in ((1024, 49 + 3), (20, members / 2)):   # dedup within each chunk
        stand_in = _PerPatternStandIn(16)
        model = PtychoModel(stand_in, cfg)
        rec = reconstruct(model, raw, keep_patches=True, chunk_groups=chunk)
        assert stand_in.predicted <= (most if per_pattern else members) \
            and stand_in.predicted >= (49 if per_pattern else members)
        np.testing.assert_array_equal(rec.patches, every)
        assert stand_in.batch_sizes == {inference_batch_size(cfg)}


def test_reconstruct_predicts_in_inference_batches_not_training_batches():
    """Without a batch_size, reconstruct predicts about 64 patterns of 64 x 64 a call (more
    groups than the training batch of 16 at gridsize 1), and a given batch_size wins."""
    from ptycho.workflows.model import PtychoModel

    raw, _ = simulate_dataset(49, 16, nphotons=1e4, seed=3)
    cfg = TrainingConfig(model=ModelConfig(N=16), nphotons=1e4, batch_size=16)
    assert inference_batch_size(cfg) == 64 * 64 * 64 // 16 ** 2
    for given, want in ((None, inference_batch_size(cfg)), (8, 8)):
        stand_in = _PerPatternStandIn(16)
        reconstruct(PtychoModel(stand_in, cfg), raw, batch_size=given)
        assert stand_in.batch_sizes == {want}


@pytest.mark.parametrize("gridsize", [1, 2])
def test_reconstruct_with_a_spacing_predicts_only_the_sparse_subset(gridsize):
    """``spacing``: the network sees only the points :func:`sparse_scan` keeps (at gridsize 2
    grouped among themselves), the object has the whole scan's shape and no hole where the
    whole scan's stitch has none, and the diffraction keeps the whole scan's scale."""
    from ptycho.data.grouping import group_data
    from ptycho.stitching import make_window, sparse_scan
    from ptycho.workflows.model import PtychoModel
    from ptycho.workflows.reconstruct import plan_reconstruction

    raw, _ = simulate_dataset(81, 16, nphotons=1e4, seed=3)     # a 9 x 9 raster
    cfg = TrainingConfig(model=ModelConfig(N=16, gridsize=gridsize, object_big=False),
                         nphotons=1e4)
    xy = np.stack([raw.xcoords, raw.ycoords], axis=1)
    step = np.diff(np.unique(raw.xcoords)).min()
    kept = sparse_scan(xy, 2 * step, make_window(16))
    assert 20 <= len(kept) <= 30
    whole, sparse = (reconstruct(PtychoModel(_PerPatternStandIn(16), cfg), raw, spacing=s)
                     for s in (None, 2 * step))
    assert whole.n_patterns == 81 and sparse.n_patterns == len(kept)
    assert sparse.obj.shape == whole.obj.shape
    np.testing.assert_array_equal(sparse.coverage > 0, whole.coverage > 0)
    plan = plan_reconstruction(cfg, raw, spacing=2 * step, window=make_window(16))
    assert set(np.unique(plan.indices)) == set(kept.tolist())
    with pytest.raises(ValueError, match="spacing needs the stitching window"):
        plan_reconstruction(cfg, raw, spacing=2 * step)
    # each kept pattern read with the whole scan's scale
    full = plan_reconstruction(cfg, raw)
    n = full.read(slice(None)).shape[-1]
    scaled = dict(zip(full.indices.reshape(-1).tolist(), full.read(slice(None)).reshape(-1, n, n)))
    for i, row in zip(plan.indices.reshape(-1).tolist(), plan.read(slice(None)).reshape(-1, n, n)):
        np.testing.assert_array_equal(row, scaled[i])
    with pytest.raises(ValueError, match="spacing needs a RawData scan"):
        reconstruct(PtychoModel(_PerPatternStandIn(16), cfg),
                    group_data(raw, cfg.model, cfg.nphotons), spacing=2 * step)


def test_refinement_after_a_sparse_pass_starts_from_it_and_sees_every_pattern(monkeypatch):
    """``spacing`` with ``refine``: refinement starts from the sparse pass's object and fits
    the whole scan (the fast path of benchmarks/README.md, 'Refinement from a sparse
    pass')."""
    import importlib

    from ptycho.workflows.model import PtychoModel

    module = importlib.import_module("ptycho.workflows.reconstruct")
    raw, _ = simulate_dataset(81, 16, nphotons=1e4, seed=3)
    cfg = TrainingConfig(model=ModelConfig(N=16), nphotons=1e4)
    step = np.diff(np.unique(raw.xcoords)).min()
    seen = []

    def fake_refine(model, obj, data, iterations, **kwargs):
        positions, read, _ = module.refine_patterns(model, data)
        seen.append((obj.copy(), len(positions), read(np.arange(len(positions))).shape))
        return {"obj": obj + 1, "nll": [0.0] * iterations}

    monkeypatch.setattr(module, "refine_object", fake_refine)
    stand_in = _PerPatternStandIn(16)
    rec = reconstruct(PtychoModel(stand_in, cfg), raw, spacing=3 * step, refine=2)
    sparse = reconstruct(PtychoModel(_PerPatternStandIn(16), cfg), raw, spacing=3 * step)
    (start, n_positions, shape), = seen
    assert stand_in.predicted == sparse.n_patterns < 81
    np.testing.assert_array_equal(start, sparse.obj)
    np.testing.assert_array_equal(rec.network_obj, sparse.obj)
    np.testing.assert_array_equal(rec.obj, sparse.obj + 1)
    assert n_positions == 81 and shape == (81, 16, 16)


def test_options_beside_a_plan_must_be_the_plans_own():
    """A plan fixes the points, batches, chunks and object shape; an option passed beside
    it that says otherwise is an error naming it, not silently overruled by the plan (a
    dense plan with ``spacing=18`` would have predicted every point)."""
    from ptycho.workflows.model import PtychoModel
    from ptycho.workflows.reconstruct import plan_reconstruction, stitch_window

    raw, _ = simulate_dataset(81, 16, nphotons=1e4, seed=3)
    cfg = TrainingConfig(model=ModelConfig(N=16), nphotons=1e4)
    step = np.diff(np.unique(raw.xcoords)).min()
    model = PtychoModel(_PerPatternStandIn(16), cfg)
    sparse = plan_reconstruction(cfg, raw, spacing=3 * step, window=stitch_window(model),
                                 batch_size=8, chunk_groups=20)
    assert sparse.spacing == 3 * step
    for wrong in ({"spacing": 2 * step}, {"batch_size": 16}, {"chunk_groups": 10},
                  {"object_shape": tuple(s + 1 for s in sparse.object_shape)}):
        (name, value), = wrong.items()
        with pytest.raises(ValueError, match=f"{name}=.*disagrees with the plan's {name}"):
            reconstruct(model, raw, plan=sparse, **wrong)
    dense = plan_reconstruction(cfg, raw)
    with pytest.raises(ValueError, match="spacing=.*disagrees with the plan's spacing=None"):
        reconstruct(model, raw, plan=dense, spacing=3 * step)
    same = dict(spacing=3 * step, batch_size=8, chunk_groups=20, object_shape=sparse.object_shape)
    rec = reconstruct(model, raw, plan=sparse, **same)
    np.testing.assert_array_equal(rec.obj, reconstruct(model, raw, plan=sparse).obj)
    assert rec.n_patterns == len(np.unique(sparse.indices)) < 81


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_starts_from_initial_weights_checked_first(backend, datasets, tmp_path):
    from ptycho.errors import WeightsError
    from ptycho.weights import init_weights, network_weight_spec
    from ptycho.workflows import train

    config = tiny_config(nepochs=1)
    seeded = init_weights(config.model, config.seed, np.ones((N, N), np.complex64), 0.0)
    network = {k: seeded[k] for k in network_weight_spec(config.model)}
    plain = train(config, datasets[0], backend=backend)
    same = train(config, datasets[0], backend=backend, initial_weights=network)
    assert same.history.losses() == plain.history.losses()
    final, again = plain.model.get_weights(), same.model.get_weights()
    assert all(final[k].tobytes() == again[k].tobytes() for k in final)
    zeroed = train(config, datasets[0], backend=backend,
                   initial_weights={"amp.head.kernel": np.zeros_like(network["amp.head.kernel"])})
    assert zeroed.history.losses() != plain.history.losses()
    out = tmp_path / "run"
    bad = network["enc0.conv1.kernel"].astype(np.float64)
    with pytest.raises(WeightsError, match="enc0.conv1.kernel"):
        train(tiny_config(str(out)), datasets[0], backend=backend,
              initial_weights={"enc0.conv1.kernel": bad})
    assert not (out / BUNDLE_NAME).exists()
