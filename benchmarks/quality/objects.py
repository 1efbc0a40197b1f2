"""The objects and scans of the quality benchmark (numpy; scikit-image for natural images).

Every scan is made by the public API, ``ptycho.simulate.simulate_dataset``, from an object of
:func:`build_object`: the same object, dose and seed always give the same scan.
"""

from __future__ import annotations

import zlib

import numpy as np

from benchmarks.quality.config import ObjectSpec, QualityConfig
from ptycho.data.contract import RawData
from ptycho.simulate import grf_object, image_object, lines_object, simulate_dataset

#: Pixels between the training scans laid side by side (far beyond any neighbour group).
TRAIN_GAP = 256


def natural_image(name: str, side: int) -> np.ndarray:
    """``skimage.data.<name>()`` as a (side, side) float image: luminance, the central square,
    resized with anti-aliasing."""
    try:
        import skimage.data
        from skimage.transform import resize
    except ImportError as exc:
        raise ImportError("natural-image objects need scikit-image: pip install "
                          "'ptycho-pinn[quality]'") from exc
    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"skimage.data has no image {name!r}")
    img = np.asarray(loader(), dtype=np.float64)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114])
    h, w = img.shape
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return resize(img, (side, side), anti_aliasing=True)


def build_object(spec: ObjectSpec, config: QualityConfig) -> np.ndarray:
    """The (side, side) complex64 object of ``spec`` (amplitude and phase in the config's
    ranges)."""
    side = config.object_side
    shape = (side, side)
    rng = np.random.default_rng(spec.seed)
    ranges = {"amplitude_range": config.amplitude_range, "phase_range": config.phase_range}
    if spec.kind == "lines":
        return lines_object(shape, rng, **ranges)
    if spec.kind == "grf":
        return grf_object(shape, rng, **ranges)
    return image_object(natural_image(spec.amplitude_image, side), config.amplitude_range,
                        config.phase_range, phase_image=natural_image(spec.phase_image, side))


def scan_seed(spec: ObjectSpec, dose: float, config: QualityConfig) -> int:
    """The noise seed of one object's scan at one dose (stable across runs and processes)."""
    return zlib.crc32(f"{spec.name}|{dose:g}|{config.seed}".encode()) & 0x7FFFFFFF


def scan_object(spec: ObjectSpec, dose: float, config: QualityConfig) -> tuple[RawData, np.ndarray]:
    """A raster scan of ``spec`` at ``dose`` photons per pattern: (RawData, truth)."""
    obj = build_object(spec, config)
    return simulate_dataset(config.grid_side ** 2, config.N, object=obj, probe=config.probe,
                            scan="grid", step=float(config.step), nphotons=dose,
                            seed=scan_seed(spec, dose, config))


def training_scan(config: QualityConfig, dose: float) -> RawData:
    """Scans of every training object, side by side in one frame (:data:`TRAIN_GAP` apart), as
    one RawData with ``scan_index`` naming the object; no ground truth."""
    parts = [scan_object(spec, dose, config)[0] for spec in config.train_objects]
    shift = config.object_side + TRAIN_GAP
    return RawData(diffraction=np.concatenate([p.diffraction for p in parts]),
                   probe=parts[0].probe,
                   xcoords=np.concatenate([p.xcoords + k * shift for k, p in enumerate(parts)]),
                   ycoords=np.concatenate([p.ycoords for p in parts]),
                   scan_index=np.concatenate([np.full(p.n_patterns, k)
                                              for k, p in enumerate(parts)]))
