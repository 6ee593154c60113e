"""TensorBoard logging of a training run: ``encnet train --tensorboard`` writes ``<out>/tensorboard/``.

    encnet train --preset synthetic-quick --out runs/quick --tensorboard
    tensorboard --logdir runs                    # every run folder under runs/, one run each

Rank 0 writes, through ``torch.utils.tensorboard.SummaryWriter``, at the points
where :mod:`encnet.engine` already logs (:class:`TensorBoardLog`):

- every iteration ``t`` (step ``t``): ``loss/total`` and each part of the loss
  (``loss/out``, ``loss/aux``, ``loss/se`` for EncNet's loss), the global
  batch's means the engine has already copied to the host, and ``train/lr``,
  the backbone's learning rate after the iteration (as ``log.jsonl`` records it);
- every evaluation (step: the iteration it follows): ``train/images_per_s``
  (the epoch's), ``val/pixAcc``, ``val/mIoU``, ``val/mIoU_all`` (the values of
  ``log.jsonl``), and ``val/predictions``: the first :data:`SAMPLES` validation
  images, each one picture of image | ground truth | prediction in the dataset's
  palette (ignored pixels black).

No value costs a host synchronisation of its own; the pictures cost one forward
pass of :data:`SAMPLES` images per evaluation, on rank 0, in eval mode (no random
draw, so a run with ``--tensorboard`` trains exactly as one without).

Each process adds an event file of its own to the folder, opened with
``purge_step`` = its first step: TensorBoard hides what earlier files logged
from that step on. A resumed run (``--resume``) starts at the iteration after
its checkpoint, so what the interrupted process logged past the checkpoint is
hidden and every step shows one value, the continued run's (a new run in a
folder that kept an old ``tensorboard/`` starts at step 1 and hides all of it).
``tensorboard`` may be switched on or off when resuming. It needs a run folder: ``out=None`` with ``tensorboard=True``
(possible from Python; the command line always has a folder) is a
:class:`encnet.errors.UserError`, as is a missing ``tensorboard`` package. The
package is imported only when ``tensorboard=True``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from .errors import UserError
from .evaluation import memory_format_of
from .inference import Protocol, predict
from .viz import colorize, to_rgb

if TYPE_CHECKING:
    from .config import TrainConfig
    from .engine import Run
    from .runs import RunFolder

__all__ = ["FOLDER", "SAMPLES", "TensorBoardLog", "summary_writer"]

FOLDER = "tensorboard"  # inside the run folder
SAMPLES = 4  # validation images drawn at each evaluation


def summary_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, imported now; a missing ``tensorboard`` is a UserError."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package, which is not installed: "
                        "pip install encnet[tensorboard] (or train without --tensorboard)") from None
    return SummaryWriter


class TensorBoardLog:
    """The run's TensorBoard writer, used as ``with TensorBoardLog(config, folder) as board``.

    A no-op (every method returns at once) unless ``config.tensorboard`` and this
    rank holds the run ``folder``; ``TensorBoardLog()`` is one. The package is
    imported, and ``out=None`` refused, on every rank when it is built, so that
    a run fails before its work. The writer itself is opened at the first value,
    with ``purge_step`` set to that step.
    """

    def __init__(self, config: TrainConfig | None = None, folder: RunFolder | None = None) -> None:
        self.path = None
        self._writer: Any = None
        self._writer_class: type | None = None
        self._purge = False
        self._samples: list[tuple[Tensor, Tensor]] | None = None
        if config is None or not config.tensorboard:
            return
        if config.out is None:
            raise UserError("tensorboard=True writes into the run folder, but out is None (no run folder); "
                            "set out to a folder (--out DIR), or tensorboard=False")
        self._writer_class = summary_writer()
        if folder is not None:
            self.path = folder.path / FOLDER
            self._purge = True

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Flush the pending events to disk and close the event file (a later value opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _at(self, step: int) -> Any:
        """The writer, opened at the first value (``step``), hiding what earlier event files logged from ``step`` on."""
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.path), purge_step=step if self._purge else None)
            self._purge = False  # once: a value logged after close() continues this process's own run
        return self._writer

    def training_step(self, run: Run, values: Tensor) -> None:
        """Iteration ``run.iteration``: ``values`` = [loss, its parts] on the host (``_train_step``'s), and the lr."""
        if not self.enabled:
            return
        writer = self._at(run.iteration)
        loss, *parts = values.tolist()
        writer.add_scalar("loss/total", loss, run.iteration)
        for name, value in zip(run.part_names, parts):
            writer.add_scalar(f"loss/{name}", value, run.iteration)
        writer.add_scalar("train/lr", run.optimizer.param_groups[0]["lr"], run.iteration)

    def evaluation(self, run: Run, record: dict[str, Any]) -> None:
        """An evaluation's ``record`` (that of ``log.jsonl``): speed, pixAcc, mIoU, and the pictures of the samples."""
        if not self.enabled:
            return
        step = record["iteration"]
        writer = self._at(step)
        writer.add_scalar("train/images_per_s", record["images_per_s"], step)
        for name in ("pixAcc", "mIoU", "mIoU_all"):
            writer.add_scalar(f"val/{name}", record[name], step)
        writer.add_images("val/predictions", self._pictures(run), step, dataformats="NHWC")
        writer.flush()  # an evaluation is rare: its values reach the disk with the epoch's log record

    def _pictures(self, run: Run) -> np.ndarray:
        """(N, H, 3W, 3) uint8 RGB: image | ground truth | prediction of the first validation images.

        Real datasets' images differ in size: each is predicted alone, and the rows
        are padded with black to the largest.
        """
        if self._samples is None:
            self._samples = [run.val_set[index] for index in range(min(SAMPLES, len(run.val_set)))]
        run.model.eval()
        palette, rows = run.val_set.palette, []
        for image, mask in self._samples:
            batch = image[None].to(run.device, memory_format=memory_format_of(run.model))
            label = predict(run.model, batch, Protocol(crop_size=run.config.crop_size)).argmax(1)[0].cpu()
            rows.append(np.concatenate([(to_rgb(image) * 255).round().astype(np.uint8), colorize(mask, palette),
                                        colorize(label, palette)], 1))
        height, width = max(row.shape[0] for row in rows), max(row.shape[1] for row in rows)
        return np.stack([np.pad(row, ((0, height - row.shape[0]), (0, width - row.shape[1]), (0, 0)))
                         for row in rows])  # uint8: the palette's exact colours
