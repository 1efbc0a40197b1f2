"""The reconstruct workflow: predict object patches in batches and stitch them into the object.

Streams: patterns are read, scaled, predicted and stitched one chunk at a time, so a scan held
in a memory-mapped NPZ is never loaded whole, and memory stays bounded by the object canvas,
one chunk, and (only when ``keep_patches``) the patches themselves.

With a model that is one rank of a process group (built with ``group=``, see
:mod:`ptycho.distributed`), the ranks split the scan into contiguous parts, each predicts and
stitches its part chunk by chunk onto its own accumulators, and the accumulators (weighted
sum and coverage) are summed over the ranks before the normalisation: the object equals one
process's up to float32 rounding, and memory per rank stays the canvas and one chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.data.contract import RawData
from ptycho.data.grouping import GroupedData, distinct_patterns, group_scan
from ptycho.data.scaling import intensity_scale, normalisation_factor
from ptycho.distributed import shard
from ptycho.limits import check_bytes
from ptycho.model_memory import check_model_memory
from ptycho.physics.model import effective_probe
from ptycho.phase_sync import align_phase, synchronize
from ptycho.physics.patches import canvas_size, group_centres
from ptycho.scan_estimate import ScanEstimate
from ptycho.stitching import (Stitcher, check_canvas, check_group_canvas, extent_of,
                               probe_window, sparse_scan)
from ptycho.workflows.model import PtychoModel, inference_batch_size

#: Groups predicted and stitched per chunk when the caller does not say.
DEFAULT_CHUNK_GROUPS = 1024

DataLike = Union[RawData, GroupedData]


@dataclass
class Reconstruction:
    """A stitched object and what it was made from.

    obj: (H, W) complex64 object: the refined one when refinement ran, else the network's
    stitched patches (zero where no patch reached);
    amplitude, phase: ``|obj|`` and ``angle(obj)`` (radians);
    coverage: (H, W) stitching weight per pixel; patches: (B, C, N, N) complex64 network
    output, or None when not kept; positions: (B, C, 2) (x, y) object pixels of each patch;
    seconds: wall time of everything; n_patterns: distinct diffraction patterns used;
    n_patches: patches stitched (B * C; at gridsize > 1 each pattern is in about C groups,
    so about C * n_patterns), None when not recorded;
    network_obj: the network's stitched object (the refinement's start; ``obj`` itself when
    no refinement ran); refinement: None, or what the refinement did (``iterations``,
    ``nll`` per iteration, ``seconds``, ``probe`` (N, N) complex64, refined or not).
    """

    obj: np.ndarray
    coverage: np.ndarray
    positions: np.ndarray
    patches: Optional[np.ndarray]
    seconds: float
    n_patterns: int
    n_patches: Optional[int] = None
    network_obj: Optional[np.ndarray] = None
    refinement: Optional[dict] = None

    def __post_init__(self) -> None:
        if self.network_obj is None:
            self.network_obj = self.obj

    @property
    def amplitude(self) -> np.ndarray:
        return np.abs(self.obj)

    @property
    def phase(self) -> np.ndarray:
        return np.angle(self.obj)


@dataclass(frozen=True)
class ReconstructionPlan:
    """What :func:`reconstruct` will do with a scan, computed and checked before any model is
    built (see :func:`plan_reconstruction`).

    positions: (B, C, 2) (x, y) object pixels of each group member; indices: (B, C) their
    scan indices; object_shape: (H, W) of the stitched object; canvas: the side of each
    group's overlap-constraint canvas (None without the constraint); batch_size and
    chunk_groups: groups per prediction batch and per streamed chunk; read(slice): the
    scaled diffraction (b, C, N, N) of those groups; spacing: the ``spacing`` it was made
    with (None: every scan point); scale: the factor ``read`` scales a RawData scan's
    amplitudes by (``normalisation_factor * intensity_scale``; None for GroupedData, scaled
    already), which the scan's estimate and refinement reuse.
    """

    positions: np.ndarray
    indices: Optional[np.ndarray]
    n_groups: int
    object_shape: tuple[int, int]
    canvas: Optional[int]
    batch_size: int
    chunk_groups: int
    read: Callable[[slice], np.ndarray]
    spacing: Optional[float] = None
    scale: Optional[float] = None


def _scan_scale(data: RawData, nphotons: float) -> np.float32:
    """The factor a RawData scan's amplitudes are scaled by for the network (a pass over
    every pattern): its normalisation times the model's intensity scale, as in training."""
    return np.float32(normalisation_factor(data.diffraction, data.mask)
                      * intensity_scale(nphotons, data.N))


def _group(config: TrainingConfig, data: DataLike, spacing: Optional[float] = None,
           window: Optional[np.ndarray] = None):
    """(positions (B, C, 2), scan indices (B, C), a reader of scaled diffraction chunks, the
    scale it applies: None for GroupedData).

    ``spacing``: group only the scan points :func:`ptycho.stitching.sparse_scan` keeps for
    the stitching ``window`` (the scale still comes from every pattern)."""
    if isinstance(data, GroupedData):
        if spacing is not None:
            raise ValueError("spacing needs a RawData scan: a GroupedData's groups are fixed")
        pos = data.global_offsets[:, None, :] + data.rel_offsets.astype(np.float64)

        def read_grouped(sl: slice) -> np.ndarray:
            return data.diffraction[sl]
        return pos, data.indices, read_grouped, None
    if not isinstance(data, RawData):
        raise TypeError(f"expected RawData or GroupedData, got {type(data).__name__}")
    if data.N != config.model.N:
        raise ValueError(f"data has N={data.N}, the model expects N={config.model.N}")
    xy = np.stack([data.xcoords, data.ycoords], axis=1)
    kept = np.arange(len(xy)) if spacing is None else sparse_scan(xy, spacing, window)
    groups = kept[group_scan(xy[kept, 0], xy[kept, 1], config.model.gridsize,
                             config.neighbor_count, n_groups=None, seed=config.seed)]
    scale = _scan_scale(data, config.nphotons)
    pos = xy[groups]
    mask = data.mask

    def read(sl: slice) -> np.ndarray:
        idx = groups[sl]
        # fancy indexing copies only these rows, also from a memory-mapped scan
        chunk = np.asarray(data.diffraction[idx.reshape(-1)], dtype=np.float32)
        chunk = chunk.reshape(idx.shape + (data.N, data.N)) * scale
        if mask is not None:    # bad pixels read 0, as in training (group_data)
            chunk *= mask if mask.ndim == 2 else mask[idx]
        return chunk
    return pos, groups, read, scale


#: Bytes one pattern of a streamed chunk takes, per pixel: its diffraction (float32), the
#: predicted patch (complex64) and the scaled copy the backend makes (float32).
CHUNK_BYTES_PER_PIXEL = 16


def plan_reconstruction(config: TrainingConfig, data: DataLike, *,
                        batch_size: Optional[int] = None,
                        object_shape: Optional[Sequence[int]] = None,
                        chunk_groups: int = DEFAULT_CHUNK_GROUPS,
                        keep_patches: bool = False, spacing: Optional[float] = None,
                        window: Optional[np.ndarray] = None) -> ReconstructionPlan:
    """Group ``data`` as :func:`reconstruct` will, and check what it will allocate against the
    memory budget (:mod:`ptycho.limits`) before anything large is allocated or a model built.

    Checked: the object canvas (``object_shape``, default the data's ``object_guess`` shape or
    the scan's extent), each chunk's overlap-constraint canvases (gridsize > 1 with
    ``object_big``), one chunk of patterns, the kept patches (``keep_patches``), and the
    network for one batch (:func:`ptycho.model_memory.check_model_memory`). ``spacing``: see
    :func:`reconstruct`; it needs the stitching ``window`` (:func:`stitch_window`), whose
    support decides which points keep the scan covered. A canvas that is
    too large is a :class:`ptycho.errors.DataLimitError` naming the outlying scan positions
    (index and value); the others are :class:`ptycho.errors.ResourceLimitError`.
    """
    cfg = config.model
    if spacing is not None and window is None:
        raise ValueError("spacing needs the stitching window (window=stitch_window(model)): "
                         "its support decides which scan points keep the scan covered")
    positions, indices, read, scale = _group(config, data, spacing, window)
    n, n_groups, channels = cfg.N, int(positions.shape[0]), int(positions.shape[1])
    batch = int(batch_size or inference_batch_size(config))
    chunk = max(1, min(int(chunk_groups), n_groups))
    scan_pos, scan_idx = positions.reshape(-1, 2), indices.reshape(-1)
    if spacing is not None:    # the object the whole scan sees, not only the kept points
        scan_idx = np.arange(data.n_patterns)
        scan_pos = np.stack([data.xcoords, data.ycoords], axis=1)
    guess = getattr(data, "object_guess", None)
    if object_shape is None:
        object_shape = guess.shape if guess is not None else extent_of(scan_pos, n)
    shape = check_canvas(object_shape, scan_pos, n, indices=scan_idx)
    canvas = None
    if cfg.gridsize > 1 and cfg.object_big:
        canvas = canvas_size(n, _offsets_in_group(positions))
        check_group_canvas(canvas, chunk, positions, n, indices=indices)
    check_bytes(chunk * channels * n * n * CHUNK_BYTES_PER_PIXEL,
                f"one chunk of {chunk} groups of {channels} patterns of {n} x {n}")
    if keep_patches:
        check_bytes(n_groups * channels * n * n * np.dtype(np.complex64).itemsize,
                    f"keeping the {n_groups * channels} predicted patches of {n} x {n}")
    check_model_memory(cfg, batch)
    return ReconstructionPlan(positions=positions, indices=indices, n_groups=n_groups,
                              object_shape=shape, canvas=canvas, batch_size=batch,
                              chunk_groups=int(chunk_groups), read=read,
                              spacing=None if spacing is None else float(spacing),
                              scale=None if scale is None else float(scale))


#: Sigma (pixels) of the Gaussian the stitching weight averages the probe's intensity with:
#: the weight follows the illumination's envelope, not its speckle. A diffuser probe's
#: intensity changes about 2x between neighbouring pixels (median; 16x at the 95th
#: percentile); weighed pixel by pixel, a sparse pass (few patches per pixel) takes
#: neighbouring pixels from different patches, and the network's errors, which do not follow
#: the speckle, become pixel-scale noise. Averaged over 1 px: 1.3x (median). On the natural
#: held-out objects at spacing 18, gridsize 2: amplitude SSIM +0.004-0.009, phase up to
#: +0.008; every point: within 0.001 (benchmarks/README.md, "Two corrections").
STITCH_SMOOTHING_PX = 1.0


def stitch_window(model: PtychoModel, probe: Optional[np.ndarray] = None) -> np.ndarray:
    """Stitching weight (N, N): the probe's intensity ``|P_eff|^2`` averaged over
    :data:`STITCH_SMOOTHING_PX`, over its maximum, on the object support.

    Pixels the probe barely lights carry little information about the object, so each patch
    counts where it was illuminated; with ``pad_object`` only the central N/2 square counts.
    ``probe``: the model's (raw) probe when the caller has read it already (else it is
    read from the model).
    """
    probe = model.probe() if probe is None else probe
    return window_of(model.model_config, probe)


def window_of(config: ModelConfig, probe: np.ndarray) -> np.ndarray:
    """:func:`stitch_window` of a model with ``config`` and (raw) ``probe``, before it is built
    (e.g. from a bundle's weights)."""
    return probe_window(effective_probe(probe, config.probe_mask), config.pad_object,
                        smoothing=STITCH_SMOOTHING_PX)


def _release_freed_memory() -> None:
    """Hand memory that was freed back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Each chunk allocates and frees the same sizes, but glibc keeps freed heap pages and the
    heap fragments: over 100k patterns (N=64, chunks of 1024) the resident memory crept up in
    32 MiB steps (343 -> 526 MiB). Trimming after every chunk keeps it flat (260 MiB from the
    first chunk to the last) for a few milliseconds per chunk. Dask's workers do the same.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def _constrain(model: PtychoModel, patches: np.ndarray, positions: np.ndarray, canvas: int):
    """The overlap constraint the loss saw during training (gridsize > 1 with object_big),
    computed by the model itself (float32, the op of its training loss)."""
    rel = _offsets_in_group(positions)
    return np.asarray(model.backend_model.constrain(patches, rel, canvas), dtype=np.complex64)


def _offsets_in_group(positions: np.ndarray) -> np.ndarray:
    """(B, C, 2) offsets of the members from their group's centre, as
    :func:`ptycho.data.group_data` makes them (:func:`ptycho.physics.group_centres`)."""
    return positions - group_centres(positions)[:, None, :]


def predict_chunk(model: PtychoModel, diffraction: np.ndarray, positions: np.ndarray,
                  canvas: Optional[int], *, batch_size: Optional[int] = None,
                  precision: str = "float32", scan: Optional[ScanEstimate] = None,
                  indices: Optional[np.ndarray] = None) -> np.ndarray:
    """Object patches (B, C, N, N) complex64 for one chunk of groups, as :func:`reconstruct`
    stitches them: the network's output, overlap-constrained when ``canvas`` is given (the
    per-group canvas side; ``None`` for gridsize 1 or without ``object_big``).

    ``diffraction`` (B, C, N, N) in photon units, ``positions`` (B, C, 2) (x, y); ``scan``:
    the scan's estimate (:func:`scan_estimate`), for a model with ``estimate_scope="scan"``.
    ``indices`` (B, C): the members' scan indices. With them, a ``per_pattern_network`` at
    gridsize > 1 (whose patch depends on its own pattern only) runs once per distinct pattern
    of the chunk instead of once per group member, about C times fewer passes.
    """
    cfg = model.model_config
    if indices is not None and cfg.per_pattern_network and cfg.n_channels > 1:
        patches = _predict_distinct(model, diffraction, positions, indices, batch_size,
                                    precision, scan)
    else:
        estimate = None if scan is None else scan.patches(positions)
        patches = model.predict(diffraction, batch_size=batch_size, precision=precision,
                                estimate=estimate)
    if canvas is not None:
        patches = _constrain(model, patches, positions, canvas)
    return patches


def _predict_distinct(model: PtychoModel, diffraction: np.ndarray, positions: np.ndarray,
                      indices: np.ndarray, batch_size: Optional[int], precision: str,
                      scan: Optional[ScanEstimate]) -> np.ndarray:
    """:meth:`PtychoModel.predict` of groups whose patches each depend on their own pattern
    only: each distinct pattern once, C of them to a group (the last group filled up with
    repeats), the patches then handed back to every group that holds them."""
    c, n = diffraction.shape[1], diffraction.shape[-1]
    distinct, first, inverse = np.unique(np.asarray(indices).reshape(-1), return_index=True,
                                         return_inverse=True)
    k = len(distinct)
    take = first[np.arange(k + (-k) % c) % k]
    groups = diffraction.reshape(-1, n, n)[take].reshape(-1, c, n, n)
    estimate = None
    if scan is not None:
        estimate = scan.patches(positions.reshape(-1, 2)[take].reshape(-1, c, 2))
    patches = model.predict(groups, batch_size=batch_size, precision=precision,
                            estimate=estimate).reshape(-1, n, n)
    return patches[inverse.reshape(-1)].reshape(diffraction.shape)


def constraint_canvas(model: PtychoModel, positions: np.ndarray) -> Optional[int]:
    """The per-group canvas side :func:`predict_chunk` constrains on, or None (no constraint)."""
    cfg = model.model_config
    if not (cfg.gridsize > 1 and cfg.object_big):
        return None
    return canvas_size(cfg.N, _offsets_in_group(positions))


def scan_estimate(model: PtychoModel, data: DataLike, probe: Optional[np.ndarray] = None,
                  scale: Optional[float] = None) -> Optional[ScanEstimate]:
    """The stitched estimate of every pattern of ``data`` with the model's probe, scaled as
    the network's input (:mod:`ptycho.scan_estimate`), for a model with
    ``estimate_scope="scan"``; None for any other. It reads every pattern once more before
    the network's pass (in a process group every rank does: each needs the whole scan's); a
    pattern that several groups of a GroupedData hold counts once, as in :func:`group_data`.
    ``probe``: as in :func:`stitch_window`; ``scale``: as in :func:`refine_patterns`."""
    cfg = model.model_config
    if cfg.estimate_scope != "scan":
        return None
    positions, read, mask = refine_patterns(model, data, scale)
    if isinstance(data, GroupedData):    # each pattern once, as group_data stitches them
        keep = np.unique(data.indices.reshape(-1), return_index=True)[1]
        positions, grouped_read = positions[keep], read
        mask = mask[keep] if mask is not None and mask.ndim == 3 else mask

        def read(rows: np.ndarray) -> np.ndarray:
            return grouped_read(keep[rows])
    probe = effective_probe(model.probe() if probe is None else probe,
                            cfg.probe_mask)
    return ScanEstimate.from_patterns(read, positions, probe, mask=mask, pad_object=cfg.pad_object)


def refine_patterns(model: PtychoModel, data: DataLike, scale: Optional[float] = None):
    """Every pattern of ``data`` once, for refinement: positions (M, 2) = (x, y), a reader
    ``rows -> (b, N, N)`` of photon-unit amplitudes scaled as for the network, and the
    bad-pixel mask (None, (N, N) or (M, N, N)). ``scale``: a RawData scan's factor when the
    caller has it (:attr:`ReconstructionPlan.scale`); by default computed here (a pass over
    every pattern)."""
    n = model.model_config.N
    if isinstance(data, GroupedData):    # its patterns, as grouped (a pattern may repeat)
        c = data.n_channels
        pos = (data.global_offsets[:, None, :] + data.rel_offsets.astype(np.float64)).reshape(-1, 2)
        mask = data.mask
        if mask is not None and mask.ndim == 4:
            mask = mask.reshape(-1, n, n)

        def read_grouped(rows: np.ndarray) -> np.ndarray:
            return np.asarray(data.diffraction[rows // c, rows % c], np.float32)
        return pos, read_grouped, mask
    scale = _scan_scale(data, model.config.nphotons) if scale is None else np.float32(scale)

    def read(rows: np.ndarray) -> np.ndarray:
        return np.asarray(data.diffraction[rows], np.float32) * scale
    return np.stack([data.xcoords, data.ycoords], axis=1), read, data.mask


def refine_object(model: PtychoModel, obj: np.ndarray, data: DataLike, iterations: int, *,
                  refine_probe: bool = False, batch_size: int = 64, seed: Optional[int] = None,
                  progress: Optional[Callable[[int, int, float], None]] = None,
                  scale: Optional[float] = None) -> dict:
    """Physics refinement of ``obj`` against ``data`` in the model's backend (see
    :mod:`backends.common.refine`): ``iterations`` passes of the Poisson likelihood's
    gradient over every pattern, from ``obj`` with the model's probe (refined too when
    ``refine_probe``) and intensity scale. Returns ``obj``, ``probe``, ``nll`` (per
    iteration), ``iterations``, ``seconds``. ``scale``: as in :func:`refine_patterns`.
    """
    from backends.common.refine import run

    start = time.perf_counter()
    positions, read, mask = refine_patterns(model, data, scale)
    refiner = model.backend_model.refiner(obj, refine_probe=refine_probe)
    history = run(refiner, positions, read, iterations, batch_size=batch_size, mask=mask,
                  seed=model.config.seed if seed is None else seed, progress=progress)
    obj, probe = refiner.result()
    return {"obj": obj, "probe": probe, "nll": history, "iterations": int(iterations),
            "refine_probe": bool(refine_probe), "seconds": time.perf_counter() - start}


def _align_parts(stitcher: Stitcher, group) -> None:
    """Bring the ranks' parts of a scan to one phase before they are summed.

    Within a part, phase synchronisation turned each chunk to the part stitched so far; the
    parts' own phases are unrelated. Rank by rank, part r is turned to the sum of parts
    0 .. r-1 (turned already): one sum of the canvas over the ranks per rank after the first.
    """
    num, den, _ = stitcher.accumulators()
    nothing = [np.zeros_like(num), np.zeros_like(den)]
    for r in range(1, group.size):
        before = group.all_reduce_sum([num, den] if group.rank < r else nothing)
        if group.rank == r:
            stitcher.turn_to(*before)


def _check_against_plan(plan: ReconstructionPlan, **given) -> None:
    """Every option given beside ``plan`` (not None) equals the plan's own: a plan made
    otherwise would be followed silently (its points, batches, chunks, object shape)."""
    for name, value in given.items():
        if value is None:
            continue
        planned = getattr(plan, name)
        same = (tuple(int(v) for v in value) == tuple(planned) if name == "object_shape"
                else planned is not None and float(value) == float(planned))
        if not same:
            raise ValueError(f"{name}={value!r} disagrees with the plan's {name}={planned!r}: "
                             f"pass {name} to plan_reconstruction, which fixes it for the plan")


def reconstruct(model: PtychoModel, data: DataLike, *, batch_size: Optional[int] = None,
                precision: str = "float32", keep_patches: bool = True,
                object_shape: Optional[Sequence[int]] = None,
                chunk_groups: Optional[int] = None,
                progress: Optional[Callable[[int, int], None]] = None,
                plan: Optional[ReconstructionPlan] = None, phase_sync: bool = False,
                spacing: Optional[float] = None, refine: int = 0,
                refine_probe: bool = False,
                refine_progress: Optional[Callable[[int, int, float], None]] = None
                ) -> Optional[Reconstruction]:
    """Reconstruct the object seen by ``data`` with a trained ``model``.

    Raw data is grouped (one group per scan point for gridsize > 1) and scaled with the
    model's ``nphotons`` like training data (bad pixels of ``data.mask`` left out of the
    normalisation and set to 0). For gridsize > 1 with ``object_big`` the patches
    go through the overlap constraint, as in training (the loss never sees the raw network
    output there). Each patch is stitched at its own scan position, weighted by
    :func:`stitch_window`.
    ``object_shape`` defaults to the data's ``object_guess`` shape, else the scan's extent.
    ``progress(done, total)`` is called after each chunk (counts of groups).
    ``plan``: from :func:`plan_reconstruction` (made with the model's config, the same data
    and options); by default it is made here. The plan fixes the points, the batches, the
    chunks and the object's shape: ``batch_size``, ``object_shape``, ``chunk_groups`` and
    ``spacing`` given beside it must be the plan's (a ValueError names the one that is not).
    Either way the memory the run takes is checked against the budget before the object
    canvas is allocated. ``chunk_groups`` None: :data:`DEFAULT_CHUNK_GROUPS`.

    ``phase_sync``: the network is free to give each patch (each group at gridsize > 1) its
    own constant phase, which its diffraction pattern cannot see; with ``phase_sync`` the
    patches of a chunk are brought to a common phase from their overlaps before stitching,
    and the chunk to the object stitched so far (:mod:`ptycho.phase_sync`). Off by default:
    the chunks' alignment depends on where the chunks meet, so the result then depends
    slightly on ``chunk_groups`` (and on the number of processes); without it, streaming
    changes nothing in the result.

    ``spacing`` (object pixels): the network predicts only a subset of the scan points about
    ``spacing`` apart that still reaches every pixel the whole scan's patches reach
    (:func:`ptycho.stitching.sparse_scan`; at gridsize > 1 grouped among themselves), and
    only those are stitched: on a dense scan, far fewer network passes for a noisier
    object (a raster of step 6 px at ``spacing=12``: a third of the passes; at gridsize > 1
    the overlap constraint then smooths less, README.md "A sparser network pass"). The
    scan's estimate (``estimate_scope="scan"``), the diffraction's scale and refinement still
    use every pattern; ``n_patterns`` counts those the network saw. None (default): all.

    ``refine=K``: then ``K`` iterations of physics refinement (:func:`refine_object`) from
    the stitched object, in the model's backend, with the model's probe (refined too with
    ``refine_probe``); ``refine_progress(done, K, nll)`` after each iteration. The network's
    object stays in ``network_obj``.

    In a process group (``model.backend_model.process_group``; every rank calls with the
    same data and arguments) each rank predicts its contiguous part of the groups, the
    stitching accumulators are summed over the ranks, and rank 0 returns the
    :class:`Reconstruction` (refined there alone when ``refine``); the other ranks return
    None. ``progress`` then counts this rank's groups. ``keep_patches`` must be False (no
    rank holds all the patches). With ``phase_sync`` each rank synchronises its own part
    chunk by chunk and the parts are then turned to one another (:func:`_align_parts`):
    without it the object equals one process's to float32 rounding; with it, up to the
    phase estimates, whose reference differs at the parts' boundaries.
    """
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
        raise ValueError(f"refine must be an int >= 0 (iterations), got {refine!r}")
    group = getattr(model.backend_model, "process_group", None)
    if group is not None and keep_patches:
        raise ValueError("keep_patches=True needs a single process: in a process group each "
                         "rank predicts only its part of the scan; pass keep_patches=False")
    start = time.perf_counter()
    probe = model.probe()
    window = stitch_window(model, probe)
    if plan is None:
        plan = plan_reconstruction(model.config, data, batch_size=batch_size,
                                   object_shape=object_shape,
                                   chunk_groups=(DEFAULT_CHUNK_GROUPS if chunk_groups is None
                                                 else chunk_groups),
                                   keep_patches=keep_patches, spacing=spacing, window=window)
    else:
        _check_against_plan(plan, batch_size=batch_size, object_shape=object_shape,
                            chunk_groups=chunk_groups, spacing=spacing)
    positions, read, n_groups = plan.positions, plan.read, plan.n_groups
    n = model.model_config.N
    scan = scan_estimate(model, data, probe, plan.scale)
    stitcher = Stitcher(plan.object_shape, n, window=window)
    kept = []
    mine = slice(0, n_groups) if group is None else shard(n_groups, group.rank, group.size)
    for lo in range(mine.start, mine.stop, plan.chunk_groups):
        sl = slice(lo, min(lo + plan.chunk_groups, mine.stop))
        patches = predict_chunk(model, read(sl), positions[sl], plan.canvas,
                                batch_size=plan.batch_size, precision=precision, scan=scan,
                                indices=None if plan.indices is None else plan.indices[sl])
        flat, where = patches.reshape((-1, n, n)), positions[sl].reshape(-1, 2)
        if phase_sync:    # the patches' free phase offsets made to agree, then the chunk's
            flat = synchronize(flat, where, window)          # with the object so far
            flat *= np.complex64(align_phase(stitcher.overlap_with(flat, where)))
            patches = flat.reshape(patches.shape)
        stitcher.add(flat, where)
        if keep_patches:
            kept.append(patches)
        del patches    # before the next chunk is predicted: one chunk in memory, not two
        if sl.stop < mine.stop:    # a chunk follows; after the last, what follows reuses them
            _release_freed_memory()
        if progress is not None:
            progress(sl.stop - mine.start, mine.stop - mine.start)
    if group is not None:
        if phase_sync:
            _align_parts(stitcher, group)
        stitcher.sum_over(group.all_reduce_sum)
        if group.rank != 0:
            return None
    network_obj = stitcher.result()
    refinement = None
    if refine:
        refinement = refine_object(model, network_obj, data, int(refine),
                                   refine_probe=refine_probe, progress=refine_progress,
                                   scale=plan.scale)
    return Reconstruction(obj=refinement["obj"] if refinement else network_obj,
                          coverage=stitcher.coverage,
                          positions=positions, patches=np.concatenate(kept) if kept else None,
                          seconds=time.perf_counter() - start,
                          n_patterns=distinct_patterns(plan.indices),
                          n_patches=int(n_groups * model.model_config.n_channels),
                          network_obj=network_obj, refinement=refinement)
