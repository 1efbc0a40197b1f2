"""``ptycho reconstruct``: reconstruct a scan with a trained model bundle, in any backend.

Writes into ``--output-dir`` (and nowhere else), each file atomically: ``reconstruction.npz``
(``obj`` complex64, ``amplitude``, ``phase`` in radians, ``coverage``, ``positions`` (x, y)),
``reconstruction.png``, ``comparison.png`` when the data holds the ground truth
(``objectGuess``), and ``summary.json``. The scan is read memory-mapped and streamed through
the model in chunks, so memory is bounded by the object and one chunk.

The bundle may come from either backend; it is verified before the framework is imported.
Diffraction is scaled with the ``nphotons`` the model was trained with.

``--nproc K`` splits the scan over K processes (``docs/distributed.md``): each predicts and
stitches its part, the stitching sums are added up, and rank 0 normalises, refines
(``--refine``, alone) and writes.

Examples::

    ptycho reconstruct --model run1/model.zip --data scan.npz --output-dir recon1
    ptycho reconstruct --model run1 --data scan.npz --output-dir recon2 --backend torch \\
        --batch-size 256 --precision bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

from ptycho.cli.options import (add_backend_option, add_distributed_options, add_quiet_option,
                                nonnegative_int, positive_float, positive_int, seed_int)

NAME = "reconstruct"
HELP = "reconstruct a scan (NPZ) with a trained model bundle; write the object and figures"

DESCRIPTION = HELP + """.

Writes into --output-dir: reconstruction.npz (obj, amplitude, phase, coverage, positions),
reconstruction.png, comparison.png when the data holds objectGuess, and summary.json.
--model may name the bundle or the folder holding model.zip; a bundle written by either
backend loads into either. Precedence, later winning: defaults, --config (an inference
config), flags."""

EXAMPLES = """examples:
  ptycho reconstruct --model run1/model.zip --data scan.npz --output-dir recon1
  ptycho reconstruct --model run1 --data scan.npz --output-dir recon2 --backend torch \\
      --batch-size 256 --precision bfloat16
  ptycho reconstruct --model run1 --data big_scan.npz --output-dir recon3 --nproc 4"""

#: Groups streamed per chunk, in units of the prediction batch (one progress update each).
CHUNK_BATCHES = 4


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reconstruct`` subcommand to ``subparsers``; return its parser."""
    p = subparsers.add_parser(NAME, help=HELP, description=DESCRIPTION, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="BUNDLE",
                   help="model bundle (model.zip) or the folder holding it; default: the "
                        "config's model_path")
    p.add_argument("--data", metavar="FILE.npz",
                   help="scan to reconstruct (NPZ data contract); default: the config's "
                        "test_data_file")
    p.add_argument("--output-dir", metavar="DIR",
                   help="folder for every output (created); default: the config's output_dir")
    p.add_argument("--config", metavar="FILE",
                   help="inference config, JSON or YAML (model_path, test_data_file, "
                        "output_dir, batch_size, precision, backend); the network and nphotons "
                        "always come from the bundle")
    add_backend_option(p)
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="patterns groups per prediction batch (default 64)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default=None,
                   help="compute precision of the network (default float32)")
    p.add_argument("--seed", type=seed_int, default=None,
                   help="seed of the neighbour grouping for gridsize > 1 (default: the model's)")
    p.add_argument("--spacing", type=positive_float, default=None, metavar="PX",
                   help="the network predicts only scan points about PX object pixels apart "
                        "that still cover the scan (fewer network passes on a dense scan, a "
                        "noisier object); refinement and the scan's estimate still use every "
                        "pattern (default: every point)")
    p.add_argument("--refine", type=nonnegative_int, default=0, metavar="K",
                   help="then K iterations of physics refinement: the object (from the "
                        "network's) optimised directly against the measured amplitudes "
                        "(default 0: the network alone)")
    p.add_argument("--refine-probe", action="store_true",
                   help="with --refine, refine the probe too")
    add_distributed_options(p)
    add_quiet_option(p)
    return p


def _bundle_path(path: str) -> str:
    from ptycho.workflows.train import BUNDLE_NAME

    if os.path.isdir(path):
        inside = os.path.join(path, BUNDLE_NAME)
        if not os.path.isfile(inside):
            raise ValueError(f"--model {path!r} is a folder without {BUNDLE_NAME}")
        return inside
    if not os.path.exists(path):
        raise ValueError(f"--model {path!r}: no such file")
    return path


def build_config(args: argparse.Namespace, loaded=None):
    """The InferenceConfig of this run: defaults < --config < flags.

    ``loaded``: the ``(config, document)`` of ``--config`` when already read.
    """
    from ptycho.cli.options import apply_overrides, load_model_config_file
    from ptycho.config import InferenceConfig

    base, _ = loaded if loaded is not None else load_model_config_file(args.config,
                                                                        InferenceConfig)
    overrides = {key: value for key, value in (
        ("model_path", args.model), ("test_data_file", args.data), ("output_dir", args.output_dir),
        ("batch_size", args.batch_size), ("precision", args.precision), ("backend", args.backend),
        ("seed", args.seed)) if value is not None}
    return apply_overrides(base, overrides)


def run(args: argparse.Namespace) -> int:
    """Reconstruct as ``args`` say; print a summary; return 0.

    The bundle is verified (once), the scan read, and the memory the reconstruction will take
    (object canvas, overlap-constraint canvases, the network for one batch) checked before the
    output folder is created and locked (:func:`ptycho.outdir.output_folder`) and a framework
    imported; a run that fails before writing anything leaves no folder behind.
    """
    import dataclasses

    from ptycho.bundle import read_bundle
    from ptycho.cli.options import (about_file, backend_ready, check_input_file,
                                    check_output_dir, document_sets_key, input_errors,
                                    load_model_config_file, prepare_framework_environment,
                                    resolve_backend)
    from ptycho.config import InferenceConfig, TrainingConfig
    from ptycho.data.contract import load_npz
    from ptycho.cli.launch import check_nproc, launch, launched_as_rank
    from ptycho.outdir import output_folder
    from ptycho.workflows.distributed import process_group
    from ptycho.workflows.reconstruct import plan_reconstruction, window_of

    t0 = time.perf_counter()
    prog = f"ptycho {NAME}"
    if args.refine_probe and not args.refine:
        raise ValueError("--refine-probe needs --refine K (K > 0)")
    loaded = load_model_config_file(args.config, InferenceConfig)
    config = build_config(args, loaded)
    for value, flag in ((config.model_path, "--model"), (config.test_data_file, "--data"),
                        (config.output_dir, "--output-dir")):
        if value is None:
            raise ValueError(f"{flag} is required")
    bundle = _bundle_path(config.model_path)
    check_input_file(config.test_data_file, "--data")
    check_output_dir(config.output_dir)
    world = launched_as_rank()
    check_nproc(args.nproc, world)
    if args.nproc > 1 and world is None:
        from_file = config.backend if document_sets_key(loaded[1], "backend") else None
        with input_errors(prog):
            return launch(prog, args._ptycho_argv, args.nproc,
                          resolve_backend(args.backend, from_file, args.config)[0])
    lead = world is None or world.rank == 0      # the rank that writes
    if not lead:
        prog = f"{prog} [rank {world.rank}]"
    raw = load_npz(config.test_data_file, mmap_mode="r")
    contents = read_bundle(bundle, batch_size=config.batch_size)   # verified before any import
    n_model = contents.model_config.N
    if raw.N != n_model:
        raise ValueError(f"the data has N={raw.N} but the model in {bundle} expects N={n_model}")
    train_config = (contents.config if isinstance(contents.config, TrainingConfig)
                    else TrainingConfig(model=contents.model_config))
    if args.seed is not None or document_sets_key(loaded[1], "seed"):
        train_config = dataclasses.replace(train_config, seed=config.seed)
    with about_file(config.test_data_file):
        plan = plan_reconstruction(train_config, raw, batch_size=config.batch_size,
                                   chunk_groups=CHUNK_BATCHES * config.batch_size,
                                   spacing=args.spacing,
                                   window=window_of(contents.model_config,
                                                    contents.weights["probe"]))
    from_file = config.backend if document_sets_key(loaded[1], "backend") else None
    backend, why = resolve_backend(args.backend, from_file, args.config)
    # the lock first: a second run finds the folder busy before a framework is imported; a
    # missing framework then ends the run with the folder removed again (it is empty)
    # (in a multi-process run only rank 0 writes, and takes the lock)
    with output_folder(config.output_dir, prog) if lead else contextlib.nullcontext():
        with input_errors(prog):
            prepare_framework_environment()
            backend_ready(backend)
            with process_group(backend, timeout_s=args.collective_timeout) as group:
                return _reconstruct_and_report(prog, config, bundle, contents, train_config, raw,
                                               plan, (backend, why), args, t0, group)


def _reconstruct_and_report(prog, config, bundle, contents, train_config, raw, plan, choice,
                            args, t0, group=None) -> int:
    """Reconstruct (as one rank of ``group``, when given); rank 0 writes and prints."""
    import dataclasses

    from backends.registry import framework_version
    from ptycho.cli import summary as S
    from ptycho.cli.progress import ChunkProgress, RefineProgress, bars_enabled
    from ptycho.workflows.cdi import evaluate_against_truth, write_outputs
    from ptycho.workflows.inference import build_inference_model
    from ptycho.workflows.reconstruct import reconstruct

    backend, why = choice               # (process_group set deterministic kernels, TF32 off)
    lead = group is None or group.rank == 0
    t_load = time.perf_counter()
    model, _ = build_inference_model(contents, backend=backend, group=group)
    model.config = train_config
    load_s = time.perf_counter() - t_load
    bars = bars_enabled(args.quiet) and lead
    chunk = ChunkProgress("reconstruct", enabled=bars)
    refining = RefineProgress(args.refine, enabled=bars)
    recon = reconstruct(model, raw, batch_size=config.batch_size, precision=config.precision,
                        keep_patches=False, progress=chunk,
                        chunk_groups=CHUNK_BATCHES * config.batch_size, plan=plan,
                        refine=args.refine, refine_probe=args.refine_probe,
                        refine_progress=refining)
    chunk.close()
    refining.close()
    if not lead:                # rank 0 holds the object and writes every file
        return 0
    truth = raw.object_guess
    metrics = evaluate_against_truth(recon, truth)
    paths = write_outputs(config.output_dir, recon, None, truth)
    recon_info = S.reconstruction_summary(recon, model.model_config.n_channels)
    wall = time.perf_counter() - t0
    summary = {"command": "reconstruct", "backend": backend, "backend_reason": why,
               "framework_version": framework_version(backend), "bundle": bundle,
               "bundle_backend": contents.backend, "data": config.test_data_file,
               "precision": config.precision, "batch_size": config.batch_size,
               "spacing": args.spacing,
               "processes": 1 if group is None else group.size,
               "timings": {"load_model_s": load_s, "reconstruct_s": recon.seconds, "wall_s": wall},
               "reconstruction": recon_info, "metrics": metrics}
    if recon.refinement is not None:
        ref = recon.refinement
        summary["refinement"] = {"iterations": ref["iterations"], "refine_probe": ref["refine_probe"],
                                 "seconds": ref["seconds"], "nll": ref["nll"]}
        summary["network_metrics"] = evaluate_against_truth(
            dataclasses.replace(recon, obj=recon.network_obj, refinement=None), truth)
    paths["summary"] = os.path.join(config.output_dir, S.SUMMARY_NAME)
    summary["paths"] = paths
    S.write_summary(config.output_dir, summary)
    version = summary["framework_version"] or "(version unknown)"
    lines = [f"{prog}: done in {wall:.1f} s on {backend} {version} ({config.precision}); "
             f"model written by {contents.backend}, loaded in {load_s:.1f} s"]
    if recon.refinement is not None:
        ref = recon.refinement
        lines.append(f"refinement: {ref['iterations']} iterations in {ref['seconds']:.1f} s, "
                     f"NLL {ref['nll'][0]:.4g} -> {ref['nll'][-1]:.4g}"
                     + (" (probe refined too)" if ref["refine_probe"] else ""))
        if summary["network_metrics"] is not None:
            lines.append("  network alone (before refinement):")
            lines += ["    " + line for line in S.metrics_lines(summary["network_metrics"])]
    lines += S.recon_lines(recon_info, metrics, truth is not None)
    lines.append(S.outputs_line(config.output_dir, paths))
    S.print_lines(lines)
    return 0
