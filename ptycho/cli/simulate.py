"""``ptycho simulate``: write a simulated scan as an NPZ file of the data contract.

The file holds ``diffraction`` (M, N, N) float32 amplitudes sqrt(counts), ``probeGuess``,
``xcoords``/``ycoords`` and, unless ``--no-object-guess``, the ground-truth object as
``objectGuess``. ``--ground-truth FILE`` also writes the object alone (``objectGuess``) to FILE.
Every file is written atomically. A one-line summary goes to stdout.

Examples::

    ptycho simulate --output sim.npz
    ptycho simulate --output sim.npz --n-patterns 10000 --N 64 --nphotons 1e6 \\
        --object grf --probe defocus --scan jitter --seed 3 --ground-truth truth.npz
    ptycho simulate --output sim.npz --object my_image.png --amplitude-range 0.3 1
    ptycho simulate --output sim.npz --object image --amplitude-image cells.png \\
        --phase-image bark.png --phase-range -1 1
"""

from __future__ import annotations

import argparse
import os

from ptycho.cli.options import positive_float, positive_int

NAME = "simulate"
HELP = "simulate a ptychography scan (diffraction, probe, positions, ground truth) to an NPZ file"

OBJECT_CHOICES = ("lines", "grf")
PROBE_CHOICES = ("disk", "gaussian", "defocus", "diffuser")   # ptycho.simulate.PROBE_KINDS
SCAN_CHOICES = ("grid", "jitter", "random")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand to ``subparsers``; return its parser."""
    p = subparsers.add_parser(NAME, help=HELP, description=HELP + ".",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", "-o", required=True, metavar="FILE.npz",
                   help="dataset file to write (atomically)")
    p.add_argument("--n-patterns", type=positive_int, default=1000, metavar="M",
                   help="number of diffraction patterns")
    p.add_argument("--N", type=positive_int, default=64, metavar="N",
                   help="pattern side in pixels")
    p.add_argument("--nphotons", type=positive_float, default=1e9,
                   help="mean total photon count per pattern")
    p.add_argument("--object", default="lines", metavar="{lines,grf,image,IMAGE.png/npy}",
                   help="object to scan: random lines, a Gaussian random field, an image file "
                        "that drives amplitude and phase (PNG etc. or .npy; a complex .npy is "
                        "used as the object itself), or 'image' with --amplitude-image and "
                        "--phase-image")
    p.add_argument("--amplitude-image", metavar="FILE", default=None,
                   help="with --object image: the image (PNG etc. or real .npy) that drives the "
                        "amplitude, mapped onto --amplitude-range")
    p.add_argument("--phase-image", metavar="FILE", default=None,
                   help="with --object image: the image that drives the phase, mapped onto "
                        "--phase-range (same shape as the amplitude image; default: the "
                        "amplitude image)")
    p.add_argument("--probe", choices=PROBE_CHOICES, default="disk",
                   help="probe: flat disk (radius N/4), Gaussian (sigma N/8), a defocused "
                        "disk aperture (radius N/8, Fresnel number 4), or that aperture behind "
                        "a random phase screen (diffuser: not centro-symmetric)")
    p.add_argument("--probe-radius", type=positive_float, default=None, metavar="PX",
                   help="the disk's or the defocus aperture's radius in pixels, the Gaussian's "
                        "sigma (default: as --probe says)")
    p.add_argument("--scan", choices=SCAN_CHOICES, default="grid",
                   help="scan pattern; every patch lies inside the object")
    p.add_argument("--step", type=positive_float, default=None,
                   help="grid step in pixels (default N/4; with an image object, the step that "
                        "spans the image)")
    p.add_argument("--jitter", type=float, default=None,
                   help="jitter amplitude in pixels for --scan jitter (default step/4)")
    p.add_argument("--amplitude-range", type=float, nargs=2, default=(0.5, 1.0),
                   metavar=("LO", "HI"), help="object amplitude (transmission) range")
    p.add_argument("--phase-range", type=float, nargs=2, default=(0.0, 1.5707963267948966),
                   metavar=("LO", "HI"), help="object phase range in radians")
    p.add_argument("--seed", type=int, default=0, help="seed of object, scan and noise")
    p.add_argument("--no-noise", action="store_true",
                   help="store the expected amplitudes instead of Poisson draws")
    p.add_argument("--ground-truth", metavar="FILE", default=None,
                   help="also write the ground-truth object (key objectGuess) to FILE")
    p.add_argument("--no-object-guess", action="store_true",
                   help="do not store the ground truth as objectGuess in the dataset")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="threads (default: CPU count, at most 8); results do not depend on it")
    return p


def _check_target(path: str, what: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write the {what} {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"cannot write the {what} {path!r}: it is a directory")


def _object_from_args(args: argparse.Namespace, load_image):
    """(object for simulate_dataset, its name for the summary) from --object and the images."""
    from ptycho.simulate import image_object

    images = {"--amplitude-image": args.amplitude_image, "--phase-image": args.phase_image}
    if args.object != "image":
        given = [flag for flag, path in images.items() if path is not None]
        if given:
            raise ValueError(f"{given[0]} needs --object image (got --object {args.object})")
        if args.object in OBJECT_CHOICES:
            return args.object, args.object
        return load_image(args.object), os.path.basename(args.object)
    if args.amplitude_image is None:
        raise ValueError("--object image needs --amplitude-image FILE (and optionally "
                         "--phase-image FILE)")
    amplitude = load_image(args.amplitude_image)
    name = os.path.basename(args.amplitude_image)
    if args.phase_image is None:
        return amplitude, name
    phase = load_image(args.phase_image)
    obj = image_object(amplitude, tuple(args.amplitude_range), tuple(args.phase_range),
                       phase_image=phase)
    return obj, f"{name} (amplitude) / {os.path.basename(args.phase_image)} (phase)"


def run(args: argparse.Namespace) -> int:
    """Simulate, write the file(s), print a one-line summary; return 0."""
    import time

    import numpy as np

    from ptycho.atomic import atomic_save_npz, remove_stale_parts
    from ptycho.data.contract import save_npz
    from ptycho.simulate import load_image, simulate_dataset
    from ptycho.simulate.probes import make_probe

    _check_target(args.output, "dataset")
    if args.ground_truth is not None:
        _check_target(args.ground_truth, "ground truth")
        if os.path.abspath(args.ground_truth) == os.path.abspath(args.output):
            raise ValueError("--ground-truth must differ from --output (the dataset already "
                             "holds the object as objectGuess)")
    for target in filter(None, (args.output, args.ground_truth)):
        # what an earlier, killed run left while writing this file
        remove_stale_parts(os.path.dirname(os.path.abspath(target)), {os.path.basename(target)})
    obj, obj_name = _object_from_args(args, load_image)

    probe = args.probe
    if args.probe_radius is not None:
        size = "sigma" if args.probe == "gaussian" else "radius"
        probe = make_probe(args.probe, args.N, **{size: args.probe_radius})
    t0 = time.perf_counter()
    raw, truth = simulate_dataset(
        args.n_patterns, args.N, object=obj, probe=probe, scan=args.scan,
        nphotons=args.nphotons, seed=args.seed, step=args.step, jitter=args.jitter,
        amplitude_range=tuple(args.amplitude_range), phase_range=tuple(args.phase_range),
        noise=not args.no_noise, store_object=not args.no_object_guess, workers=args.workers)
    simulated = time.perf_counter() - t0
    save_npz(raw, args.output)
    if args.ground_truth is not None:
        atomic_save_npz(args.ground_truth, objectGuess=truth)
    elapsed = time.perf_counter() - t0
    mean_counts = float(sum(np.sum(np.square(chunk, dtype=np.float64))
                            for chunk in np.array_split(raw.diffraction,
                                                        max(1, len(raw.diffraction) // 1024)))
                        / raw.n_patterns)      # chunk by chunk: no float64 copy of the scan
    print(f"simulated {raw.n_patterns} patterns, N={raw.N}, nphotons={args.nphotons:g} "
          f"(mean counts {mean_counts:.4g}), {args.scan} scan, {args.probe} probe"
          f"{'' if args.probe_radius is None else f' (radius {args.probe_radius:g} px)'}, {obj_name} "
          f"object {truth.shape[0]}x{truth.shape[1]}, seed {args.seed} -> {args.output} "
          f"in {elapsed:.2f} s ({simulated:.2f} s simulating)")
    return 0
