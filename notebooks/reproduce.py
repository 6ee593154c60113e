"""The main job (`make reproduce`): retrain the SE-loss ablation, run every notebook, compare with the committed table.

    python notebooks/reproduce.py            # retrain, then all notebooks, then the comparison
    python notebooks/reproduce.py --fast     # no training: the notebooks on the committed sweep
    python notebooks/reproduce.py 03 05      # only the notebooks whose names start so

Three phases, each timed (the times are printed at the end and written to
build/reproduce_phases.json, which ``benchmarks/train.py`` prints):

1. Training (skipped with ``--fast``): FCN, EncNet (alpha = 0) and EncNet +
   SE-loss (alpha = 0.2), seeds 0, 1 and 2, from scratch, with the
   ``synthetic`` preset, into build/results/se_loss_sweep.json, two runs at a
   time on one thread each (``encnet.sweep.sweep(..., jobs=2)``), one progress
   bar over the runs. The file is rewritten after each run, so a second call
   after an interruption trains only the missing runs. The committed results
   in notebooks/results/ are never written.
2. The notebooks: each numbered notebook runs top to bottom in a fresh kernel
   from the notebooks/ folder, with ENCNET_QUICK unset, and is written to
   build/ as an executed notebook (tidied: encnet.teaching.notebook.tidy) and as HTML. Notebook 03 reads the sweep
   named by ENCNET_SWEEP: the fresh file after phase 1, the committed one with
   ``--fast``.
3. The comparison: the recomputed ablation table beside the committed one and
   the paper's, a line per row saying whether the recomputed mean lies within
   the committed seeds' range, and the ordering FCN < EncNet < EncNet + SE-loss
   seed by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from encnet import ablation
from encnet.config import preset
from encnet.sweep import sweep
from encnet.teaching.notebook import tidy

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
COMMITTED = ROOT / "notebooks" / "results" / "se_loss_sweep.json"
FRESH = BUILD / "results" / "se_loss_sweep.json"
PHASES = BUILD / "reproduce_phases.json"
SEEDS = [0, 1, 2]
JOBS = 2  # runs side by side, one thread each: the measured best on a 2-core CPU (benchmarks/train.py)


def retrain() -> dict:
    """Phase 1: the ablation's three methods for every seed into FRESH (runs it already holds are kept)."""
    FRESH.parent.mkdir(parents=True, exist_ok=True)
    alphas = sorted({method.alpha for method in ablation.METHODS if method.model == "encnet"})
    print(f"training FCN and EncNet at alpha {', '.join(f'{a:g}' for a in alphas)}, seeds {SEEDS}, "
          f"{JOBS} at a time, into {FRESH.relative_to(ROOT)}", flush=True)
    return sweep(preset("synthetic"), alphas=alphas, seeds=SEEDS, with_fcn=True, out=FRESH, progress=True, jobs=JOBS)


def run(path: Path, position: str) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    total = sum(cell.cell_type == "code" for cell in nb.cells)
    done = 0
    start = time.perf_counter()

    def progress(**_):
        nonlocal done
        done += 1
        print(f"\r{position} {path.name}: cell {done}/{total}, {time.perf_counter() - start:.0f} s", end="", flush=True)

    client = NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            on_cell_executed=progress)
    client.execute()
    print()
    return tidy(nb)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="no training: the notebooks on the committed sweep")
    parser.add_argument("prefixes", nargs="*", help="run only the notebooks whose names start so (e.g. 03)")
    args = parser.parse_args(argv)
    notebooks = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                       if not args.prefixes or p.name.startswith(tuple(args.prefixes)))
    if not notebooks:
        sys.exit(f"no notebook in {ROOT / 'notebooks'} matches {args.prefixes}; pass prefixes such as 03")
    BUILD.mkdir(exist_ok=True)
    os.environ.pop("ENCNET_QUICK", None)
    phases: dict[str, float] = {}
    start = time.perf_counter()
    if not args.fast:
        retrain()
        phases["training (9 runs)"] = time.perf_counter() - start
    os.environ["ENCNET_SWEEP"] = str(COMMITTED if args.fast else FRESH)  # what notebook 03 reads
    for i, path in enumerate(notebooks, 1):
        begin = time.perf_counter()
        nb = run(path, f"[{i}/{len(notebooks)}]")
        nbformat.write(nb, BUILD / path.name)
        (BUILD / path.with_suffix(".html").name).write_text(HTMLExporter().from_notebook_node(nb)[0])
        phases[f"notebook {path.stem}"] = time.perf_counter() - begin
    phases["total"] = time.perf_counter() - start
    print(f"executed notebooks and HTML in {BUILD}")

    committed = ablation.load(COMMITTED)
    print("\nThe committed sweep (notebooks/results/se_loss_sweep.json):\n" + ablation.table(committed))
    if not args.fast:
        recomputed = ablation.load(FRESH)
        print(f"\nRecomputed here ({FRESH.relative_to(ROOT)}):\n" + ablation.table(recomputed))
        print("\nRecomputed beside committed and the paper (PASCAL-Context, ResNet-50):\n"
              + ablation.compare(recomputed, committed))
        print("\nOrdering, seed by seed (recomputed):\n" + "\n".join(ablation.ordering(recomputed)))
    record = {"mode": "fast" if args.fast else "full", "notebooks": [p.name for p in notebooks],
              "seconds": {name: round(seconds, 1) for name, seconds in phases.items()},
              "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    PHASES.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwall time per phase ({record['mode']}; load average at the end {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs):")
    for name, seconds in phases.items():
        print(f"  {name:40} {seconds / 60:5.1f} min ({seconds:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
