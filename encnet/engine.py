"""Training: one loop for a CPU, one GPU and many (torchrun).

    from encnet.config import preset
    from encnet.engine import train
    result = train(preset("synthetic-quick"))    # no files written (out=None)
    result["metrics"]["mIoU"], result["history"], result["losses"]

:func:`train` reads top to bottom as its four steps: :func:`_prepare` the run
(process group, data, model, optimiser, resume), then per epoch
:func:`_train_epoch` (of :func:`_train_step` s), :func:`_evaluate_epoch` every
``eval_every`` epochs, and :func:`_save` (checkpoint, then log record). The
run's state travels in one :class:`Run`; its files are owned by one
:class:`encnet.runs.RunFolder` (lock, atomic writes, the rules that keep an
earlier run's files safe); process setup and collectives are in
:mod:`encnet.distributed`, the data wrappers in :mod:`encnet.data.wrappers`.

The same function runs under ``torchrun --nproc_per_node=N -m encnet train ...``:
it joins the process group (NCCL on GPUs, gloo on CPUs), converts every batch
norm to a synchronised one (``config.sync_bn``: by default ``torch.nn.SyncBatchNorm``
on GPUs with NCCL, :class:`encnet.nn.SyncBatchNorm` on CPUs; see
:func:`encnet.distributed.sync_bn_kind`), wraps the model in
DistributedDataParallel and gives each rank ``batch_size / N`` images of every
global batch. The cross-entropy is the mean over the labelled pixels of the
*global* batch (:mod:`encnet.losses`), so N ranks compute one process's
gradient, up to float rounding. Only rank 0 writes files and shows progress.

Determinism. Each epoch's order of samples is a permutation drawn from
``(seed, epoch)`` (DistributedSampler), and each sample's augmentation is drawn
from a generator seeded by ``(seed, epoch, index)`` (:class:`KeyedAugmentation`).
Neither depends on the number of workers or ranks, nor on where a run was
resumed: the global batch at iteration ``t`` is the same images, augmented the
same way, on 1 process or on 8. What remains random is dropout, whose stream is
seeded per rank and saved in the checkpoints; on CPU a resumed run repeats the
uninterrupted one's losses exactly.

Divergence. Training stops with :class:`Diverged` (the message names the
iteration and the last good checkpoint) when the loss is not finite or exceeds
``config.max_loss`` (before the weights are updated with it), or when a
parameter or buffer (batch norm running statistics included) is not finite
after an update (found with the next step's read, or before the checkpoint,
whichever comes first; the weights are left as that update made them). No
checkpoint with a non-finite tensor is ever written.

One host synchronisation a step. The loss, its parts and the count of
non-finite weights from the last check (one fused reduction, every
``config.check_every`` steps) travel in one all-reduce and are read on the host
once, before the backward pass; the masks' labels are checked on the CPU,
before they reach the device. The weights are also checked, with names, before
each checkpoint. ``config.compile`` runs the training step's model and the
validation's through ``torch.compile`` (the saved model is the plain module).

Mixed precision. ``config.amp`` "bf16" or "fp16" runs the forward pass and the
loss of every training step, and the validation's forward passes, under
``torch.autocast`` (the weights, gradients and optimiser stay float32; the
Encoding Layer computes in float32, :func:`encnet.nn.functional.encoding`).
"fp16" scales the loss with a ``torch.amp.GradScaler``, whose state is saved in
the checkpoints: a step whose gradients overflow float16 is skipped and the
scale lowered, as the scaler does, and that is not a divergence (the loss and
the weights stay finite); a non-finite loss still is.

The model is the one ``config`` describes (:meth:`encnet.config.TrainConfig.build_model`,
any registered head), the loss the one ``config.loss`` names
(:data:`encnet.losses.LOSSES`). Every ``eval_every`` epochs the validation
split is scored as the data loader gives it (``build_dataset``'s central crop,
the reference's quick check) by :func:`encnet.evaluation.evaluate`, which also
scores whole images for ``encnet evaluate``; many runs at once are
:mod:`encnet.sweep`'s.

Progress: ``progress=None`` shows tqdm bars when standard error is a terminal
(so notebooks and log files stay clean); True or False forces it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, check_compatible, load_checkpoint, load_model_state, rng_state, set_rng_state
from .config import TrainConfig
from .data import build_dataset
from .data.check import check_files
from .data.wrappers import KeyedAugmentation
from .distributed import (
    all_reduce_sum,
    gather_objects,
    on_rank_zero,
    plain_batch_norms,
    setup_process,
    show_progress,
    sync_batch_norms,
)
from .errors import UserError
from .evaluation import amp_autocast, evaluate
from .inference import Protocol
from .losses import build_loss, global_labelled
from .metrics import labelled_pixels
from .models.convert import upgrade_keys
from .runs import RunFolder
from .tensorboard import TensorBoardLog

__all__ = ["Diverged", "Run", "param_groups", "poly_schedule", "train"]

# Settings that may change when a run is resumed: where it runs and what stops it, not what it computes.
RESUMABLE_CHANGES = ("data_root", "workers", "device", "channels_last", "eval_every", "out", "resume", "max_loss",
                     "tensorboard", "check_every", "compile")


class Diverged(UserError, FloatingPointError):
    """Training diverged: a loss that is not finite or above ``max_loss``, or a non-finite parameter or buffer."""


def poly_schedule(optimizer: torch.optim.Optimizer, total: int, power: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The poly schedule, stepped once per iteration: ``lr_t = lr_0 (1 - t / total) ** power``, 0 from ``total`` on."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=power)


def param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
    """SGD groups: ``model.backbone`` at ``lr``, every other parameter (the head) at ``lr * head_lr_mult``."""
    backbone = list(model.backbone.parameters())
    in_backbone = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in in_backbone]
    return [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]


@dataclasses.dataclass
class Run:
    """What a training run carries from one step to the next (built by :func:`_prepare`)."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    train_set: Dataset
    val_set: Dataset
    model: nn.Module  # the module itself: what is saved and evaluated
    net: nn.Module  # what is trained: ``model``, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    sampler: DistributedSampler
    folder: RunFolder | None  # rank 0 with config.out set; None elsewhere
    progress: bool | None
    scheduler: torch.optim.lr_scheduler.LRScheduler = dataclasses.field(init=False)
    criterion: nn.Module = dataclasses.field(init=False)  # the loss config.loss names
    part_names: list[str] = dataclasses.field(default_factory=list)  # the loss's terms, from its first call
    augmented: KeyedAugmentation = dataclasses.field(init=False)
    loader_generator: torch.Generator = dataclasses.field(init=False)
    iteration: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    saved: str | None = None  # the last good checkpoint: path and iteration, for messages
    board: TensorBoardLog = dataclasses.field(default_factory=TensorBoardLog)  # a no-op without --tensorboard
    evaluated: nn.Module = dataclasses.field(init=False)  # what the validation runs: ``model``, or its compiled form
    pending: Tensor = dataclasses.field(init=False)  # non-finite weights the last check found, read next step
    scaler: torch.amp.GradScaler = dataclasses.field(init=False)  # amp="fp16"'s loss scaling; a no-op otherwise

    def __post_init__(self) -> None:
        config = self.config
        self.scheduler = poly_schedule(self.optimizer, self.total, config.poly_power)
        self.criterion = build_loss(config.loss, config)
        self.augmented = KeyedAugmentation(self.train_set, config.seed)
        self.loader_generator = torch.Generator().manual_seed(config.seed)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.pending = torch.zeros((), device=self.device)
        self.evaluated = self.model
        if config.compile:  # the modules are shared: saving and loading ``model`` reach the compiled ones
            self.net, self.evaluated = torch.compile(self.net), torch.compile(self.model)
        if hasattr(self.criterion, "check_labels"):  # checked on the CPU by _train_epoch: no wait for the device
            self.criterion.check_labels = False

    @property
    def rank_batch(self) -> int:
        return self.config.batch_size // self.world

    @property
    def iterations_per_epoch(self) -> int:
        return len(self.sampler) // self.rank_batch

    @property
    def total(self) -> int:
        return self.iterations_per_epoch * self.config.epochs


def train(config: TrainConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Train ``config`` (resuming from ``config.resume`` if set), evaluating every ``eval_every`` epochs.

    Returns ``{"config", "classes", "history", "losses", "metrics", "checkpoint", "model"}``:
    ``history`` holds one record per evaluation (epoch, iteration, mean loss and
    its parts, lr, images/s, pixAcc, mIoU, mIoU_all, IoU), ``losses`` the loss of
    every iteration (mean over the global batch), ``metrics`` the last
    evaluation, ``checkpoint`` the path written (None when ``config.out`` is None),
    ``model`` the trained model (with plain batch norms). ``config.out`` is a
    run folder (:mod:`encnet.runs`): locked for the run, never another run's.

    Raises:
        Diverged: (a FloatingPointError) the loss is not finite or above
            ``config.max_loss``, or a parameter or buffer is not finite; the
            message names the iteration and the last good checkpoint, which is
            left as it was.
        UserError: the folder is in use or holds another run's files, the data
            fail their check, or the settings cannot run.
    """
    rank, world, device = setup_process(config.device)
    with _open_folder(config) as folder, TensorBoardLog(config, folder) as board:
        run = _prepare(config, rank, world, device, folder, progress)
        run.board = board
        for epoch in range(run.iteration // run.iterations_per_epoch, config.epochs):
            sums, seconds = _train_epoch(run, epoch)
            _check_finite_state(run)  # whatever check_every says, no checkpoint holds a NaN
            evaluated = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
            record = _evaluate_epoch(run, epoch, sums, seconds) if evaluated else None
            _save(run, record)
        return _finish(run)


def _open_folder(config: TrainConfig) -> contextlib.AbstractContextManager[RunFolder | None]:
    """The locked run folder on rank 0 (rules of :mod:`encnet.runs`); nothing elsewhere, or when out=None."""
    if config.out is None:
        return contextlib.nullcontext()
    folder = on_rank_zero(lambda: RunFolder.open(config.out, resume=config.resume))
    return folder if folder is not None else contextlib.nullcontext()


def _prepare(config: TrainConfig, rank: int, world: int, device: torch.device, folder: RunFolder | None,
             progress: bool | None) -> Run:
    """Seed, check and load the data, build the model and optimiser, restore ``config.resume``."""
    if config.batch_size % world:
        raise UserError(
            f"batch_size {config.batch_size} is the global batch and must split evenly over the {world} "
            f"processes; pass a multiple of {world}, e.g. --batch-size {world * max(1, config.batch_size // world)}"
        )
    torch.manual_seed(config.seed + rank)  # DDP copies rank 0's initial weights to the others
    np.random.seed(config.seed + rank)
    random.seed(config.seed + rank)
    options = {"root": config.data_root, "crop_size": config.crop_size, "base_size": config.base_size}
    train_set, val_set = (build_dataset(config.dataset, split, **options, **config.dataset_options)
                          for split in ("train", "val"))
    if len(train_set) < config.batch_size:
        raise UserError(
            f"the training set has {len(train_set)} images, fewer than one batch of {config.batch_size}; "
            "lower --batch-size or add data"
        )
    on_rank_zero(lambda: (check_files(train_set), check_files(val_set)))  # before the first iteration
    model = config.build_model(train_set.num_classes, pretrained=config.resume is None)
    model = sync_batch_norms(model, config.sync_bn, device).to(device, memory_format=_memory_format(config))
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else model
    lr = config.lr * config.batch_size / 16
    optimizer = torch.optim.SGD(
        param_groups(model, lr, config.head_lr_mult), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    sampler = DistributedSampler(range(len(train_set)), num_replicas=world, rank=rank, seed=config.seed, drop_last=True)
    run = Run(config, rank, world, device, train_set, val_set, model, net, optimizer, sampler, folder, progress)
    if config.resume:
        _restore(run)
        if folder is not None:
            folder.rewrite_log(run.history)  # exactly the checkpoint's epochs, wherever the last process stopped
    return run


def _memory_format(config: TrainConfig) -> torch.memory_format:
    """The memory format of the model and the training images: NHWC if ``config.channels_last``, else NCHW."""
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    defaults = TrainConfig.from_dict(saved).to_dict()  # fields added since the checkpoint take their defaults
    differences = [
        f"{name}={defaults[name]!r} (this run: {value!r})"
        for name, value in config.to_dict().items()
        if name not in RESUMABLE_CHANGES and defaults[name] != value
    ]
    if differences:
        raise CheckpointError(
            f"cannot resume: the checkpoint's run had {', '.join(differences)}; resuming repeats a run "
            f"exactly, so only {', '.join(RESUMABLE_CHANGES)} may change. Resume with the checkpoint's "
            "settings (`encnet train --resume` alone takes them), or start a new run"
        )


def _restore(run: Run) -> None:
    """Load ``config.resume`` into the model, optimiser, scheduler, random generators and the run so far."""
    config = run.config
    checkpoint = load_checkpoint(config.resume)
    check_compatible(checkpoint, model=config.model, backbone=config.backbone, num_classes=run.train_set.num_classes)
    _check_resumable(checkpoint["config"], config)
    if len(checkpoint["rng"]) != run.world:
        raise CheckpointError(
            f"the checkpoint was written by {len(checkpoint['rng'])} processes, this run has {run.world}; "
            "resume with the same number of processes (their dropout streams are saved per rank)"
        )
    load_model_state(run.model, upgrade_keys(checkpoint["model"]))
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    if "scaler" in checkpoint:  # written by amp="fp16" runs only
        run.scaler.load_state_dict(checkpoint["scaler"])
    if not 0 <= checkpoint["iteration"] <= run.total:
        raise CheckpointError(
            f"the checkpoint is at iteration {checkpoint['iteration']}, past the end of this run's {run.total} "
            f"iterations ({run.iterations_per_epoch} an epoch for {len(run.train_set)} training images); the data "
            "changed since it was written: resume with the data it was trained on, or start a new run"
        )
    set_rng_state(checkpoint["rng"][run.rank])
    run.iteration, run.history = checkpoint["iteration"], checkpoint["history"]
    run.losses = checkpoint["losses"].tolist()
    run.saved = f"{config.resume} (iteration {run.iteration})"


def _train_epoch(run: Run, epoch: int) -> tuple[Tensor, float]:
    """One pass over the training split: (sums of the loss and its parts over the iterations, seconds)."""
    config = run.config
    run.sampler.set_epoch(epoch)
    loader = DataLoader(
        run.augmented, batch_size=run.rank_batch, sampler=[(epoch, index) for index in run.sampler], drop_last=True,
        num_workers=config.workers, generator=run.loader_generator, pin_memory=run.device.type == "cuda",
    )
    run.net.train()
    sums, start = 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show_progress(run.progress, run.rank),
               leave=False)
    for step, (images, masks) in enumerate(bar, start=1):
        labelled_pixels(masks, run.train_set.num_classes)  # on the CPU: a label out of range is a UserError
        images = images.to(run.device, non_blocking=True, memory_format=_memory_format(config))
        values = _train_step(run, images, masks.to(run.device, non_blocking=True))
        sums += values
        run.losses.append(values[0].item())
        run.board.training_step(run, values)
        bar.set_postfix(loss=f"{values[0].item():.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}",
                        img_s=f"{step * config.batch_size / (time.perf_counter() - start):.1f}")
    bar.close()
    return sums, time.perf_counter() - start


def _train_step(run: Run, images: Tensor, masks: Tensor) -> Tensor:
    """One SGD step on this rank's share of a global batch; returns [loss, its parts], global means, float64.

    One host synchronisation: the loss, its parts and the count of non-finite
    weights the last check found (:func:`_non_finite_count`, a device tensor)
    are summed over the ranks in one collective and copied to the host in one
    read, before the backward pass, so that a diverged loss never updates the
    weights. (The labelled-pixel count the loss needs is a second collective,
    read by no one on the host.)
    """
    with amp_autocast(run.device, run.config.amp):
        loss, parts = run.criterion(run.net(images), masks, labelled=global_labelled(masks))
    run.part_names = run.part_names or list(parts)
    local = [loss.detach(), *(parts[name] for name in run.part_names), run.pending]
    reduced = all_reduce_sum(torch.stack([value.float() for value in local])).tolist()  # the one read
    values = torch.tensor(reduced[:-1], dtype=torch.float64) / run.world
    if reduced[-1] != 0:  # the weights the last step left are not finite: name them (a failure, syncs allowed)
        _check_finite_state(run)
    value = reduced[0] / run.world
    if not value <= run.config.max_loss:  # also true for NaN
        bound = "not finite" if not math.isfinite(value) else f"above max_loss={run.config.max_loss:g}"
        raise Diverged(_divergence(run, run.iteration + 1, f"the loss is {value:.4g}, {bound}",
                                   "the weights were not updated with it"))
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()  # the loss itself without a scaler (amp "off", "bf16")
    run.scaler.step(run.optimizer)  # fp16: skipped if a gradient overflowed, the scale lowered by update()
    run.scaler.update()
    with warnings.catch_warnings():  # the schedule counts iterations, skipped steps included
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
        run.scheduler.step()
    run.iteration += 1
    checked = run.iteration % run.config.check_every == 0
    run.pending = _non_finite_count(run) if checked else torch.zeros((), device=run.device)
    return values


def _state_tensors(run: Run) -> list[tuple[str, Tensor]]:
    """The model's floating-point parameters and buffers (batch norm statistics included), by name."""
    return [(name, tensor) for name, tensor in chain(run.model.named_parameters(), run.model.named_buffers())
            if tensor.is_floating_point()]


def _non_finite_count(run: Run) -> Tensor:
    """How many parameters and buffers hold NaN or inf: a device scalar, from one fused reduction, not read here.

    The largest absolute value of each tensor (``torch._foreach_norm`` with
    ord=inf, one multi-tensor kernel on CUDA, as ``clip_grad_norm_`` uses it)
    is NaN or inf exactly when the tensor holds a NaN or an inf.
    """
    tensors = [tensor.detach() for _, tensor in _state_tensors(run)]
    largest = torch.stack(torch._foreach_norm(tensors, math.inf))
    return (~torch.isfinite(largest)).sum()


def _check_finite_state(run: Run) -> None:
    """Raise :class:`Diverged` if a parameter or buffer (batch norm statistics included) holds NaN or inf.

    Reads the result on the host: called once per epoch, before the checkpoint,
    and when a step's read says that the last check found a non-finite tensor.
    """
    tensors = _state_tensors(run)
    finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in tensors])
    if all_reduce_sum((~finite).sum()).item() == 0:  # every rank stops if one does
        return
    bad = [name for (name, _), ok in zip(tensors, finite.tolist()) if not ok]
    raise Diverged(_divergence(run, run.iteration, f"{len(bad)} parameter(s) or buffer(s) hold NaN or infinite "
                                                   f"values ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})",
                               "they are not saved"))


def _divergence(run: Run, iteration: int, what: str, consequence: str) -> str:
    epoch = (iteration - 1) // run.iterations_per_epoch + 1
    if run.saved is not None:
        last = f"the last good checkpoint, {run.saved}, is left as it was"
    else:
        last = "there is no good checkpoint yet" + (" (out=None writes none)" if run.config.out is None
                                                    else " (no epoch has finished)")
    return (f"training diverged at iteration {iteration} of {run.total} (epoch {epoch}): {what}; {consequence}, "
            f"and {last}. Lower --lr, or check the data (or raise --max-loss if such a loss is expected)")


def _evaluate_epoch(run: Run, epoch: int, sums: Tensor, seconds: float) -> dict[str, Any]:
    """Score the validation split; the epoch's record (losses, lr, speed, metrics), added to the history."""
    config = run.config
    metrics = evaluate(run.evaluated, run.val_set, Protocol(crop_size=config.crop_size), batch_size=run.rank_batch,
                       amp=config.amp,
                       workers=config.workers, progress=run.progress)
    mean = (sums / run.iterations_per_epoch).tolist()
    record = {
        "epoch": epoch + 1, "iteration": run.iteration, "loss": mean[0],
        "loss_parts": dict(zip(run.part_names, mean[1:])), "lr": run.optimizer.param_groups[0]["lr"],
        "images_per_s": run.iterations_per_epoch * config.batch_size / seconds, **metrics,
    }
    run.history.append(record)
    run.board.evaluation(run, record)
    if show_progress(run.progress, run.rank):
        tqdm.write(f"epoch {epoch + 1}: loss {mean[0]:.4f}  pixAcc {metrics['pixAcc']:.4f}  "
                   f"mIoU {metrics['mIoU']:.4f}  {record['images_per_s']:.1f} images/s")
    return record


def _save(run: Run, record: dict[str, Any] | None) -> None:
    """Write the checkpoint, then the epoch's log record: the log never runs ahead of the checkpoint."""
    if run.config.out is None:
        return
    rng = gather_objects(rng_state())  # every rank takes part; rank 0 writes
    checkpoint = {
        "config": run.config.to_dict(), "num_classes": run.train_set.num_classes,
        "classes": list(run.train_set.classes), "iteration": run.iteration,
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "rng": rng, "history": run.history,
        **({"scaler": run.scaler.state_dict()} if run.scaler.is_enabled() else {}),
        "losses": torch.tensor(run.losses, dtype=torch.float64),
    }
    on_rank_zero(lambda: run.folder.save_checkpoint(checkpoint))
    if run.folder is not None and record is not None:
        run.folder.append_log(record)
    run.saved = f"{Path(run.config.out) / 'checkpoint.pt'} (iteration {run.iteration})"


def _finish(run: Run) -> dict[str, Any]:
    """Write ``metrics.json`` (the last evaluation) and return the run's results."""
    last = run.history[-1] if run.history else None
    final = None if last is None else {key: last[key] for key in ("pixAcc", "mIoU", "mIoU_all", "IoU")}
    classes = list(run.train_set.classes)
    if run.folder is not None and final is not None:
        run.folder.write_metrics({**final, "classes": classes, "epoch": last["epoch"], "config": run.config.to_dict()})
    return {
        "config": run.config.to_dict(), "classes": classes, "history": run.history, "losses": run.losses,
        "metrics": final, "checkpoint": str(Path(run.config.out) / "checkpoint.pt") if run.config.out else None,
        "model": plain_batch_norms(run.model) if run.world > 1 else run.model,
    }
