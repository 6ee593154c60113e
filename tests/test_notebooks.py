"""What every committed notebook must hold, read from the files (they are executed by nbval separately).

Metadata JupyterLab does not rewrite on opening, no stale widget state, a header and a footer that
link the notebooks into a course, relative links that resolve, legible figures, a bounded size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from encnet.teaching.notebook import KERNELSPEC, WIDGET_VIEW

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
PAPER = "https://arxiv.org/abs/1803.08904"
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAX_BYTES = 5 * 1024 * 1024


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _links(text: str) -> list[str]:
    return LINK.findall(text)


def test_there_are_seven_numbered_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_metadata_is_what_jupyterlab_writes_and_holds_no_widget_state(path):
    nb = _read(path)
    assert nb["metadata"]["kernelspec"] == KERNELSPEC, "run python -m encnet.teaching.notebook on it"
    assert "widgets" not in nb["metadata"], "stale widget state: run python -m encnet.teaching.notebook on it"
    views = [i for i, cell in enumerate(nb["cells"])
             for out in cell.get("outputs", []) if WIDGET_VIEW in out.get("data", {})]
    assert not views, f"cells {views} store widget views (shown as 'model not found' on reopening)"
    assert path.stat().st_size < MAX_BYTES


@pytest.mark.parametrize("index", range(len(NOTEBOOKS)), ids=lambda i: NOTEBOOKS[i].stem)
def test_header_links_the_paper_the_package_and_the_neighbours_and_the_footer_the_next(index):
    cells = _read(NOTEBOOKS[index])["cells"]
    header, footer = _source(cells[0]), _source(cells[-1])
    assert cells[0]["cell_type"] == cells[-1]["cell_type"] == "markdown"
    previous = NOTEBOOKS[index - 1].name if index else "index.md"
    following = NOTEBOOKS[index + 1].name if index + 1 < len(NOTEBOOKS) else "index.md"
    assert PAPER in _links(header)
    assert previous in _links(header) and following in _links(header)
    assert any(link.startswith("../encnet/") for link in _links(header)), "link the package modules it uses"
    assert following in _links(footer)
    for word in ("Time", "Prerequisites"):
        assert f"**{word}" in header


@pytest.mark.parametrize("path", [*NOTEBOOKS, NOTEBOOKS_DIR / "index.md"], ids=lambda p: p.stem)
def test_every_relative_link_resolves(path):
    if path.suffix == ".md":
        texts = [path.read_text()]
    else:
        texts = [_source(cell) for cell in _read(path)["cells"] if cell["cell_type"] == "markdown"]
    relative = [link.split("#")[0] for text in texts for link in _links(text) if "://" not in link]
    missing = [link for link in relative if link and not (path.parent / link).exists()]
    assert not missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_are_legible(path):
    # setup() sets 100 dpi and 9 pt ticks; no cell asks for smaller.
    code = [_source(cell) for cell in _read(path)["cells"] if cell["cell_type"] == "code"]
    assert any(re.search(r"\bsetup\(", source) for source in code[:2])
    sizes = r"\b(?:fontsize|labelsize|size)\s*=\s*(\d+(?:\.\d+)?)\b"
    small = [m.group(0) for source in code for m in re.finditer(sizes, source) if float(m.group(1)) < 9]
    low_dpi = [m.group(0) for source in code
               for m in re.finditer(r"\bdpi\s*=\s*(\d+)", source) if int(m.group(1)) < 100]
    assert not small and not low_dpi
