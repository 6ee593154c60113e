"""Training curves of run folders, without TensorBoard: ``encnet plot RUN_DIR [RUN_DIR ...] --out curves.png``.

    encnet plot runs/fcn runs/encnet runs/encnet-se --out curves.png

    from encnet.plot import plot_runs
    plot_runs(["runs/fcn", "runs/encnet"], "curves.png")

Each run folder's ``log.jsonl`` (:mod:`encnet.runs`) holds one record per
evaluated epoch; :func:`plot_runs` draws two panels against the epoch, the
epoch's mean training loss and the validation mIoU, one line per run labelled
by its folder's name. The figure is drawn by matplotlib's Agg renderer (no
display, no pyplot state) and written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import write_atomically
from .errors import UserError
from .runs import check_writable

__all__ = ["plot_runs", "read_log"]

_NUMBERS = ("epoch", "loss")  # every record has them as numbers; mIoU may be null (NaN, see runs.json_safe)


def read_log(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``folder/log.jsonl``, one per evaluated epoch.

    Raises:
        UserError: the folder has no ``log.jsonl``, or it cannot be read, holds
            no record, or a line that is not a record of ``encnet train``.
    """
    path = Path(folder) / "log.jsonl"
    if not path.is_file():
        what = "is not a folder" if not Path(folder).is_dir() else "has no log.jsonl"
        raise UserError(f"{str(folder)!r} {what}; pass run folders written by `encnet train --out DIR`")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {str(path)!r} ({getattr(error, 'strerror', None) or error}); "
                        "fix its permissions, or leave that run out") from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{str(path)!r} line {number} is not JSON ({error.msg}); expected one record of "
                            "`encnet train` a line: leave that run out, or resume it to rewrite its log") from None
        if not isinstance(record, dict) or not all(_is_number(record.get(key)) for key in _NUMBERS) \
                or not (record.get("mIoU") is None or _is_number(record["mIoU"])):
            raise UserError(f"{str(path)!r} line {number} is not a record of `encnet train` (expected numbers "
                            "epoch, loss and mIoU); leave that run out, or resume it to rewrite its log")
        records.append(record)
    if not records:
        raise UserError(f"{str(path)!r} holds no record yet (one is written per evaluated epoch); "
                        "plot the run after its first evaluation")
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_runs(folders: Sequence[str | os.PathLike], out: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Draw the loss and validation mIoU curves of the run ``folders`` into the PNG file ``out``; returns its path.

    Every log is read (and checked) before anything is drawn or written.
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {str(out)!r} names the picture to write, a PNG file: pass a path ending in .png")
    if out.is_dir():
        raise UserError(f"--out {str(out)!r} is a folder; pass a file path, e.g. {str(out / 'curves.png')!r}")
    logs = {_label(folder, folders): read_log(folder) for folder in folders}
    check_writable(out.parent, "--out")
    figure = _figure(logs, dpi)
    write_atomically(out, lambda file: figure.savefig(file, format="png"))
    return out


def _label(folder: str | os.PathLike, folders: Sequence[str | os.PathLike]) -> str:
    """The folder's name, or its path as given when another folder has the same name."""
    name = Path(folder).resolve().name
    same = sum(Path(other).resolve().name == name for other in folders)
    return name if same == 1 else str(folder)


def _figure(logs: dict[str, list[dict[str, Any]]], dpi: int):
    """Two panels side by side: mean training loss and validation mIoU against the epoch, one line per run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 4), dpi=dpi, layout="constrained")
    loss, miou = figure.subplots(1, 2)
    for label, records in logs.items():
        epochs = [record["epoch"] for record in records]
        marker = "o" if len(records) < 30 else None
        loss.plot(epochs, [record["loss"] for record in records], marker=marker, label=label)
        scores = [float("nan") if record.get("mIoU") is None else record["mIoU"] for record in records]
        miou.plot(epochs, scores, marker=marker, label=label)
    loss.set(title="training loss (mean of the epoch)", xlabel="epoch", ylabel="loss")
    miou.set(title="validation mIoU", xlabel="epoch", ylabel="mIoU")
    for axes in (loss, miou):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        axes.legend()
    return figure
