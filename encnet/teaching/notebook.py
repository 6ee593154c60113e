"""The set-up every notebook starts with: the quick switch, the seed, threads and figure size.

Each numbered notebook opens with::

    %matplotlib inline
    from encnet.teaching.notebook import setup
    QUICK = setup()          # prints "full run | torch 2.x" (or "quick run | ...")

``ENCNET_QUICK=1`` in the environment is the *quick switch*: every expensive
cell of a notebook reads ``QUICK`` and runs at a small size instead (fewer
images, fewer steps), so that ``make test`` executes all the notebooks in
minutes. Without it a notebook runs its full laptop settings.
"""

from __future__ import annotations

import os

import matplotlib
import torch

QUICK_SWITCH = "ENCNET_QUICK"


def quick() -> bool:
    """Whether the quick switch is on (``ENCNET_QUICK=1`` in the environment)."""
    return os.environ.get(QUICK_SWITCH) == "1"


def setup(*, seed: int | None = 0, threads: int = 1, dpi: int = 72) -> bool:
    """Seed torch's generator, set torch's CPU threads and the figures' dpi; print and return :func:`quick`.

    Args:
        seed: for ``torch.manual_seed``; ``None`` leaves the generator alone.
        threads: ``torch.set_num_threads``. One thread by default: the notebooks'
            problems are small, and one thread keeps timings steadier and a
            shared laptop responsive; a notebook with large convolutions asks for more.
        dpi: ``matplotlib.rcParams["figure.dpi"]`` (call after ``%matplotlib inline``,
            which sets its own).
    """
    if seed is not None:
        torch.manual_seed(seed)
    torch.set_num_threads(threads)
    matplotlib.rcParams["figure.dpi"] = dpi
    is_quick = quick()
    print("quick run" if is_quick else "full run", "| torch", torch.__version__)
    return is_quick
