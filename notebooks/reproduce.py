"""Run every numbered notebook headlessly with the full settings (what `make reproduce` does).

    python notebooks/reproduce.py            # all notebooks
    python notebooks/reproduce.py 03 05      # the notebooks whose names start so

Each notebook runs top to bottom in a fresh kernel from the notebooks/ folder,
with ENCNET_QUICK unset, and is written to build/ as an executed notebook and as
HTML. Progress is printed cell by cell. At the end the script prints the cells
of the executed notebooks tagged ``ablation-table`` (the SE-loss ablation).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"


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
    return nb


def tagged_text(nb: nbformat.NotebookNode, tag: str) -> str:
    texts = []
    for cell in nb.cells:
        if tag in cell.get("metadata", {}).get("tags", []):
            for out in cell.get("outputs", []):
                texts.append(out.get("text") or out.get("data", {}).get("text/plain", ""))
    return "".join(texts)


def main(prefixes: list[str]) -> None:
    os.environ.pop("ENCNET_QUICK", None)
    notebooks = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                       if not prefixes or p.name.startswith(tuple(prefixes)))
    if not notebooks:
        sys.exit(f"no notebook in {ROOT / 'notebooks'} matches {prefixes}")
    BUILD.mkdir(exist_ok=True)
    tables = []
    for i, path in enumerate(notebooks, 1):
        nb = run(path, f"[{i}/{len(notebooks)}]")
        nbformat.write(nb, BUILD / path.name)
        (BUILD / path.with_suffix(".html").name).write_text(HTMLExporter().from_notebook_node(nb)[0])
        tables.append(tagged_text(nb, "ablation-table"))
    print(f"executed notebooks and HTML in {BUILD}")
    for table in filter(None, tables):
        print("\n" + table)


if __name__ == "__main__":
    main(sys.argv[1:])
