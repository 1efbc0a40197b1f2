"""The ptychodus reconstructor library, driven with real ptychodus 1.7.0 objects: files written
by us and read by ptychodus (and back), ``ReconstructInput`` prepared by ptychodus itself, train
(2 epochs) -> reconstruct -> product on each backend, the two backends' products within the
bundle prediction bound, ptychodus's own registry and batch mode.

Tests that need ptychodus skip with a reason when it is missing (``tox -e core`` has none).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ptycho.integrations.ptychodus as integration
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.config.io import save_config
from ptycho.errors import DataError
from ptycho.simulate import simulate_dataset
from ptycho.workflows import BUNDLE_NAME

N = 16
ENERGY_EV, DISTANCE_M, DETECTOR_PX_M = 8000.0, 0.02, 75e-6
HAVE = {m: importlib.util.find_spec(m) is not None for m in ("ptychodus", "h5py")}
needs_ptychodus = pytest.mark.skipif(
    not (HAVE["ptychodus"] and HAVE["h5py"]),
    reason="ptychodus not installed (pip install 'ptycho-pinn[ptychodus]')")
BACKENDS = [pytest.param("tensorflow", marks=pytest.mark.tensorflow),
            pytest.param("torch", marks=pytest.mark.torch)]


def tiny_config(nepochs: int = 2) -> TrainingConfig:
    return TrainingConfig(model=ModelConfig(N=N, base_filters=2, n_filters_scale=1),
                          nepochs=nepochs, batch_size=16, seed=3)


def library(config=None, **kw):
    return integration.PtychoPinnReconstructorLibrary(config=config or tiny_config(), **kw)


def reconstructor(backend: str, config=None):
    lib = library(config, backends=[backend])
    (rec,) = list(lib)
    return rec


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    """A scan in ptychodus's standard layout (product.h5 + diffraction.h5), written by us."""
    from ptycho.io import ptychodus_files as pf

    folder = tmp_path_factory.mktemp("ptychodus-scan")
    raw, _ = simulate_dataset(64, N, nphotons=1e6, seed=11)
    pixel = pf.sample_pixel_size_m(ENERGY_EV, DISTANCE_M, DETECTOR_PX_M, N)
    pf.write_product(folder / integration.PRODUCT_FILE, pf.product_from_scan(
        raw, raw.object_guess, pixel_size_m=pixel, photon_energy_eV=ENERGY_EV,
        detector_distance_m=DISTANCE_M))
    bad = np.zeros((N, N), bool)
    bad[0, 0] = bad[5, 11] = True
    counts = np.rint(raw.diffraction.astype(np.float64) ** 2).astype(np.uint32)
    counts[:, bad] = 60000                                  # hot pixels: masked, never seen
    pf.write_diffraction(folder / integration.DIFFRACTION_FILE, pf.PtychodusDiffraction(
        counts, np.arange(raw.n_patterns), bad, (DETECTOR_PX_M, DETECTOR_PX_M)))
    return folder


@pytest.fixture(scope="module")
def reconstruct_input(scan_dir):
    """ptychodus reads our files and pairs patterns with positions itself."""
    from ptychodus.api.io import load_diffraction_data, load_product
    from ptychodus.api.reconstruct import prepare_reconstruct_input

    return prepare_reconstruct_input(load_diffraction_data(scan_dir / "diffraction.h5"),
                                     load_product(scan_dir / "product.h5"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, reconstruct_input):
    """Lazily: per backend, a reconstructor trained through ptychodus's API, its outputs."""
    cache: dict = {}

    def get(backend: str):
        if backend not in cache:
            folder = tmp_path_factory.mktemp(f"train-{backend}")
            rec = reconstructor(backend)
            rec.export_training_data(folder / "scan.npz", reconstruct_input)
            outputs = list(rec.train(folder / "scan.npz", folder / "out"))
            cache[backend] = {"rec": rec, "outputs": outputs, "folder": folder,
                              "bundle": folder / "out" / integration.MODEL_FILE}
        return cache[backend]
    return get


# --------------------------------------------------------------------------------------------
# without ptychodus


def test_importing_the_integration_imports_neither_ptychodus_nor_a_framework():
    code = textwrap.dedent("""
        import sys
        import ptycho.integrations.ptychodus, ptycho.io.ptychodus_files
        print(sorted(m for m in ('ptychodus', 'h5py', 'tensorflow', 'torch', 'backends',
                                 'ptycho.workflows') if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_ptychodus_names_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(integration, "ptychodus_available", lambda: False)
    with pytest.raises(ImportError, match=r"needs ptychodus.*pip install 'ptycho-pinn\[ptychodus\]'"):
        integration.PtychoPinnReconstructorLibrary  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        integration.Nope  # noqa: B018
    assert integration.main(["--version"]) == 2
    assert "pip install 'ptycho-pinn[ptychodus]'" in capsys.readouterr().err


def test_our_model_file_is_ptychodus_model_basename_plus_extension():
    assert integration.MODEL_FILE == BUNDLE_NAME == "model" + integration.MODEL_FILE_EXTENSION


# --------------------------------------------------------------------------------------------
# registration


@needs_ptychodus
@pytest.mark.slow      # importing ptychodus's processing model takes seconds
def test_library_offers_one_trainable_reconstructor_per_backend():
    from ptychodus.api.parameters import StringParameter
    from ptychodus.api.reconstruct import TrainableReconstructor
    from ptychodus.model.processing.api import ProcessingAlgorithmParameter

    lib = library(backends=["tensorflow", "torch"])
    assert lib.name == "ptycho-pinn"
    assert [r.name for r in lib] == ["TensorFlow", "PyTorch"]
    assert all(isinstance(r, TrainableReconstructor) for r in lib)   # every abstract method
    param = ProcessingAlgorithmParameter(StringParameter("ptycho-pinn_pytorch", None), [lib])
    assert sorted(param.available_reconstructors()) == ["ptycho-pinn_pytorch",
                                                        "ptycho-pinn_tensorflow"]
    assert param.get_current_reconstructor().name == "PyTorch"
    assert param.split_key("ptycho-pinn_tensorflow") == ("ptycho-pinn", "tensorflow")
    rec = param.get_current_reconstructor()
    assert (rec.get_model_file_extension(), rec.get_model_file_filter(),
            rec.get_training_data_file_filter(), rec.get_progress_goal()) == \
        (".zip", "ptycho-pinn Model Bundles (*.zip)", "ptycho-pinn Scans (*.npz)", 2)


@needs_ptychodus
def test_settings_pick_the_config_file_and_the_photon_count(tmp_path, reconstruct_input):
    from ptychodus.api.settings import SettingsRegistry

    from ptycho.integrations._ptychodus_classes import mean_photons, scan_from_input

    registry = SettingsRegistry()
    lib = integration.PtychoPinnReconstructorLibrary(registry, backends=["torch"])
    group = registry[integration.SETTINGS_GROUP]
    raw = scan_from_input(reconstruct_input)
    cfg = lib.training_config(raw)
    assert cfg.model.N == N and cfg.nphotons == pytest.approx(mean_photons(raw))
    assert cfg.nphotons == pytest.approx(1e6, rel=0.05)          # the simulated photon count
    save_config(tiny_config(nepochs=7), tmp_path / "tiny.yaml")
    group.parameters()["ConfigFile"].set_value(str(tmp_path / "tiny.yaml"))
    group.parameters()["NumPhotons"].set_value(2.5e5)
    cfg = lib.training_config(raw, output_dir=tmp_path)
    assert (cfg.nepochs, cfg.model.base_filters, cfg.nphotons, cfg.output_dir) == \
        (7, 2, 2.5e5, str(tmp_path))
    assert next(iter(lib)).get_progress_goal() == 7


@needs_ptychodus
def test_input_conversion_masks_bad_pixels_and_keeps_the_geometry(reconstruct_input):
    from ptycho.integrations._ptychodus_classes import scan_from_input

    raw = scan_from_input(reconstruct_input)
    assert raw.n_patterns == 64 and raw.N == N
    assert raw.mask.shape == (N, N) and not raw.mask[0, 0] and not raw.mask[5, 11]
    assert raw.mask.sum() == N * N - 2
    truth, _ = simulate_dataset(64, N, nphotons=1e6, seed=11)
    assert np.allclose(raw.xcoords, truth.xcoords, rtol=0, atol=1e-9)
    assert np.allclose(raw.ycoords, truth.ycoords, rtol=0, atol=1e-9)
    good = raw.mask
    assert np.allclose(raw.diffraction[:, good], truth.diffraction[:, good], rtol=0, atol=0.5 / 20)


# --------------------------------------------------------------------------------------------
# train -> reconstruct -> product, through ptychodus's API


@needs_ptychodus
def test_reconstruct_without_a_model_says_what_to_do(reconstruct_input):
    rec = reconstructor("torch")
    assert not rec.is_model_loaded()
    with pytest.raises(RuntimeError, match=r"no model is loaded; open a model bundle"):
        next(rec.reconstruct(reconstruct_input))


@needs_ptychodus
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_two_epochs_then_reconstruct_a_product(backend, trained, reconstruct_input,
                                                     tmp_path):
    from ptychodus.api.io import load_product, save_product
    from ptychodus.api.reconstruct import ReconstructOutput, TrainOutput

    from ptycho.io.ptychodus_files import read_product

    run = trained(backend)
    rec, outputs = run["rec"], run["outputs"]
    assert [type(o) for o in outputs] == [TrainOutput, TrainOutput]
    assert [o.progress for o in outputs] == [1, 2]
    losses = [loss.value for loss in outputs[-1].training_loss]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert run["bundle"].is_file() and rec.is_model_loaded()
    assert rec.model.config.nepochs == 2 and rec.model.backend == backend

    (result,) = list(rec.reconstruct(reconstruct_input))
    assert isinstance(result, ReconstructOutput) and result.progress == 2
    obj_in, obj_out = reconstruct_input.product.object_, result.product.object_
    assert obj_out.get_array().shape == (1, obj_in.height_px, obj_in.width_px)
    assert obj_out.get_geometry() == obj_in.get_geometry()
    assert np.count_nonzero(obj_out.get_array()) > 0.5 * obj_out.get_array().size
    assert [loss.value for loss in result.product.losses] == losses
    assert result.product.probe_positions is reconstruct_input.product.probe_positions

    save_product(tmp_path / "product.h5", result.product)        # ptychodus writes it ...
    back = read_product(tmp_path / "product.h5")                 # ... and we read it
    assert np.array_equal(back.object[0], obj_out.get_array()[0])
    assert np.allclose(back.loss_values, losses)
    assert load_product(tmp_path / "product.h5").object_.get_geometry() == obj_in.get_geometry()

    other = tmp_path / "saved.zip"
    rec.save_model(other)
    fresh = reconstructor(backend)
    fresh.load_model_from_file(other)
    (again,) = list(fresh.reconstruct(reconstruct_input))
    assert np.array_equal(again.product.object_.get_array(), obj_out.get_array())


@needs_ptychodus
@pytest.mark.slow
@pytest.mark.parity
def test_both_backends_reconstruct_the_same_product_from_one_bundle(trained, reconstruct_input):
    """A bundle trained in TensorFlow, opened by both reconstructors: objects within the
    tolerance table's bundle prediction bound."""
    from parity.compare import compare_arrays
    from parity.tolerances import tolerance

    bundle = trained("tensorflow")["bundle"]
    objects = {}
    for backend in ("tensorflow", "torch"):
        rec = reconstructor(backend)
        rec.load_model_from_file(bundle)
        (out,) = list(rec.reconstruct(reconstruct_input))
        objects[backend] = out.product.object_.get_array()
    diff = compare_arrays(objects["torch"], objects["tensorflow"], tolerance("bundle.predict"),
                          name="object")
    assert diff.ok, diff.summary()
    assert diff.max_abs > 0 or np.array_equal(objects["torch"], objects["tensorflow"])


@needs_ptychodus
@pytest.mark.slow
@pytest.mark.torch
def test_training_folders_and_stopping(scan_dir, reconstruct_input, tmp_path):
    from ptycho.data import save_npz
    from ptycho.integrations._ptychodus_classes import scan_from_input

    raw = scan_from_input(reconstruct_input)
    folder = tmp_path / "data"
    folder.mkdir()
    save_npz(raw.subset(np.arange(48)), folder / integration.TRAIN_FILE)
    save_npz(raw.subset(np.arange(48, 64)), folder / integration.TEST_FILE)
    rec = reconstructor("torch", tiny_config(nepochs=1))
    (out,) = list(rec.train(folder, tmp_path / "model.zip"))      # a .zip: exactly that file
    assert len(out.validation_loss) == 1 and (tmp_path / "model.zip").is_file()
    (out,) = list(rec.train(scan_dir, tmp_path / "out2"))          # ptychodus's layout
    assert (tmp_path / "out2" / integration.MODEL_FILE).is_file()
    with pytest.raises(DataError, match=r"no training data; expected 'train_data.npz'"):
        next(rec.train(tmp_path / "out2", tmp_path / "out3"))

    # ptychodus stops a run by closing the generator: training ends, the model is kept
    rec = reconstructor("torch", tiny_config(nepochs=50))
    run = rec.train(scan_dir, tmp_path / "stopped")
    first = next(run)
    run.close()
    assert first.progress == 1 and rec.is_model_loaded()
    history = rec.model.history
    assert history.interrupted and 1 <= len(history.epochs) < 50


@needs_ptychodus
@pytest.mark.slow
@pytest.mark.torch
def test_ptychodus_batch_mode_trains_and_reconstructs_with_the_library(scan_dir, tmp_path,
                                                                      monkeypatch):
    """The documented ways in (docs/ptychodus.md): ``python -m ptycho.integrations.ptychodus``
    trains in ptychodus's batch mode; in-process, ptychodus's registry lists the library and its
    batch mode reconstructs with the trained model."""
    import os
    import shutil

    import ptychodus.model.core as core

    from ptycho.io.ptychodus_files import read_product

    monkeypatch.setenv("HOME", str(tmp_path))        # ptychodus reads ~/.ptychodus
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(scan_dir, inp)
    save_config(tiny_config(), tmp_path / "tiny.yaml")
    (inp / "settings.ini").write_text(
        f"[Processing]\nAlgorithm = ptycho-pinn_pytorch\n\n[{integration.SETTINGS_GROUP}]\n"
        f"ConfigFile = {tmp_path / 'tiny.yaml'}\nNumPhotons = 0\n")
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "ptycho.integrations.ptychodus", "-b", "train",
                          "-i", str(inp), "-o", str(out)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "PyTorch: training N=16 for 2 epochs on 64 patterns" in run.stdout + run.stderr
    assert (out / integration.MODEL_FILE).is_file()

    shutil.copy(out / integration.MODEL_FILE, inp / integration.MODEL_FILE)
    monkeypatch.setattr(core, "ProcessingCore",
                        integration.processing_core_with_library(core.ProcessingCore))
    with core.ModelCore() as model:
        keys = list(model.processing_core.processing_api.available_reconstructors())
        assert {"ptycho-pinn_tensorflow", "ptycho-pinn_pytorch"} <= set(keys)
        assert model.batch_mode_execute("reconstruct", inp, out) == 0
    (written,) = sorted(out.glob("product*.h5"))     # ptychodus names it after the progress
    assert written.name == "product.000002.h5"
    product = read_product(written)
    assert product.object.shape[-2:] == read_product(inp / "product.h5").object.shape[-2:]
    assert np.count_nonzero(product.object) > 0
