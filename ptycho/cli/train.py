"""``ptycho train``: train a PINN on a scan; write the bundle, the loss curve, and a reconstruction.

Writes into ``--output-dir`` (and nowhere else), each file atomically:

* ``model.zip``: the bundle (rewritten after every epoch, so an interrupted run keeps the
  last completed epoch; see :mod:`ptycho.bundle`, ``ptycho bundle inspect``);
* ``loss.png``: training (and validation) loss per epoch;
* with ``--test-data``: ``reconstruction.npz`` and ``reconstruction.png`` of the test scan,
  and ``comparison.png`` when the test file holds the ground truth (``objectGuess``);
* ``summary.json``: timings, losses, metrics and the resolved config;
* ``mlruns/`` with ``--tracking mlflow`` when ``MLFLOW_TRACKING_URI`` is not set.

The config is built in this order, later winning: the library defaults, ``--config FILE``
(JSON or YAML, ``kind: training``), the typed flags (``--nepochs``, ``--N``, ...), then
``--set KEY=VALUE`` for any other field (``--set model.probe_trainable=true``). ``model.N``
defaults to the training data's pattern size when neither the file nor a flag sets it.

``--nproc K`` trains as K processes of one data-parallel run (see :mod:`ptycho.cli.launch`
and ``docs/distributed.md``): every global batch of ``--batch-size`` groups is split over
the ranks, rank 0 writes every file, and the run follows the path of one process.

Examples::

    ptycho train --train-data train.npz --test-data test.npz --output-dir run1
    ptycho train --train-data train.npz --output-dir run2 --config small.yaml --backend torch \\
        --nepochs 20 --batch-size 32 --seed 3 --set lr_schedule=cosine
    ptycho train --train-data train.npz --output-dir run3 --backend torch --nproc 4
    torchrun --nproc-per-node 4 -m ptycho train --train-data train.npz --output-dir run3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from ptycho.cli.options import (add_backend_option, add_distributed_options, add_quiet_option,
                                nonnegative_int, parse_assignment, positive_int, seed_int)

NAME = "train"
HELP = "train a PINN on a scan (NPZ); write the model bundle, loss curve and a reconstruction"

DESCRIPTION = HELP + """.

Writes into --output-dir: model.zip (the bundle, rewritten after every epoch), loss.png,
summary.json, and with --test-data reconstruction.npz, reconstruction.png and (when the test
file holds objectGuess) comparison.png. Config precedence, later winning: defaults, --config,
typed flags, --set KEY=VALUE. model.N defaults to the training data's pattern size."""

EXAMPLES = """examples:
  ptycho train --train-data train.npz --test-data test.npz --output-dir run1
  ptycho train --train-data train.npz --output-dir run2 --config small.yaml --backend torch \\
      --nepochs 20 --batch-size 32 --seed 3 --set lr_schedule=cosine
  ptycho train --train-data train.npz --output-dir run3 --backend torch --nproc 4
  torchrun --nproc-per-node 4 -m ptycho train --train-data train.npz --output-dir run3"""

#: Typed flags: (flag, config key (dotted), argparse type, help). ``--set`` covers the rest.
_FLAGS = (
    ("--nepochs", "nepochs", positive_int, "training epochs"),
    ("--batch-size", "batch_size", positive_int, "groups per optimiser step"),
    ("--learning-rate", "learning_rate", float, "Adam learning rate"),
    ("--lr-schedule", "lr_schedule", str, "learning-rate schedule"),
    ("--nphotons", "nphotons", float, "mean photon count per pattern (sets the intensity scale)"),
    ("--n-groups", "n_groups", positive_int, "groups drawn from the scan (default: one per point)"),
    ("--neighbor-count", "neighbor_count", positive_int, "K nearest neighbours a group is drawn from"),
    ("--nll-weight", "nll_weight", float, "weight of the Poisson NLL"),
    ("--mae-weight", "mae_weight", float, "weight of the amplitude MAE"),
    ("--realspace-weight", "realspace_weight", float, "weight of the real-space overlap term"),
    ("--early-stopping-patience", "early_stopping_patience", positive_int,
     "stop after this many epochs without improvement"),
    ("--average-epochs", "average_epochs", nonnegative_int,
     "the model is the mean of the last this many epochs' weights (0: the last epoch's)"),
    ("--N", "model.N", positive_int, "pattern side in pixels (default: the data's)"),
    ("--gridsize", "model.gridsize", positive_int, "patterns per group along each axis"),
    ("--base-filters", "model.base_filters", positive_int, "width of the first encoder level"),
    ("--n-filters-scale", "model.n_filters_scale", positive_int, "multiplies every width"),
    ("--amp-activation", "model.amp_activation", str, "activation of the amplitude head"),
    ("--precision", "precision", str,
     "the training step's convolutions: float32, or bfloat16 (mixed precision; 2.4-2.9x "
     "faster with bfloat16 matrix units, e.g. Intel AMX; emulated and 7-9x slower on a CPU "
     "without bfloat16 arithmetic, which a warning says)"),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers``; return its parser."""
    p = subparsers.add_parser(NAME, help=HELP, description=DESCRIPTION, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-data", metavar="FILE.npz",
                   help="training scan (NPZ data contract); default: the config's train_data_file")
    p.add_argument("--test-data", metavar="FILE.npz",
                   help="scan to validate on each epoch and to reconstruct at the end")
    p.add_argument("--output-dir", metavar="DIR",
                   help="folder for every output (created); default: the config's output_dir")
    p.add_argument("--config", metavar="FILE", help="training config, JSON or YAML")
    add_backend_option(p)
    p.add_argument("--seed", type=seed_int, default=None,
                   help="seed of the initial weights, grouping and batch order (default: config's)")
    p.add_argument("--tracking", choices=("mlflow", "none"), default=None,
                   help="experiment tracking (default: the config's, which is off)")
    from ptycho.config.schema import AMP_ACTIVATIONS, LR_SCHEDULES, PRECISIONS

    choices = {"lr_schedule": LR_SCHEDULES, "model.amp_activation": AMP_ACTIVATIONS,
               "precision": PRECISIONS}
    for flag, key, typ, text in _FLAGS:
        p.add_argument(flag, dest=key.replace(".", "__"), type=typ, default=None, help=text,
                       metavar=key.rsplit(".", 1)[-1].upper() if key not in choices else None,
                       choices=choices.get(key))
    p.add_argument("--set", dest="assignments", type=parse_assignment, action="append",
                   default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set model.probe_trainable=true (repeatable)")
    add_distributed_options(p)
    add_quiet_option(p)
    return p


def build_config(args: argparse.Namespace, data_n: int, loaded=None):
    """The TrainingConfig of this run: defaults < --config < flags < --set; N from the data.

    ``loaded``: the ``(config, document)`` of ``--config`` when the caller has read it
    already (:func:`ptycho.cli.options.load_model_config_file`); read here otherwise.
    """
    from ptycho.cli.options import apply_overrides, document_sets_key, load_model_config_file
    from ptycho.config import TrainingConfig

    base, document = loaded if loaded is not None else load_model_config_file(args.config,
                                                                               TrainingConfig)
    overrides: dict = {}
    n_from_user = (getattr(args, "model__N") is not None
                   or any(k == "model.N" for k, _ in args.assignments)
                   or document_sets_key(document, "model", "N"))
    if not n_from_user:
        overrides["model.N"] = data_n
    for _, key, _, _ in _FLAGS:
        value = getattr(args, key.replace(".", "__"))
        if value is not None:
            overrides[key] = value
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.backend is not None:
        overrides["backend"] = args.backend
    if args.tracking is not None:
        overrides["tracking"] = None if args.tracking == "none" else args.tracking
    for key, value in args.assignments:
        overrides[key] = value
    config = apply_overrides(base, overrides)
    files = {"train_data_file": args.train_data or config.train_data_file,
             "test_data_file": args.test_data or config.test_data_file,
             "output_dir": args.output_dir or config.output_dir}
    return apply_overrides(config, files)


def _backend_choice(args: argparse.Namespace, config, document) -> tuple[str, str]:
    """(backend, why), with a backend from ``--set backend=...`` counted as an argument and
    one from the config file reported as such."""
    from ptycho.cli.options import document_sets_key, resolve_backend

    from_args = args.backend is not None or any(k == "backend" for k, _ in args.assignments)
    if from_args:            # config.backend holds the flags' outcome (--set after --backend)
        return resolve_backend(config.backend, None)
    from_file = config.backend if document_sets_key(document, "backend") else None
    return resolve_backend(None, from_file, args.config)


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say; print a summary; return the exit status (1 if training failed).

    Every input is read and checked (the files, the config, the memory the training and the
    test reconstruction will take) before the output folder is created and locked
    (:func:`ptycho.outdir.output_folder`); a run that fails before writing anything leaves no
    folder behind.
    """
    from ptycho.cli.launch import check_nproc, launch, launched_as_rank
    from ptycho.cli.options import (about_file, backend_ready, check_input_file,
                                    check_output_dir, input_errors, launch_backend,
                                    load_model_config_file, prepare_framework_environment)
    from ptycho.config import TrainingConfig
    from ptycho.data.contract import load_npz
    from ptycho.outdir import output_folder
    from ptycho.workflows.distributed import process_group
    from ptycho.workflows.reconstruct import plan_reconstruction
    from ptycho.workflows.train import check_training_memory, prepare

    prog = f"ptycho {NAME}"
    t0 = time.perf_counter()
    loaded = load_model_config_file(args.config, TrainingConfig)
    train_file = args.train_data or loaded[0].train_data_file
    if train_file is None:
        raise ValueError("--train-data is required (or a config with train_data_file)")
    check_input_file(train_file, "--train-data" if args.train_data else "train_data_file")
    if args.test_data is not None:
        check_input_file(args.test_data, "--test-data")
    world = launched_as_rank()
    check_nproc(args.nproc, world)
    if args.nproc > 1 and world is None:
        with input_errors(prog):
            return launch(prog, args._ptycho_argv, args.nproc,
                          launch_backend(args, TrainingConfig))
    lead = world is None or world.rank == 0      # the rank that writes
    if not lead:
        prog = f"{prog} [rank {world.rank}]"
    # The config decides N; the data's N is its default.
    raw_train = load_npz(train_file)
    config = build_config(args, raw_train.N, loaded)
    if config.output_dir is None:
        raise ValueError("--output-dir is required (or a config with output_dir)")
    check_output_dir(config.output_dir)
    if raw_train.N != config.model.N:
        raise ValueError(f"the training data has N={raw_train.N} but the config has "
                         f"model.N={config.model.N}; pass --N {raw_train.N} or fix the config")
    raw_test = None
    if config.test_data_file is not None:
        check_input_file(config.test_data_file, "--test-data")
        raw_test = load_npz(config.test_data_file)
        if raw_test.N != config.model.N:
            raise ValueError(f"the test data has N={raw_test.N} but the model has "
                             f"N={config.model.N}")
    backend, why = _backend_choice(args, config, loaded[1])
    # what the run will allocate, checked before anything is written
    t_prepare = time.perf_counter()
    with about_file(train_file):
        grouped = prepare(raw_train, config)
        check_training_memory(config, grouped)
    grouped_test, test_plan = None, None
    if raw_test is not None:
        with about_file(config.test_data_file):
            grouped_test = prepare(raw_test, config)
            test_plan = plan_reconstruction(config, raw_test, chunk_groups=_chunk_groups(config))
    prepare_s = time.perf_counter() - t_prepare
    # the lock first: a second run finds the folder busy before a framework is imported; a
    # missing framework then ends the run with the folder removed again (it is empty)
    # (in a multi-process run only rank 0 writes, and takes the lock)
    with output_folder(config.output_dir, prog) if lead else contextlib.nullcontext():
        with input_errors(prog):
            prepare_framework_environment()
            backend_ready(backend)
            with process_group(backend, timeout_s=args.collective_timeout) as group:
                return _train_and_report(prog, config, (raw_train, grouped),
                                         (raw_test, grouped_test), test_plan, (backend, why),
                                         args.quiet, t0, prepare_s, group)


def _chunk_groups(config) -> int:
    """Groups per chunk of the final reconstruction of the test scan."""
    return max(4 * config.batch_size, 64)


def _train_and_report(prog, config, train_data, test_data, test_plan, choice, quiet: bool,
                      t0: float, prepare_s: float, group=None) -> int:
    """Train (as one rank of ``group``, when given), reconstruct the test scan, and write
    and print the results (rank 0 alone in a group)."""
    from backends.registry import framework_version
    from ptycho.cli import summary as S
    from ptycho.cli.progress import ChunkProgress, TrainingProgress, bars_enabled
    from ptycho.config import config_to_dict
    from ptycho.data.grouping import distinct_patterns
    from ptycho.errors import DistributedError, TrainingError
    from ptycho.figures import save_loss_figure
    from ptycho.physics.losses import LossSettings
    from ptycho.training import NonFiniteLossError
    from ptycho.workflows.cdi import FIGURE_NAMES, evaluate_against_truth, write_outputs
    from ptycho.workflows.reconstruct import reconstruct
    from ptycho.workflows.train import BUNDLE_NAME, train

    (raw_train, grouped), (raw_test, grouped_test) = train_data, test_data
    backend, why = choice
    lead = group is None or group.rank == 0
    bars = bars_enabled(quiet) and lead
    note = nphotons_note(raw_train.diffraction, config.nphotons)
    if note and lead:
        print(f"{prog}: note: {note}", file=sys.stderr, flush=True)
    if bars:
        ranks = f" x {group.size} processes" if group is not None else ""
        print(f"training on {backend}{ranks} ({why}): {raw_train.n_patterns} patterns, "
              f"N={config.model.N}, gridsize {config.model.gridsize}, {config.nepochs} epochs",
              flush=True)
    progress = TrainingProgress(config.nepochs, enabled=bars)
    try:
        result = train(config, grouped, grouped_test, backend=backend, progress=progress,
                       group=group)
    except (TrainingError, DistributedError) as err:
        progress.close()
        # a non-finite loss is the same on every rank: rank 0 reports it
        if lead or not isinstance(err, NonFiniteLossError):
            bundle = os.path.join(config.output_dir, BUNDLE_NAME)
            kept = (f"; the last completed epoch is saved in {bundle}"
                    if os.path.exists(bundle) else "")
            print(f"{prog}: error: {' '.join(str(err).split())}{kept}", file=sys.stderr,
                  flush=True)
        return 1
    progress.close()
    model, history = result.model, result.history
    paths = {"bundle": result.bundle_path}
    recon_info, metrics, truth = None, None, None
    if raw_test is not None:
        chunk = ChunkProgress("reconstruct", enabled=bars)
        recon = reconstruct(model, raw_test, keep_patches=False, progress=chunk,
                            chunk_groups=_chunk_groups(config), plan=test_plan)
        chunk.close()
        if not lead:            # rank 0 holds the object and writes every file
            return 130 if history.interrupted else 0
        truth = raw_test.object_guess
        metrics = evaluate_against_truth(recon, truth)
        paths.update(write_outputs(config.output_dir, recon, history, truth,
                                   LossSettings.from_config(config)))
        recon_info = S.reconstruction_summary(recon, config.model.n_channels)
    elif not lead:
        return 130 if history.interrupted else 0
    elif history.epochs:
        paths["loss_figure"] = os.path.join(config.output_dir, FIGURE_NAMES["loss"])
        save_loss_figure(paths["loss_figure"], history, LossSettings.from_config(config))

    timings = dict(result.timings)
    timings["prepare_s"] = timings.get("prepare_s", 0.0) + prepare_s   # grouping ran up front
    timings["wall_s"] = time.perf_counter() - t0
    hist = S.history_summary(history)
    summary = {"command": "train", "backend": backend, "backend_reason": why,
               "framework_version": framework_version(backend),
               "n_train_patterns": raw_train.n_patterns,
               "n_test_patterns": raw_test.n_patterns if raw_test is not None else None,
               "processes": 1 if group is None else group.size,
               "timings": timings, "history": hist, "reconstruction": recon_info,
               "metrics": metrics, "config": config_to_dict(config)}
    paths["summary"] = os.path.join(config.output_dir, S.SUMMARY_NAME)
    summary["paths"] = paths
    S.write_summary(config.output_dir, summary)

    used = distinct_patterns(result.train_data.indices)
    seen = S.patterns_phrase(used, len(result.train_data), config.model.n_channels)
    if used != raw_train.n_patterns:       # n_groups drew a subset of the scan
        seen += f", of the scan's {raw_train.n_patterns}"
    ended = ("interrupted (Ctrl-C); the last completed epoch was kept" if history.interrupted
             else "stopped early" if history.stopped_early else "done")
    lines = [f"{prog}: {ended} in {timings['wall_s']:.1f} s on {backend} "
             f"{summary['framework_version'] or ''}".rstrip(),
             f"  training: {hist['epochs']} epoch{'' if hist['epochs'] == 1 else 's'} in {timings['train_s']:.1f} s, "
             f"{timings['patterns_per_s']:.0f} patterns/s ({seen})"]
    if hist["final_loss"]:
        lines.append(f"  final loss (epoch {hist['epochs']}): {S.loss_line(hist['final_loss'])}")
    if hist["final_val_loss"]:
        lines.append(f"  final validation loss: {S.loss_line(hist['final_val_loss'])}")
    if recon_info is not None:
        lines += S.recon_lines(recon_info, metrics, truth is not None)
    lines.append(S.outputs_line(config.output_dir, paths))
    if config.tracking == "mlflow":
        lines.append("  tracking: MLflow at " + (os.environ.get("MLFLOW_TRACKING_URI")
                                                 or os.path.join(config.output_dir, "mlruns")))
    S.print_lines(lines)
    return 130 if history.interrupted else 0


#: Ratio between nphotons and the data's mean total counts beyond which the run notes it.
NPHOTONS_NOTE_RATIO = 10.0


def nphotons_note(diffraction, nphotons: float) -> str:
    """A hint when ``nphotons`` is far from the data's mean total counts (``mean sum A^2``).

    Raw data hold amplitudes sqrt(counts), so their mean total counts per pattern is what
    ``nphotons`` should usually be; preprocessed data may differ, hence a note, not an error.

    >>> import numpy as np
    >>> nphotons_note(np.full((2, 4, 4), 250.0, np.float32), 1e9)[:40]
    'nphotons = 1e+09 but the training data h'
    >>> nphotons_note(np.full((2, 4, 4), 250.0, np.float32), 1e6)
    ''
    """
    import numpy as np

    sample = diffraction[:min(len(diffraction), 1024)]
    counts = float(np.mean(np.sum(np.square(sample, dtype=np.float64), axis=(1, 2))))
    if counts > 0 and max(nphotons / counts, counts / nphotons) > NPHOTONS_NOTE_RATIO:
        return (f"nphotons = {nphotons:.3g} but the training data hold {counts:.3g} counts per "
                f"pattern on average; if they are raw counts, pass --nphotons {counts:.3g}")
    return ""
