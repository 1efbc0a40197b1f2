"""The parity harness: runs one config through both backends and compares them stage by stage.

Importing this package imports neither TensorFlow nor PyTorch (nor hypothesis): a framework is
imported only when a stage runs, through :func:`backends.get_backend`.

>>> import parity
>>> report = parity.run(stages="physics", backends=(parity.NumpyBackend("np-a"),
...                                                  parity.NumpyBackend("np-b")))
>>> report.passed, report.first_failure is None
(True, True)

Modules: :mod:`.runner` (``run``, the default config), :mod:`.stages` (the eight stages),
:mod:`.compare` (recursive comparison with shape, dtype and NaN policies),
:mod:`.tolerances` (the one tolerance table), :mod:`.report` (text table and JSON),
:mod:`.reference` (float64 numpy reference of network, gradients and Adam), :mod:`.inputs`
(seeded inputs), :mod:`.strategies` (hypothesis strategies; imports hypothesis),
:mod:`.fake` (a numpy stand-in backend for testing the harness itself).
"""

from parity.compare import Diff, compare_arrays, compare_tree
from parity.fake import NumpyBackend
from parity.report import STAGE_NAMES, STAGES, Check, ParityReport, StageResult
from parity.runner import DEFAULT_BACKENDS, default_config, run, select_stages
from parity.tolerances import TOLERANCES, Tolerance, tolerance

__all__ = [
    "Check", "DEFAULT_BACKENDS", "Diff", "NumpyBackend", "ParityReport", "STAGES", "STAGE_NAMES",
    "StageResult", "TOLERANCES", "Tolerance", "compare_arrays", "compare_tree", "default_config",
    "run", "select_stages", "tolerance",
]
