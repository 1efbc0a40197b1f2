"""The library's documented exception types.

Every error the library raises on bad input is one of these (or a plain ``ValueError`` /
``ImportError`` where the design says so). Each subclasses ``ValueError`` so that callers
written against generic validation errors keep working.
"""

from __future__ import annotations


class PtychoError(Exception):
    """Base class of every error raised by this library."""


class ConfigError(PtychoError, ValueError):
    """A configuration value or key is invalid (the message names the field)."""


class DataError(PtychoError, ValueError):
    """A dataset violates the NPZ data contract (the message names the key, expected and actual)."""


class WeightsError(PtychoError, ValueError):
    """A weight mapping does not match the canonical specification (missing, extra, misshapen)."""


class BundleError(PtychoError, ValueError):
    """A model bundle cannot be read or written (the message says what is wrong)."""


class TrainingError(PtychoError, RuntimeError):
    """Training stopped because something went wrong (e.g. a non-finite loss)."""


class DistributedError(PtychoError, RuntimeError):
    """A process of a multi-process run failed or stopped answering (a collective operation
    failed or timed out); this process stopped too. The message names the rank and the
    operation, and the framework's own message."""


class DataWarning(UserWarning):
    """A data file was read with something skipped or converted (the message says what and why).

    Emitted, for example, when :func:`ptycho.data.load_npz` skips a pickled member it will not
    unpickle, or converts PtychoPINN's normalised amplitudes to photon units.
    """


class PerformanceWarning(UserWarning):
    """A setting chosen will run much slower on this machine than another would (the message
    says which, why, and what to use instead); see :mod:`ptycho.hardware`."""


class ResourceLimitError(PtychoError, ValueError):
    """An input would need more memory than the budget allows (see :mod:`ptycho.limits`)."""


class DataLimitError(DataError, ResourceLimitError):
    """A dataset (its declared sizes, or the canvas its positions imply) exceeds the budget."""


class OutputFolderBusyError(PtychoError, OSError):
    """Another run holds the output folder's lock (the message names its pid)."""
