"""The set-up every notebook starts with, and the tidy step every committed notebook goes through.

Each numbered notebook opens with::

    %matplotlib inline
    from encnet.teaching.notebook import setup
    QUICK = setup()          # prints "full run | torch 2.x" (or "quick run | ...")

``ENCNET_QUICK=1`` in the environment is the *quick switch*: every expensive
cell of a notebook reads ``QUICK`` and runs at a small size instead (fewer
images, fewer steps), so that ``make test`` executes all the notebooks in
minutes. Without it a notebook runs its full laptop settings.

:func:`tidy` is applied to an executed notebook before it is committed
(``notebooks/reproduce.py`` does it; ``python -m encnet.teaching.notebook
FILE...`` does it in place): the kernelspec as ipykernel writes it, so that
JupyterLab does not rewrite it on opening, and no widget state. A saved widget
state shows as text until the notebook is trusted and as "model not found"
once it no longer matches the outputs, so every widget in a notebook has a
static default view drawn beside it instead.
"""

from __future__ import annotations

import base64
import io
import os
import sys

import matplotlib
import torch

QUICK_SWITCH = "ENCNET_QUICK"

# What ipykernel's own kernelspec says (``jupyter kernelspec list --json``); JupyterLab writes it on opening.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# Legible figures: at least 100 dpi and 9 pt tick labels (the notebooks never ask for smaller).
LEGIBLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
           "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 11}


def quick() -> bool:
    """Whether the quick switch is on (``ENCNET_QUICK=1`` in the environment)."""
    return os.environ.get(QUICK_SWITCH) == "1"


def setup(*, seed: int | None = 0, threads: int = 1, dpi: int = 100) -> bool:
    """Seed torch's generator, set torch's CPU threads and the figures' dpi and fonts; print and return :func:`quick`.

    Args:
        seed: for ``torch.manual_seed``; ``None`` leaves the generator alone.
        threads: ``torch.set_num_threads``. One thread by default: the notebooks'
            problems are small, and one thread keeps timings steadier and a
            shared laptop responsive; a notebook with large convolutions asks for more.
        dpi: ``matplotlib.rcParams["figure.dpi"]`` (call after ``%matplotlib inline``,
            which sets its own). The font sizes are those of :data:`LEGIBLE`.
    """
    if seed is not None:
        torch.manual_seed(seed)
    torch.set_num_threads(threads)
    matplotlib.rcParams.update({"figure.dpi": dpi, **LEGIBLE})
    is_quick = quick()
    print("quick run" if is_quick else "full run", "| torch", torch.__version__)
    return is_quick


def show(output, fig, text: str | None = None, *, label: str = "figure") -> None:
    """Replace what the ``ipywidgets.Output`` ``output`` shows with ``fig`` (then closed) and a line of ``text``.

    Every widget of the notebooks redraws this way: the figure is rendered here to a
    PNG at the figure's dpi (100 after :func:`setup`), so an update works, and can be
    tested, without a front end or an inline backend; ``label`` is its text fallback.
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    shown = [{"output_type": "display_data", "metadata": {},
              "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": f"<{label}>"}}]
    if text is not None:
        shown.append({"output_type": "stream", "name": "stdout", "text": text.rstrip("\n") + "\n"})
    output.outputs = tuple(shown)


def tidy(nb: dict) -> dict:
    """``nb`` (a notebook as JSON or an ``nbformat`` node) with ipykernel's kernelspec and no widget state, in place.

    Removes ``metadata.widgets`` and every output that only displays a widget
    (mime type ``application/vnd.jupyter.widget-view+json``); other outputs of the
    same cell (printed text, figures) stay.
    """
    nb["metadata"]["kernelspec"] = dict(KERNELSPEC)
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        if cell.get("outputs"):
            cell["outputs"] = [out for out in cell["outputs"] if WIDGET_VIEW not in out.get("data", {})]
    return nb


def main(paths: list[str]) -> None:
    """``python -m encnet.teaching.notebook FILE...``: :func:`tidy` each notebook in place."""
    import nbformat

    if not paths:
        sys.exit("usage: python -m encnet.teaching.notebook NOTEBOOK.ipynb... (tidies each in place)")
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.write(tidy(nb), path)
        print(f"tidied {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
