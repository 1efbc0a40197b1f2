"""pty-chi (``ptychi``) as the iterative reference, on exactly our data.

``reconstruct_ptychi(raw)`` hands pty-chi the scan of a :class:`ptycho.data.RawData` (the same
diffraction, probe and positions a network sees) and returns the object on our object grid,
so :mod:`ptycho.metrics` applies to it as to any reconstruction. pty-chi is imported only when
it is called (``pip install 'ptycho-pinn[reference]'``); it runs on torch.

Conventions, ours -> pty-chi (each one pinned by a test against pty-chi's own forward model):

* Diffraction: our amplitudes ``A = sqrt(counts)`` with the zero frequency at the centre;
  pty-chi takes intensities, so it gets ``A**2`` (photon counts, the Poisson model's units)
  with ``fft_shift=True`` (it moves the zero frequency to the corner itself).
* Far field: ours is ``|fftshift(fft2(P O))| / N`` (orthonormal); pty-chi's is
  ``|fft2(P O)|`` (unnormalised), so its probe is ours divided by N. A probe file has no
  absolute scale, so the probe is scaled to the data: with the object 1 everywhere, the
  predicted mean total counts per pattern equal the measured ones
  (:func:`probe_for_ptychi`). The object then comes out up to one constant factor, which
  :func:`ptycho.metrics.compare_objects` removes as it does for every reconstruction.
* Positions: ours put patch pixel ``N // 2`` on object pixel ``(y, x)``; pty-chi puts the patch
  centre ``(N - 1) / 2`` on ``position + origin``, so the origin is
  ``(N - 1) / 2 - N // 2`` (-0.5 for even N) plus the margin below, and positions are passed
  as they are, (y, x) = (row, column). On integer positions pty-chi's forward model then
  reproduces our simulated counts exactly (a test pins it). Sub-pixel positions are modelled
  differently: pty-chi reads the object at the rounded position and shifts the probe by the
  remainder in Fourier space, our simulation interpolates the object bilinearly; on a
  jittered scan the two forward models differ by about 1 % of the peak intensity, so the
  quality benchmark scans integer grids.
* Object: a ``margin`` of ones around our object grid, because pty-chi pads patches it reads
  at the very edge; the result is cropped back to our grid.

pty-chi changes torch's default device and dtype and seeds torch, numpy and ``random``
globally when a task is built; :func:`reconstruct_ptychi` restores all of them afterwards.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ptycho.data.contract import RawData

#: Engines :func:`reconstruct_ptychi` can run, and the one it runs by default (chosen by
#: measurement on the quality benchmark's scans: see benchmarks/README.md, "Iterative reference").
ENGINES = ("lsqml", "epie", "rpie", "dm")
DEFAULT_ENGINE = "lsqml"
#: Ones around our object grid (pixels per side): pty-chi pads patches read at the edge.
MARGIN = 4
#: How SSIM must be within of its final value for the curve to count as "reached" (see
#: :attr:`IterativeResult.seconds_to_final`).
REACHED_SSIM_TOLERANCE = 0.01

INSTALL_HINT = "pip install 'ptycho-pinn[reference]'  (pty-chi 2.2.0)"


@dataclass
class IterativeResult:
    """What :func:`reconstruct_ptychi` returns.

    obj: (H, W) complex64 object on our object grid (the data's ``objectGuess`` shape, or
        the scan's extent); amplitude and phase up to a constant scale and offset.
    seconds: wall time from building the pty-chi task to the last epoch (checkpoint
        metrics excluded).
    epochs: epochs run. engine: the pty-chi engine. probe_scale: the factor our probe was
        multiplied by before the 1/N of pty-chi's FFT (:func:`probe_for_ptychi`).
    curve: one entry per checkpoint: ``epoch``, ``seconds`` (wall time so far), and with a
        ground truth ``amplitude_ssim`` and ``phase_ssim`` over ``region``.
    seconds_to_final: wall time of the first checkpoint from which both SSIMs stay within
        :data:`REACHED_SSIM_TOLERANCE` of their final values (None without a ground truth).
    """

    obj: np.ndarray
    seconds: float
    epochs: int
    engine: str
    probe_scale: float
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds_to_final: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the object, as plain JSON values."""
        return {"seconds": self.seconds, "epochs": self.epochs, "engine": self.engine,
                "probe_scale": self.probe_scale, "curve": list(self.curve),
                "seconds_to_final": self.seconds_to_final}


# -- conventions (numpy only, tested without pty-chi) ------------------------------------------

def intensities_for_ptychi(diffraction: np.ndarray) -> np.ndarray:
    """(M, N, N) float32 photon counts from our amplitudes sqrt(counts), zero frequency centred.

    >>> intensities_for_ptychi(np.full((1, 2, 2), 3.0, np.float32)).tolist()
    [[[9.0, 9.0], [9.0, 9.0]]]
    """
    amp = np.asarray(diffraction, dtype=np.float32)
    return np.square(amp)


def probe_for_ptychi(probe: np.ndarray, diffraction: np.ndarray) -> tuple[np.ndarray, float]:
    """(probe (1, 1, N, N) complex64 for pty-chi, scale): ``probe * scale / N``.

    ``scale = sqrt(mean_m sum A_m^2 / sum |P|^2)``: with an object of ones, pty-chi's
    predicted total counts ``sum |fft2(P' O)|^2 = N^2 sum |P'|^2`` equal the measured mean
    total counts. The ``1 / N`` turns our orthonormal FFT into pty-chi's unnormalised one.

    >>> p, s = probe_for_ptychi(np.ones((2, 2)), np.full((3, 2, 2), 2.0))
    >>> s, p.shape, float(np.abs(p).max())
    (2.0, (1, 1, 2, 2), 1.0)
    """
    p = np.asarray(probe)
    n = p.shape[-1]
    power = float(np.sum(np.abs(p.astype(np.complex128)) ** 2))
    if not power > 0:
        raise ValueError("the probe is zero everywhere: nothing to reconstruct with")
    counts = float(np.mean(np.sum(np.square(np.asarray(diffraction, np.float64)), axis=(-2, -1))))
    if not counts > 0:
        raise ValueError("the diffraction holds no counts (all zero)")
    scale = math.sqrt(counts / power)
    return (p * (scale / n)).astype(np.complex64)[None, None], scale


def position_origin(n: int, margin: int = MARGIN) -> float:
    """pty-chi's position origin (the same for rows and columns) for our positions.

    Our position puts patch pixel ``N // 2`` on it; pty-chi puts the patch centre
    ``(N - 1) / 2`` on ``position + origin``; with ``margin`` pixels around the object.

    >>> position_origin(64, 0), position_origin(63, 0), position_origin(64, 4)
    (-0.5, 0.0, 3.5)
    """
    return (n - 1) / 2 - n // 2 + margin


# -- running pty-chi --------------------------------------------------------------------------

@contextlib.contextmanager
def _torchvision_fallback():
    """Let ``import ptychi.api`` work where torchvision cannot be imported.

    pty-chi imports ``torchvision.transforms.GaussianBlur`` at the top of ``ptychi.utils``
    and uses it only in ``generate_gaussian_random_image`` (random initial guesses, which we
    never ask for). PyPI's Linux torchvision wheels are CUDA builds: next to the CPU torch
    this project pins, their C++ ops do not load and ``import torchvision`` raises. Then,
    only while ptychi is being imported, ``torchvision.transforms`` is a stand-in whose
    ``GaussianBlur`` raises naming the reason; the stand-in is removed from ``sys.modules``
    afterwards, so nothing else ever sees it. A working torchvision is used as it is.
    """
    if "ptychi.utils" in sys.modules:
        yield
        return
    try:
        import torchvision.transforms  # noqa: F401
        yield
        return
    except (ImportError, RuntimeError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[name]          # half-imported modules of the failed attempt

    class GaussianBlur:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"torchvision cannot be imported here ({reason}); pty-chi needs "
                               "it only for random initial guesses, which ptycho never uses")

    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.GaussianBlur = GaussianBlur
    package.transforms = transforms
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, transforms
    try:
        yield
    finally:
        for name in ("torchvision", "torchvision.transforms"):
            if sys.modules.get(name) in (package, transforms):
                del sys.modules[name]


def import_ptychi():
    """``(ptychi.api, PtychographyTask)``; ImportError with the install command when missing."""
    try:
        import ptychi  # noqa: F401  (the package itself imports nothing heavy)
    except ImportError as exc:
        raise ImportError(f"the iterative reference needs pty-chi, which is not installed: "
                          f"{INSTALL_HINT}") from exc
    with _torchvision_fallback():
        import ptychi.api as api
        from ptychi.api.task import PtychographyTask
    return api, PtychographyTask


def warm_up() -> float:
    """Import pty-chi and build one tiny task; return the seconds it took.

    The first task of a process imports much of torch (``torch._dynamo``, through the first
    optimizer: about 10 s here); benchmarks call this first, so that the reference's wall
    time is its work, as a trained network's reconstruction time is.
    """
    start = time.perf_counter()
    n = 8
    raw = RawData(diffraction=np.ones((4, n, n), np.float32), probe=np.ones((n, n), np.complex64),
                  xcoords=np.array([4.0, 6.0, 4.0, 6.0]), ycoords=np.array([4.0, 4.0, 6.0, 6.0]))
    reconstruct_ptychi(raw, epochs=1, batch_size=4, object_shape=(12, 12))
    return time.perf_counter() - start


@contextlib.contextmanager
def _restore_global_state():
    """Undo what building a pty-chi task does to torch, numpy and ``random`` globals."""
    import random

    import torch

    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    torch_rng = torch.random.get_rng_state()
    np_rng, py_rng = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_default_device(device)
        torch.set_default_dtype(dtype)
        torch.random.set_rng_state(torch_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)


def _options(api, engine: str, batch_size: int, seed: int, device: str, probe_optimizable: bool):
    """pty-chi options for ``engine``, the probe fixed unless asked, no position correction."""
    if engine == "lsqml":
        options = api.LSQMLOptions()
        options.reconstructor_options.noise_model = api.NoiseModels.POISSON
        options.reconstructor_options.rescale_probe_intensity_in_first_epoch = False
        options.object_options.optimizer = api.Optimizers.SGD
        options.object_options.step_size = 1.0
    elif engine in ("epie", "rpie"):
        options = api.EPIEOptions() if engine == "epie" else api.RPIEOptions()
        options.object_options.alpha = 1.0 if engine == "epie" else 0.1
        options.object_options.optimizer = api.Optimizers.SGD
        options.object_options.step_size = 1.0
    elif engine == "dm":
        options = api.DMOptions()
        options.object_options.optimizer = api.Optimizers.SGD
        options.object_options.step_size = 1.0
    else:
        raise ValueError(f"unknown pty-chi engine {engine!r}; expected one of {list(ENGINES)}")
    r = options.reconstructor_options
    r.batch_size = batch_size
    r.random_seed = seed
    r.default_device = api.Devices.GPU if device == "gpu" else api.Devices.CPU
    r.default_dtype = api.Dtypes.FLOAT32
    r.displayed_loss_function = None
    o = options.object_options
    o.optimizable = True
    o.remove_object_probe_ambiguity.enabled = False      # keep our probe's scale
    o.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    options.probe_options.optimizable = probe_optimizable
    if probe_optimizable:
        options.probe_options.optimizer = api.Optimizers.SGD
        options.probe_options.step_size = 1.0
    options.probe_position_options.optimizable = False
    return options


def reconstruct_ptychi(raw: RawData, *, engine: str = DEFAULT_ENGINE, epochs: int = 100,
                       batch_size: int = 64, object_shape: Optional[Sequence[int]] = None,
                       truth: Optional[np.ndarray] = None,
                       region: Optional[tuple[int, int, int, int]] = None,
                       checkpoint_every: int = 0, seed: int = 0, device: str = "cpu",
                       probe_optimizable: bool = False) -> IterativeResult:
    """Reconstruct ``raw`` with pty-chi's ``engine``; return the object on our object grid.

    raw: the scan (our data contract: amplitudes sqrt(counts), probe, positions (x, y)).
    engine: one of :data:`ENGINES` (default :data:`DEFAULT_ENGINE`, LSQML with the Poisson
        noise model). epochs, batch_size: pty-chi's (patterns per update).
    object_shape: our object grid (default ``raw.object_guess.shape``, else the scan's extent).
    truth, region: with a ground truth (H, W), the amplitude and phase SSIM over ``region``
        (row0, row1, col0, col1; default :func:`ptycho.metrics.metric_region` of
        :func:`ptycho.stitching.scan_coverage`) are recorded every ``checkpoint_every``
        epochs (0: only at the end) into :attr:`IterativeResult.curve`.
    seed: pty-chi's random seed (batch order). device: ``"cpu"`` or ``"gpu"``.
    probe_optimizable: refine the probe too (default: keep the known probe fixed, as the
        network does unless it trains its probe).

    Example (needs pty-chi)::

        raw, truth = simulate_dataset(256, 64, object="grf", probe="defocus", step=6.0)
        ref = reconstruct_ptychi(raw, epochs=50, truth=truth, checkpoint_every=10)
        ref.seconds, ref.curve[-1]["amplitude_ssim"]     # wall time, SSIM at the end
        xy = np.stack([raw.xcoords, raw.ycoords], 1)
        compare_objects(ref.obj, truth, region=metric_region(scan_coverage(raw.probe, xy,
                                                                           truth.shape)))
    """
    from ptycho.metrics import compare_objects, metric_region
    from ptycho.stitching import extent_of, scan_coverage

    if engine not in ENGINES:
        raise ValueError(f"unknown pty-chi engine {engine!r}; expected one of {list(ENGINES)}")
    for name, value, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1),
                            ("checkpoint_every", checkpoint_every, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if not isinstance(raw, RawData):
        raise TypeError(f"expected RawData, got {type(raw).__name__}")
    n = raw.N
    xy = np.stack([np.asarray(raw.xcoords, np.float64), np.asarray(raw.ycoords, np.float64)], 1)
    if object_shape is None:
        guess = raw.object_guess
        object_shape = guess.shape if guess is not None else extent_of(xy, n)
    h, w = (int(s) for s in object_shape)
    if truth is not None and tuple(np.shape(truth)) != (h, w):
        raise ValueError(f"truth has shape {np.shape(truth)}, the object grid is {(h, w)}")
    if truth is not None and region is None:
        region = metric_region(scan_coverage(raw.probe, xy, (h, w)))
        if region is None:
            raise ValueError("the scan covers less than the SSIM window: no region to score")

    api, task_cls = import_ptychi()
    counts = intensities_for_ptychi(raw.diffraction)
    probe, probe_scale = probe_for_ptychi(raw.probe, raw.diffraction)
    origin = position_origin(n)
    options = _options(api, engine, batch_size, seed, device, probe_optimizable)
    options.object_options.position_origin_coords = np.array([origin, origin])
    obj0 = np.ones((1, h + 2 * MARGIN, w + 2 * MARGIN), np.complex64)

    def crop(task) -> np.ndarray:
        full = task.get_data_to_cpu("object", as_numpy=True)[0]
        return np.array(full[MARGIN:MARGIN + h, MARGIN:MARGIN + w], dtype=np.complex64)

    step = checkpoint_every or epochs
    curve: list[dict[str, float]] = []
    with _restore_global_state():
        start = time.perf_counter()
        task = task_cls(options, diffraction_data=counts, object_data=obj0, probe_data=probe,
                        probe_position_x_px=xy[:, 0].copy(), probe_position_y_px=xy[:, 1].copy())
        spent, done = time.perf_counter() - start, 0
        while done < epochs:
            k = min(step, epochs - done)
            t0 = time.perf_counter()
            task.run(n_epochs=k)
            spent += time.perf_counter() - t0
            done += k
            entry = {"epoch": done, "seconds": spent}
            if truth is not None:
                m = compare_objects(crop(task), truth, region=region)
                entry["amplitude_ssim"] = m["amplitude"]["ssim"]
                entry["phase_ssim"] = m["phase"]["ssim"]
            curve.append(entry)
        obj = crop(task)
        del task
    return IterativeResult(obj=obj, seconds=spent, epochs=epochs, engine=engine,
                           probe_scale=probe_scale, curve=curve,
                           seconds_to_final=seconds_to_reach_final(curve))


def seconds_to_reach_final(curve: Sequence[dict[str, float]],
                           tolerance: float = REACHED_SSIM_TOLERANCE) -> Optional[float]:
    """Wall time of the first checkpoint after which both SSIMs stay within ``tolerance`` of
    the last checkpoint's; None without SSIMs.

    >>> curve = [{"seconds": 1.0, "amplitude_ssim": 0.5, "phase_ssim": 0.6},
    ...          {"seconds": 2.0, "amplitude_ssim": 0.795, "phase_ssim": 0.895},
    ...          {"seconds": 3.0, "amplitude_ssim": 0.8, "phase_ssim": 0.9}]
    >>> seconds_to_reach_final(curve)
    2.0
    """
    if not curve or "amplitude_ssim" not in curve[-1]:
        return None
    final = curve[-1]
    reached = None
    for entry in curve:
        close = all(abs(entry[k] - final[k]) <= tolerance for k in ("amplitude_ssim", "phase_ssim"))
        if close and reached is None:
            reached = entry["seconds"]
        elif not close:
            reached = None
    return reached

