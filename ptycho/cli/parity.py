"""``ptycho parity``: run the TensorFlow-vs-PyTorch parity harness on one config.

Prints the report's table; ``--json OUT`` also writes it as JSON (atomically). The exit
status is 0 when every selected stage passes, 1 when any check fails or a stage raises, and 2
for a usage error (unknown stage, unreadable config, a backend that is not installed).

Examples::

    ptycho parity                                   # default small config, all 8 stages
    ptycho parity --stages physics,translate --seed 3
    ptycho parity --config run.yaml --json parity.json
    ptycho parity --tolerances                      # print the tolerance table and exit

Registered in the CLI by ``ptycho/cli/main.py`` (``parity.add_parser(subparsers)``);
``python -m ptycho.cli.parity`` runs it on its own.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

NAME = "parity"
HELP = "compare the TensorFlow and PyTorch backends stage by stage (exit 1 on any failure)"
#: The stages of :data:`parity.report.STAGES`, spelled out so that ``ptycho --help`` stays cheap
#: (no numpy import); a test keeps the two in step.
STAGE_HELP = ("1 physics, 2 translate, 3 network, 4 loss, 5 gradients, 6 optimizer, 7 bundle, "
              "8 e2e")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``parity`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(NAME, help=HELP, description=HELP)
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``ptycho parity`` (imports nothing heavy)."""
    p.add_argument("--config", metavar="FILE",
                   help="training (or model) config, JSON or YAML; default: the harness's small "
                        "config (N=32, gridsize 2, tiny network)")
    p.add_argument("--stages", metavar="LIST",
                   help=f"comma-separated stage names or numbers (default: all): {STAGE_HELP}")
    p.add_argument("--json", metavar="OUT", dest="json_out",
                   help="also write the report as JSON to OUT (atomic write)")
    p.add_argument("--seed", type=int, default=0, help="seed of every input and weight (default 0)")
    p.add_argument("--backends", nargs=2, metavar=("A", "B"), default=None,
                   help="the two backends to compare (default: tensorflow torch)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps compared in stage 6 (default 3)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs per backend in stage 8 (default 2)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="list every compared leaf (each weight entry, each loss term)")
    p.add_argument("--tolerances", action="store_true",
                   help="print the tolerance table with the reason for each entry and exit")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the harness as ``args`` say; print the table; return the exit status."""
    import parity
    from parity.runner import DEFAULT_E2E_EPOCHS, DEFAULT_STEPS
    from parity.tolerances import table_text
    from ptycho.errors import ConfigError

    if getattr(args, "tolerances", False):
        print(table_text())
        return 0
    try:
        config = None
        if args.config:
            from ptycho.config import ModelConfig, load_config
            from ptycho.model_memory import check_model_memory
            config = load_config(args.config)
            # the harness trains the network: refuse one that cannot fit before building it
            check_model_memory(config if isinstance(config, ModelConfig) else config.model,
                               getattr(config, "batch_size", 1), training=True)
        stages = parity.select_stages(args.stages)
        backends = tuple(args.backends) if args.backends else parity.DEFAULT_BACKENDS
    except (ConfigError, ValueError, OSError) as err:
        print(f"ptycho parity: error: {err}", file=sys.stderr)
        return 2

    def progress(stage) -> None:
        verdict = "pass" if stage.ok else ("ERROR" if stage.error else "FAIL")
        print(f"  stage {stage.number} {stage.name}: {verdict} ({stage.seconds:.2f}s)",
              file=sys.stderr, flush=True)

    try:
        report = parity.run(config, stages=stages, seed=args.seed, backends=backends,
                            steps=args.steps if args.steps is not None else DEFAULT_STEPS,
                            e2e_epochs=args.epochs if args.epochs is not None else DEFAULT_E2E_EPOCHS,
                            progress=progress)
    except (ImportError, ValueError, TypeError, ConfigError) as err:
        print(f"ptycho parity: error: {err}", file=sys.stderr)
        return 2
    print(report.to_text(verbose=args.verbose))
    if args.json_out:
        report.write_json(args.json_out)
        print(f"report written to {args.json_out}", file=sys.stderr)
    return 0 if report.passed else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry point (``python -m ptycho.cli.parity``)."""
    p = configure_parser(argparse.ArgumentParser(prog="ptycho parity", description=HELP))
    return run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
