"""One process of the quality benchmark: one backend's rows, or the iterative reference.

    python -m benchmarks.quality.worker --config quick --role network --backend torch --out DIR
    python -m benchmarks.quality.worker --config quick --role reference --out DIR

Writes ``DIR/parts/<role>[-<backend>].json`` (atomically) and the reconstructed objects
under ``DIR/objects/``; progress goes to stderr. Each backend runs in its own process (as in
``python -m benchmarks``), with the config's thread count, so frameworks never share one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def part_path(out_dir: str, role: str, backend: str = "") -> str:
    return os.path.join(out_dir, "parts", f"{role}-{backend}.json" if backend else f"{role}.json")


def main(argv=None) -> int:
    from benchmarks.quality.config import CONFIGS, with_settings
    from benchmarks.quality.rows import network_rows, reference_rows

    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.worker")
    p.add_argument("--config", choices=sorted(CONFIGS), required=True)
    p.add_argument("--role", choices=("network", "reference"), required=True)
    p.add_argument("--backend", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="settings", action="append", default=[])
    a = p.parse_args(argv)
    config = with_settings(CONFIGS[a.config], a.settings)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    if a.role == "network":
        if not a.backend:
            p.error("--role network needs --backend")
        from benchmarks.worker import _configure

        impl, import_s = _configure(a.backend, config.threads)
        record = {"role": "network", "backend": impl.name, "import_s": import_s,
                  "rows": network_rows(config, impl.name, a.out, log)}
    else:
        import torch

        torch.set_num_threads(config.threads)
        record = {"role": "reference", "rows": reference_rows(config, a.out, log)}
    record["seconds"] = time.perf_counter() - start
    from ptycho.atomic import atomic_write
    from ptycho.cli.summary import to_jsonable

    path = part_path(a.out, a.role, record.get("backend", ""))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(json.dumps(to_jsonable(record), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
