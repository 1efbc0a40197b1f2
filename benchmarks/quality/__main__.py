"""``python -m benchmarks.quality``: run the quality suite; write JSON, tables and figures.

Examples::

    python -m benchmarks.quality --quick                     # one held-out object (~5-10 min)
    python -m benchmarks.quality                             # the full suite (make quality)
    python -m benchmarks.quality --natural                   # natural images at 1e9 only
    python -m benchmarks.quality --quick --backends torch --no-reference
    python -m benchmarks.quality --readme benchmarks/README.md
    python -m benchmarks.quality --natural --set precision=bfloat16 --set base_filters=32
    python -m benchmarks.quality --render quality_output --readme benchmarks/README.md

Writes into ``--out`` (default ``quality_output/``): ``quality.json`` (every number),
``quality.md`` (the tables) and ``figures/*.png``. ``--readme`` also replaces the section
between the quality markers of that file with the tables and links to the figures, copied
next to it under ``quality/figures/``; ``--render DIR`` does that again for a saved run
(``DIR`` its ``--out``) without running anything. Each backend and the reference run in their own
process (``benchmarks.quality.worker``); this process imports no framework.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.quality.config import CONFIGS, with_settings
from benchmarks.quality.worker import log, part_path


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""          # CPU, where the timings are meant
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _worker(config_name: str, settings, role: str, work: str, backend: str = "") -> dict:
    args = [sys.executable, "-m", "benchmarks.quality.worker", "--config", config_name,
            "--role", role, "--out", work] + (["--backend", backend] if backend else [])
    args += [f"--set={text}" for text in settings]
    proc = subprocess.run(args, env=_env(), stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[1:])} failed with exit status {proc.returncode}")
    from backends.registry import canonical_name

    name = canonical_name(backend) if backend else ""
    with open(part_path(work, role, name)) as f:
        return json.load(f)


def _ptychi_version():
    from importlib import metadata

    try:
        return metadata.version("ptychi")
    except metadata.PackageNotFoundError:
        return None


def run(config_name: str, out: str, backends=None, reference: bool = True,
        readme=None, keep_work: bool = False, settings=()) -> dict:
    """Run the suite ``config_name`` (with the ``KEY=VALUE`` ``settings``); write the outputs
    into ``out``; return the results."""
    from benchmarks.machine import machine_info, versions
    from benchmarks.quality import report
    from benchmarks.quality.rows import baseline_rows, heldout_truths
    from ptycho.atomic import atomic_write
    from ptycho.cli.summary import to_jsonable

    config = with_settings(CONFIGS[config_name], settings)
    backends = backends or list(config.backends)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="quality-")
    try:
        network = []
        for backend in backends:
            log(f"== {backend}")
            network += _worker(config_name, settings, "network", work, backend)["rows"]
        references = []
        if reference:
            log("== iterative reference (pty-chi)")
            references = _worker(config_name, settings, "reference", work)["rows"]
        variants = list(config.variants)
        rows = report.merge(network, references, baseline_rows(config, work), variants)
        results = {"benchmark": "quality", "config": config.to_dict(), "started": started,
                   "machine": machine_info(), "versions": versions(),
                   "ptychi_version": _ptychi_version(),
                   "command": " ".join(["python -m benchmarks.quality", *sys.argv[1:]]),
                   "rows": rows, "references": references}
        figures = report.save_figures(rows, heldout_truths(config), variants, work,
                                      os.path.join(out, "figures"))
    finally:
        if keep_work:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.perf_counter() - t0
    results["figures"] = figures
    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, "quality.json"), "w") as f:
        f.write(json.dumps(to_jsonable(results), indent=1, allow_nan=False) + "\n")
    publish(results, out, readme)
    log(f"done in {results['seconds'] / 60:.1f} min: {out}/quality.json, quality.md, "
        f"figures/ ({len(figures)})")
    return results


def publish(results: dict, out: str, readme=None) -> None:
    """Write the tables of ``results`` (a run's ``quality.json``, its figures in
    ``out/figures``) to ``out/quality.md`` and, with ``readme``, into that file's quality
    section, the figures copied next to it under ``quality/figures/``."""
    from benchmarks.quality import report
    from ptycho.atomic import atomic_write

    figures = results["figures"]
    fig_dir = os.path.join(out, "figures")
    with atomic_write(os.path.join(out, "quality.md"), "w") as f:
        f.write(report.summary_text(results, figures, "figures") + "\n")
    if readme:
        from benchmarks.report import update_readme

        link_dir = os.path.join("quality", "figures")
        dest = os.path.join(os.path.dirname(os.path.abspath(readme)), link_dir)
        os.makedirs(dest, exist_ok=True)
        # the previous run's figures go (the ones its section links; others in the folder
        # belong to the rest of the file)
        for name in set(_section_figures(readme, link_dir)) - set(figures):
            if os.path.isfile(os.path.join(dest, name)):
                os.remove(os.path.join(dest, name))
        for name in figures:
            shutil.copyfile(os.path.join(fig_dir, name), os.path.join(dest, name))
        update_readme(readme, report.summary_text(results, figures, link_dir),
                      markers=(report.BEGIN, report.END))


def _section_figures(readme: str, link_dir: str) -> list[str]:
    """The figures (file names) that ``readme``'s quality section links under ``link_dir``."""
    from benchmarks.quality import report

    if not os.path.isfile(readme):
        return []
    with open(readme) as f:
        doc = f.read()
    begin, end = doc.find(report.BEGIN), doc.find(report.END)
    if begin < 0 or end < begin:
        return []
    return re.findall(r"\]\(" + re.escape(link_dir + "/") + r"([^)/\s]+\.png)\)",
                      doc[begin:end])


def render(saved: str, readme=None) -> dict:
    """Publish a saved run again (``saved``: a run's ``--out`` folder) without running
    anything: its ``quality.md`` and, with ``readme``, that file's quality section."""
    path = os.path.join(saved, "quality.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: --render takes the --out folder of "
                                "a finished run")
    with open(path) as f:
        results = json.load(f)
    if results.get("benchmark") != "quality" or not isinstance(results.get("figures"), list):
        raise ValueError(f"{path} is not the output of a quality run (no 'benchmark': "
                         "'quality' or no list of 'figures')")
    missing = [name for name in results["figures"]
               if not os.path.isfile(os.path.join(saved, "figures", name))]
    if missing:
        raise FileNotFoundError(f"{saved}/figures lacks {len(missing)} of the run's figures: "
                                f"{', '.join(missing)}")
    publish(results, saved, readme)
    log(f"rendered {path} ({results['started']}) into {saved}/quality.md"
        + (f" and {readme}" if readme else ""))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="config", const="quick",
                      help="one held-out object, fewer patterns and epochs")
    size.add_argument("--natural", action="store_const", dest="config", const="natural",
                      help="the natural-image held-out objects at 1e9 photons only")
    size.add_argument("--smoke", action="store_const", dest="config", const="smoke",
                      help="one tiny row (what the test runs)")
    p.add_argument("--out", default="quality_output", help="output folder (default %(default)s)")
    p.add_argument("--backends", nargs="+", default=None,
                   help="backends to run (default: the config's, both)")
    p.add_argument("--no-reference", action="store_true", help="skip the pty-chi reference")
    p.add_argument("--readme", default=None, help="replace the quality section of this file")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the work folder (reconstructed objects, the workers' JSON)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="change one of the size's fields (repeatable), e.g. precision=bfloat16, "
                        "base_filters=32, gridsizes=1,2, nepochs=24")
    p.add_argument("--render", default=None, metavar="DIR",
                   help="run nothing: publish the saved run in DIR (its --out folder) again, "
                        "its tables and, with --readme, the README section")
    a = p.parse_args(argv)
    if a.render:
        given = [flag for flag, value in (("--quick/--natural/--smoke", a.config),
                                          ("--backends", a.backends), ("--set", a.settings),
                                          ("--no-reference", a.no_reference),
                                          ("--keep-work", a.keep_work)) if value]
        if given:
            p.error(f"--render publishes a saved run: {', '.join(given)} cannot go with it")
        try:
            render(a.render, a.readme)
        except (OSError, ValueError) as err:
            p.error(str(err))
        return 0
    try:
        with_settings(CONFIGS[a.config or "full"], a.settings)
    except ValueError as err:
        p.error(str(err))
    run(a.config or "full", a.out, a.backends, not a.no_reference, a.readme, a.keep_work,
        a.settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
