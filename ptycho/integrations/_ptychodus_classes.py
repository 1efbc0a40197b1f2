"""The ptychodus reconstructor classes (imports ptychodus; use them through
:mod:`ptycho.integrations.ptychodus`, which imports this module on first use)."""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from ptychodus.api.object import Object
from ptychodus.api.product import LossValue, Product
from ptychodus.api.reconstruct import (ReconstructInput, ReconstructOutput, ReconstructorLibrary,
                                       TrainableReconstructor, TrainOutput)

from backends.registry import available_backends, canonical_name
from ptycho.config.io import load_config
from ptycho.config.schema import TrainingConfig
from ptycho.data.contract import RawData, load_npz, save_npz
from ptycho.data.scaling import normalisation_factor
from ptycho.errors import DataError
from ptycho.integrations.ptychodus import (DIFFRACTION_FILE, LIBRARY_NAME, MODEL_FILE,
                                           MODEL_FILE_EXTENSION, MODEL_FILE_FILTER, PRODUCT_FILE,
                                           RECONSTRUCTOR_NAMES, SETTINGS_GROUP, TEST_FILE,
                                           TRAIN_FILE, TRAINING_DATA_FILE_FILTER)
from ptycho.io.ptychodus_files import (ObjectFrame, raw_from_ptychodus, read_diffraction,
                                       read_product, scan_from_arrays)
from ptycho.training import EpochRecord
from ptycho.workflows import load_inference_bundle, reconstruct
from ptycho.workflows import train as train_workflow
from ptycho.workflows.model import PtychoModel


def scan_from_input(parameters: ReconstructInput) -> RawData:
    """Our scan from a ptychodus ``ReconstructInput`` (patterns already paired to positions)."""
    product = parameters.product
    obj = product.object_
    geometry = obj.get_geometry()
    frame = ObjectFrame(geometry.width_px, geometry.height_px, geometry.pixel_width_m,
                        geometry.pixel_height_m, geometry.center_x_m, geometry.center_y_m)
    probe_px = product.probes.get_pixel_geometry()
    positions = product.probe_positions
    return scan_from_arrays(parameters.diffraction_patterns, parameters.bad_pixels,
                            positions.get_coordinates_x_m(), positions.get_coordinates_y_m(),
                            product.probes.get_array(), (probe_px.width_m, probe_px.height_m),
                            obj.get_array(), frame)


def mean_photons(raw: RawData) -> float:
    """Mean photon count per pattern of ``raw`` (bad pixels counted as the measured mean)."""
    return (raw.N / 2.0) ** 2 / normalisation_factor(raw.diffraction, raw.mask) ** 2


def _losses(model: PtychoModel) -> list[LossValue]:
    history = model.history
    if history is None:
        return []
    return [LossValue(r.epoch, float(r.loss["total"])) for r in history.epochs]


class PtychoPinnReconstructor(TrainableReconstructor):
    """One backend of this library as a ptychodus ``TrainableReconstructor``."""

    def __init__(self, backend: str, library: "PtychoPinnReconstructorLibrary") -> None:
        self._backend = canonical_name(backend)
        self._library = library
        self._model: Optional[PtychoModel] = None

    @property
    def name(self) -> str:
        return RECONSTRUCTOR_NAMES[self._backend]

    @property
    def backend(self) -> str:
        """The canonical backend name (``tensorflow`` or ``torch``)."""
        return self._backend

    @property
    def model(self) -> Optional[PtychoModel]:
        """The loaded (or trained) model, or None."""
        return self._model

    def get_progress_goal(self) -> int:
        return self._library.training_config().nepochs

    # ---- reconstruct

    def _require_model(self) -> PtychoModel:
        if self._model is None:
            raise RuntimeError(f"{LIBRARY_NAME} {self.name}: no model is loaded; open a model "
                               f"bundle ({MODEL_FILE_FILTER}) or train one first")
        return self._model

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        model = self._require_model()
        raw = scan_from_input(parameters)
        obj_in = parameters.product.object_
        recon = reconstruct(model, raw, object_shape=(obj_in.height_px, obj_in.width_px))
        obj_out = Object(array=recon.obj[np.newaxis], pixel_geometry=obj_in.get_pixel_geometry(),
                         center=obj_in.get_center(), layer_spacing_m=[])
        product = Product(metadata=parameters.product.metadata,
                          probe_positions=parameters.product.probe_positions,
                          probes=parameters.product.probes, object_=obj_out,
                          losses=_losses(model))
        self._library.get_logger().info(
            f"{self.name}: reconstructed {raw.n_patterns} patterns in {recon.seconds:.3g} s")
        yield ReconstructOutput(product=product, progress=self.get_progress_goal(), status=0)

    # ---- models

    def is_model_loaded(self) -> bool:
        return self._model is not None

    def get_model_file_filter(self) -> str:
        return MODEL_FILE_FILTER

    def get_model_file_extension(self) -> str:
        return MODEL_FILE_EXTENSION

    def load_model_from_file(self, file_path: Path) -> None:
        self._model, _ = load_inference_bundle(file_path, backend=self._backend)

    def save_model(self, file_path: Path) -> None:
        self._require_model().save(file_path)

    # ---- training

    def get_training_data_file_filter(self) -> str:
        return TRAINING_DATA_FILE_FILTER

    def export_training_data(self, file_path: Path, parameters: ReconstructInput) -> None:
        save_npz(scan_from_input(parameters), file_path)

    def _training_data(self, input_path: Path) -> tuple[RawData, Optional[RawData]]:
        if input_path.is_file():
            return load_npz(input_path), None
        if not input_path.is_dir():
            raise DataError(f"{str(input_path)!r}: expected a training file or folder, but the "
                            "path is missing")
        if (input_path / TRAIN_FILE).is_file():
            test = input_path / TEST_FILE
            return (load_npz(input_path / TRAIN_FILE),
                    load_npz(test) if test.is_file() else None)
        diffraction, product = input_path / DIFFRACTION_FILE, input_path / PRODUCT_FILE
        if diffraction.is_file() and product.is_file():
            return raw_from_ptychodus(read_product(product), read_diffraction(diffraction)), None
        raise DataError(f"{str(input_path)!r}: no training data; expected {TRAIN_FILE!r} (and "
                        f"optionally {TEST_FILE!r}), or {DIFFRACTION_FILE!r} and "
                        f"{PRODUCT_FILE!r}")

    def train(self, input_path: Path, output_path: Path) -> Iterator[TrainOutput]:
        train_raw, test_raw = self._training_data(Path(input_path))
        output_path = Path(output_path)
        bundle_file = output_path if output_path.suffix == MODEL_FILE_EXTENSION else None
        out_dir = None if bundle_file else output_path
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        config = self._library.training_config(train_raw, output_dir=out_dir)
        log = self._library.get_logger()
        log.info(f"{self.name}: training N={config.model.N} for {config.nepochs} epochs on "
                 f"{train_raw.n_patterns} patterns, nphotons={config.nphotons:.4g}")
        events: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        stop = threading.Event()

        def progress(epoch: int, step: int, n_steps: int, terms) -> None:
            # ptychodus stopped: end as a Ctrl-C does (the driver keeps the last whole epoch)
            if stop.is_set():
                raise KeyboardInterrupt

        def work() -> None:
            try:
                result = train_workflow(config, train_raw, test_raw, backend=self._backend,
                                        progress=progress,
                                        on_epoch_end=lambda r: events.put(("epoch", r)))
            except BaseException as exc:   # handed to the consumer's thread, re-raised there
                events.put(("error", exc))
            else:
                events.put(("done", result))

        worker = threading.Thread(target=work, name=f"{LIBRARY_NAME}-train", daemon=True)
        worker.start()
        train_losses: list[LossValue] = []
        val_losses: list[LossValue] = []
        finished = False
        try:
            while True:
                kind, payload = events.get()
                if kind == "error":
                    finished = True
                    raise payload
                if kind == "done":
                    finished = True
                    self._finish(payload.model, bundle_file)
                    return
                record: EpochRecord = payload
                train_losses.append(LossValue(record.epoch, float(record.loss["total"])))
                if record.val_loss is not None:
                    val_losses.append(LossValue(record.epoch, float(record.val_loss["total"])))
                yield TrainOutput(training_loss=list(train_losses),
                                  validation_loss=list(val_losses), progress=record.epoch + 1)
        finally:
            if not finished:       # the consumer stopped early: stop training, keep the model
                stop.set()
            worker.join()
            while not finished and not events.empty():
                kind, payload = events.get()
                if kind == "done":
                    self._finish(payload.model, bundle_file)

    def _finish(self, model: PtychoModel, bundle_file: Optional[Path]) -> None:
        self._model = model
        if bundle_file is not None:
            model.save(bundle_file)


class PtychoPinnReconstructorLibrary(ReconstructorLibrary):
    """This library's reconstructors for ptychodus: one per installed backend.

    ``settings_registry`` (ptychodus's, optional) gets a group :data:`SETTINGS_GROUP` with
    ``ConfigFile`` (a YAML/JSON TrainingConfig; empty = ``config``) and ``NumPhotons`` (0 =
    the training data's mean photon count per pattern). ``config``: the default training
    config; ``backends``: which backends to offer (default: every installed one).
    """

    def __init__(self, settings_registry: Any = None, is_developer_mode_enabled: bool = False,
                 *, config: Optional[TrainingConfig] = None,
                 backends: Optional[list[str]] = None) -> None:
        super().__init__(f"ptycho.integrations.{LIBRARY_NAME}")
        self._config = config if config is not None else TrainingConfig()
        self._config_file = self._nphotons = None
        if settings_registry is not None:
            group = settings_registry.create_group(SETTINGS_GROUP)
            self._config_file = group.create_string_parameter("ConfigFile", "")
            self._nphotons = group.create_real_parameter("NumPhotons", 0.0, minimum=0.0)
        names = available_backends() if backends is None else [canonical_name(b) for b in backends]
        self._reconstructors = [PtychoPinnReconstructor(b, self) for b in names]
        if not self._reconstructors:
            self.get_logger().warning(f"{LIBRARY_NAME}: no backend installed (pip install "
                                      "'ptycho-pinn[torch]' or '[tensorflow]')")

    @property
    def name(self) -> str:
        return LIBRARY_NAME

    def __iter__(self) -> Iterator[PtychoPinnReconstructor]:
        return iter(self._reconstructors)

    def training_config(self, data: Optional[RawData] = None, *,
                        output_dir: Optional[Path] = None) -> TrainingConfig:
        """The config a training run uses: N from ``data``, nphotons as the settings say."""
        path = self._config_file.get_value().strip() if self._config_file is not None else ""
        config = load_config(path, TrainingConfig) if path else self._config
        if data is None:
            return config
        nphotons = self._nphotons.get_value() if self._nphotons is not None else 0.0
        if not (nphotons > 0 and math.isfinite(nphotons)):
            nphotons = mean_photons(data)
        return dataclasses.replace(
            config, model=dataclasses.replace(config.model, N=data.N), nphotons=float(nphotons),
            output_dir=None if output_dir is None else str(output_dir))

