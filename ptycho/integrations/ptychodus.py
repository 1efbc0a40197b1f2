"""This library as a ptychodus reconstructor library (ptychodus 1.7.0, ``ptychodus.api.reconstruct``).

``PtychoPinnReconstructorLibrary(settings_registry, is_developer_mode_enabled)`` offers one
``TrainableReconstructor`` per installed backend, named ``TensorFlow`` and ``PyTorch``
(ptychodus lists them as ``ptycho-pinn_tensorflow`` and ``ptycho-pinn_pytorch``). How to add
the library to a ptychodus installation: ``docs/ptychodus.md``.

ptychodus is imported only when one of those classes is first used (this module's
``__getattr__``), so importing this module needs no ptychodus; using it without ptychodus is an
``ImportError`` naming the extra to install.

``python -m ptycho.integrations.ptychodus [ptychodus options]`` runs ptychodus (its own command
line: the GUI, or ``-b train|reconstruct -i IN -o OUT``) with this library registered.

What each method does (``ptychodus.api.reconstruct.TrainableReconstructor``):

* ``reconstruct(ReconstructInput)``: the loaded model reconstructs the patterns (counts ->
  amplitudes, bad pixels masked, positions in metres -> object pixels of the input product's
  object, see :mod:`ptycho.io.ptychodus_files`); yields one ``ReconstructOutput`` whose product
  is the input product with the reconstructed object (same pixel size and centre) and the
  model's per-epoch training losses. The probe and positions are passed through.
* ``load_model_from_file`` / ``save_model``: our model bundle (``.zip``, any backend's).
* ``export_training_data(path, ReconstructInput)``: the scan as our NPZ (with its mask).
* ``train(input_path, output_path)``: trains on ``input_path`` (an exported NPZ; or a folder
  holding ``train_data.npz`` and optionally ``test_data.npz``; or a folder in ptychodus's
  standard layout, ``diffraction.h5`` + ``product.h5``), writes ``model.zip`` into the
  ``output_path`` folder after every epoch (or to ``output_path`` itself when it ends in
  ``.zip``), yields a ``TrainOutput`` per epoch (training and validation losses so far,
  progress = epochs done), and keeps the trained model loaded. Training runs in a worker
  thread; closing the generator (ptychodus's stop) ends it after the current step, keeping
  the last completed epoch.

The training config is the library's ``config`` (default :class:`TrainingConfig`), or the
file named by the ``ConfigFile`` setting; N always follows the data, and ``nphotons`` is the
``NumPhotons`` setting, or when that is 0 (default) the mean photon count per pattern of the
training data (ptychodus hands over raw counts).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, Optional, Sequence

#: The library's name in ptychodus (the part of a reconstructor key before the first '_').
LIBRARY_NAME = "ptycho-pinn"
#: The reconstructor name for each backend.
RECONSTRUCTOR_NAMES = {"tensorflow": "TensorFlow", "torch": "PyTorch"}
MODEL_FILE_EXTENSION = ".zip"
MODEL_FILE_FILTER = "ptycho-pinn Model Bundles (*.zip)"
TRAINING_DATA_FILE_FILTER = "ptycho-pinn Scans (*.npz)"
#: Files :meth:`train` looks for in a folder (ptychodus's PtychoPINN convention).
TRAIN_FILE, TEST_FILE = "train_data.npz", "test_data.npz"
#: ptychodus's standard layout (``ptychodus.api.io.StandardFileLayout``).
DIFFRACTION_FILE, PRODUCT_FILE = "diffraction.h5", "product.h5"
#: The bundle written into an output folder (ptychodus's ``model`` + our extension).
MODEL_FILE = "model" + MODEL_FILE_EXTENSION
#: The settings group this library adds to ptychodus's settings (a section of settings.ini).
SETTINGS_GROUP = "PtychoPINNMultiBackend"

_PUBLIC = ("PtychoPinnReconstructor", "PtychoPinnReconstructorLibrary")


def ptychodus_available() -> bool:
    """Whether ptychodus is installed (without importing it)."""
    return importlib.util.find_spec("ptychodus") is not None


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        if not ptychodus_available():
            raise ImportError(f"{name} needs ptychodus, which is not installed; install it "
                              "with: pip install 'ptycho-pinn[ptychodus]'")
        return getattr(importlib.import_module("ptycho.integrations._ptychodus_classes"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_PUBLIC))


def processing_core_with_library(processing_core: type) -> type:
    """ptychodus's ``ProcessingCore`` class with this library appended to its libraries.

    ptychodus 1.7.0 has no plug-in point for reconstructor libraries: ``ModelCore.__init__``
    builds each one and hands the list to ``ProcessingCore``. Replacing
    ``ptychodus.model.core.ProcessingCore`` by this subclass before a ``ModelCore`` is built
    registers the library without editing ptychodus (what :func:`main` does).
    """
    class ProcessingCoreWithPtychoPinn(processing_core):
        def __init__(self, task_manager, settings_registry, product_api, algorithm_libraries):
            library = __getattr__("PtychoPinnReconstructorLibrary")(settings_registry)
            super().__init__(task_manager, settings_registry, product_api,
                             [*algorithm_libraries, library])
    return ProcessingCoreWithPtychoPinn


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ptychodus's command line with this library registered (see the module docstring)."""
    if not ptychodus_available():
        print("ptychodus is not installed; install it with: pip install "
              "'ptycho-pinn[ptychodus]'", file=sys.stderr)
        return 2
    import ptychodus.__main__ as ptychodus_main
    import ptychodus.model.core as core

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    core.ProcessingCore = processing_core_with_library(core.ProcessingCore)
    return int(ptychodus_main.main())


if __name__ == "__main__":
    sys.exit(main())
