"""Training and evaluation: one loop for a CPU, one GPU and many (torchrun).

    from encnet.config import preset
    from encnet.engine import train
    result = train(preset("synthetic-quick"))    # no files written (out=None)
    result["metrics"]["mIoU"], result["history"], result["losses"]

The same function runs under ``torchrun --nproc_per_node=N -m encnet train ...``:
it reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, joins the process group
(NCCL on GPUs, gloo on CPUs), converts every batch norm to
:class:`encnet.nn.SyncBatchNorm`, wraps the model in DistributedDataParallel and
gives each rank ``batch_size / N`` images of every global batch. Only rank 0
writes files and shows progress.

Determinism. Each epoch's order of samples is a permutation drawn from
``(seed, epoch)`` (DistributedSampler), and each sample's augmentation is drawn
from a generator seeded by ``(seed, epoch, index)`` (:class:`KeyedAugmentation`).
Neither depends on the number of workers or ranks, nor on where a run was
resumed: the global batch at iteration ``t`` is the same images, augmented the
same way, on 1 process or on 8. What remains random is dropout, whose stream is
seeded per rank and saved in the checkpoints; on CPU a resumed run repeats the
uninterrupted one's losses exactly. (DistributedDataParallel averages the
ranks' losses, each a mean over its own labelled pixels: when the ranks' shares
of ignored pixels differ, this weights pixels slightly differently from one
process's mean over the whole batch, as in the reference implementation.)

Evaluation. During training the validation split is scored as the data loader
gives it (``build_dataset``'s central crop, the reference's quick check);
:func:`evaluate` on :func:`whole_images` scores every pixel of the full images,
single- or multi-scale (``encnet evaluate``).

Files under ``config.out`` (rank 0 only):
``checkpoint.pt`` (after every epoch, written atomically, see :mod:`encnet.checkpoint`),
``log.jsonl`` (one JSON record per evaluation) and ``metrics.json`` (the last
evaluation, with per-class IoU; NaN, for a class absent from both the ground
truth and the predictions, is written as null).

Progress: ``progress=None`` shows tqdm bars when standard error is a terminal
(so notebooks and log files stay clean); True or False forces it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .data import DATASETS, build_dataset, transforms
from .inference import predict, predict_protocol
from .losses import EncNetLoss
from .metrics import SegmentationMetric
from .models import build_model
from .nn import convert_sync_batchnorm, revert_sync_batchnorm
from .viz import save_palette_png

# Settings that may change when a run is resumed: where it runs, not what it computes.
RESUMABLE_CHANGES = ("data_root", "workers", "device", "eval_every", "out", "resume")


class KeyedAugmentation(Dataset):
    """``dataset[(epoch, index)]``: sample ``index`` augmented with random draws seeded by ``(seed, epoch, index)``.

    The dataset's random transforms draw from torch's global generator; here it
    is re-seeded for each sample (and restored afterwards), so an augmentation
    depends on nothing but the key: not on the worker process, the rank, or the
    samples loaded before it.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]


def poly(iteration: int, total: int, power: float) -> float:
    """The poly schedule's factor ``(1 - iteration / total) ** power``."""
    return (1 - iteration / total) ** power


def param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
    """SGD groups: ``model.backbone`` at ``lr``, every other parameter (the head) at ``lr * head_lr_mult``."""
    backbone = list(model.backbone.parameters())
    in_backbone = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in in_backbone]
    return [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]


def build(config: TrainConfig, num_classes: int, *, pretrained: bool = True) -> nn.Module:
    """The model ``config`` describes; ``pretrained=False`` skips ``weights_backbone`` (a checkpoint follows)."""
    options: dict[str, Any] = {
        "num_classes": num_classes,
        "weights_backbone": config.weights_backbone if pretrained else None,
        "aux": config.aux_weight > 0,
    }
    if config.model == "encnet":
        options.update(se_loss=config.se_weight > 0, lateral=config.lateral, num_codes=config.num_codes)
    model = build_model(config.model, config.backbone, **options)
    if config.dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.dropout
    return model


def load_trained(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """The model of a checkpoint, in eval mode on ``device``, with its config and the checkpoint itself."""
    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint["config"])
    model = build(config, checkpoint["num_classes"], pretrained=False)
    load_model_state(model, checkpoint["model"])
    return model.to(device).eval(), config, checkpoint


def setup_process(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the torchrun process group if there is one."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} asked for, but CUDA is not available; pass --device cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def _show_progress(progress: bool | None, rank: int) -> bool:
    return rank == 0 and (sys.stderr.isatty() if progress is None else progress)


def _global_mean(values: Tensor, world: int) -> Tensor:
    if world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= world
    return values


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as JSON atomically (temporary file, then rename); NaN becomes null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(_json_safe(value), indent=1) + "\n")
    os.replace(temporary, path)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    crop_size: int | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    protocol: Any = None,
    ms: bool = False,
    batch_size: int = 1,
    workers: int = 0,
    predictions: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """pixAcc, mIoU, mIoU_all and per-class IoU of ``model`` on ``dataset`` (see :mod:`encnet.metrics`).

    Images go through :func:`encnet.inference.predict` (sliding window beyond
    ``crop_size``; ``scales`` and ``flip`` for the multi-scale test). Under a
    process group every rank scores every N-th image and the confusion
    matrices are summed. ``predictions``: a folder for one palette PNG per
    image, ``{index:05d}.png``, colours from ``dataset.palette``. ``protocol`` (a
    published checkpoint's :class:`encnet.models.zoo.Protocol`, with ``ms`` for its
    multi-scale test) replaces ``crop_size``, ``scales`` and ``flip``.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if len(dataset) < world:
        raise ValueError(f"the evaluation set has {len(dataset)} images, fewer than the {world} processes")
    device = next(model.parameters()).device
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers,
                        generator=torch.Generator(), pin_memory=device.type == "cuda")
    metric = SegmentationMetric(dataset.num_classes)
    if predictions is not None and rank == 0:
        Path(predictions).mkdir(parents=True, exist_ok=True)
    if predictions is not None and world > 1:
        dist.barrier()
    model.eval()
    seen = 0
    for images, masks in tqdm(loader, desc="evaluate", leave=False, disable=not _show_progress(progress, rank)):
        images = images.to(device)
        if protocol is not None:
            labels = predict_protocol(model, images, protocol, ms=ms).argmax(1)
        else:
            labels = predict(model, images, crop_size=crop_size, scales=scales, flip=flip).argmax(1)
        metric.update(labels, masks.to(device))
        if predictions is not None:
            for label in labels.cpu():
                save_palette_png(Path(predictions) / f"{indices[seen]:05d}.png", label, dataset.palette)
                seen += 1
    if world > 1:
        metric.all_reduce()
    return metric.compute()


def whole_images(name: str, split: str, *, root: str | None, options: dict[str, Any]) -> Dataset:
    """``split`` of dataset ``name`` as whole images, normalised and nothing else, for :func:`evaluate`.

    ``build_dataset``'s validation view is a central crop, for quick checks
    during training; the evaluation scores every pixel of the images.
    ``options`` go to the dataset class (see ``encnet.data.build_dataset``).
    """
    if name == "synthetic":  # rendered at its final size and normalised: nothing to crop
        return build_dataset(name, split, **options)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"dataset {name!r} needs its folder: pass --data-root")
    return DATASETS[name](root, split, transforms=v2.Compose(transforms.to_normalised_tensors()), **options)


def _datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    options = {"root": config.data_root, "crop_size": config.crop_size, "base_size": config.base_size}
    return tuple(build_dataset(config.dataset, split, **options, **config.dataset_options) for split in ("train", "val"))


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    differences = [
        f"{name}={saved.get(name)!r} (this run: {value!r})"
        for name, value in config.to_dict().items()
        if name not in RESUMABLE_CHANGES and saved.get(name) != value
    ]
    if differences:
        raise CheckpointError(
            f"cannot resume: the checkpoint's run had {', '.join(differences)}; resuming repeats a run "
            f"exactly, so only {', '.join(RESUMABLE_CHANGES)} may change. Resume with the checkpoint's "
            "settings (`encnet train --resume` alone takes them), or start a new run"
        )


def _restore(config: TrainConfig, num_classes: int, model: nn.Module, optimizer, scheduler, rank: int,
             world: int) -> tuple[int, list, list]:
    """Load ``config.resume`` into the model, optimiser, scheduler and random generators.

    Returns the run so far: (iteration, evaluation history, per-iteration losses).
    """
    checkpoint = load_checkpoint(config.resume)
    check_compatible(checkpoint, model=config.model, backbone=config.backbone, num_classes=num_classes)
    _check_resumable(checkpoint["config"], config)
    if len(checkpoint["rng"]) != world:
        raise CheckpointError(
            f"the checkpoint was written by {len(checkpoint['rng'])} processes, this run has {world}; "
            "resume with the same number of processes (their dropout streams are saved per rank)"
        )
    load_model_state(model, checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"][rank])
    return checkpoint["iteration"], checkpoint["history"], checkpoint["losses"].tolist()


def _gather(value: Any, world: int) -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank."""
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def train(config: TrainConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Train ``config`` (resuming from ``config.resume`` if set), evaluating every ``eval_every`` epochs.

    Returns ``{"config", "classes", "history", "losses", "metrics", "checkpoint", "model"}``:
    ``history`` holds one record per evaluation (epoch, iteration, mean loss and
    its parts, lr, images/s, pixAcc, mIoU, mIoU_all, IoU), ``losses`` the loss of
    every iteration (mean over the global batch), ``metrics`` the last
    evaluation, ``checkpoint`` the path written (None when ``config.out`` is None),
    ``model`` the trained model (with plain batch norms).

    Raises:
        FloatingPointError: the loss became NaN or infinite; the message names
            the iteration. The weights are not updated with it, and the last
            checkpoint is left as it was.
    """
    rank, world, device = setup_process(config.device)
    if config.batch_size % world:
        raise ValueError(
            f"batch_size {config.batch_size} is the global batch and must split evenly over the {world} "
            f"processes; pass a multiple of {world}, e.g. --batch-size {world * max(1, config.batch_size // world)}"
        )
    torch.manual_seed(config.seed + rank)  # DDP copies rank 0's initial weights to the others
    np.random.seed(config.seed + rank)
    random.seed(config.seed + rank)
    train_set, val_set = _datasets(config)
    rank_batch = config.batch_size // world
    if len(train_set) < config.batch_size:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than one batch of {config.batch_size}; "
            "lower --batch-size or add data"
        )

    model = build(config, train_set.num_classes, pretrained=config.resume is None)
    if world > 1:
        model = convert_sync_batchnorm(model)
    model.to(device)
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else model
    lr = config.lr * config.batch_size / 16
    optimizer = torch.optim.SGD(
        param_groups(model, lr, config.head_lr_mult), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    sampler = DistributedSampler(range(len(train_set)), num_replicas=world, rank=rank, seed=config.seed, drop_last=True)
    iterations_per_epoch = len(sampler) // rank_batch
    total = iterations_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: poly(t, total, config.poly_power))
    criterion = EncNetLoss(se_weight=config.se_weight, aux_weight=config.aux_weight)
    part_names = ["out"] + ["aux"] * (config.aux_weight > 0) + ["se"] * (config.se_weight > 0)

    iteration, history, losses = 0, [], []
    if config.resume:
        iteration, history, losses = _restore(config, train_set.num_classes, model, optimizer, scheduler, rank, world)

    out = Path(config.out) if config.out is not None and rank == 0 else None
    checkpoint_path = Path(config.out) / "checkpoint.pt" if config.out is not None else None
    if checkpoint_path is not None and not config.resume:
        if _gather(out is not None and checkpoint_path.exists(), world)[0]:
            raise FileExistsError(
                f"{config.out} already holds a run's checkpoint.pt; continue it with --resume "
                f"{checkpoint_path}, or pass another --out (a new run never overwrites an old one)"
            )
        if out is not None:
            (out / "log.jsonl").unlink(missing_ok=True)  # left by a run that stopped before its first epoch
    show = _show_progress(progress, rank)
    augmented = KeyedAugmentation(train_set, config.seed)
    loader_generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(iteration // iterations_per_epoch, config.epochs):
        sampler.set_epoch(epoch)
        loader = DataLoader(
            augmented, batch_size=rank_batch, sampler=[(epoch, index) for index in sampler], drop_last=True,
            num_workers=config.workers, generator=loader_generator, pin_memory=device.type == "cuda",
        )
        net.train()
        sums, start = torch.zeros(1 + len(part_names), dtype=torch.float64), time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show, leave=False)
        for step, (images, masks) in enumerate(bar, start=1):
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            loss, parts = criterion(net(images), masks)
            values = _global_mean(torch.stack([loss.detach(), *(parts[name] for name in part_names)]), world)
            if not torch.isfinite(values[0]):
                raise FloatingPointError(
                    f"the loss is {values[0].item()} at iteration {iteration + 1} of {total} (epoch {epoch + 1}); "
                    f"training stopped before updating the weights with it. The last good checkpoint "
                    f"({checkpoint_path or 'none: out=None'}) is left as it was. Lower --lr, or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            iteration += 1
            values = values.double().cpu()
            sums += values
            losses.append(values[0].item())
            bar.set_postfix(loss=f"{values[0].item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{step * config.batch_size / (time.perf_counter() - start):.1f}")
        bar.close()
        seconds = time.perf_counter() - start
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            metrics = evaluate(model, val_set, crop_size=config.crop_size, batch_size=rank_batch,
                               workers=config.workers, progress=progress)
            mean = (sums / iterations_per_epoch).tolist()
            record = {
                "epoch": epoch + 1, "iteration": iteration, "loss": mean[0],
                "loss_parts": dict(zip(part_names, mean[1:])),
                "lr": optimizer.param_groups[0]["lr"], "images_per_s": iterations_per_epoch * config.batch_size / seconds,
                **metrics,
            }
            history.append(record)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                with open(out / "log.jsonl", "a") as log:
                    log.write(json.dumps(_json_safe(record)) + "\n")
            if show:
                tqdm.write(f"epoch {epoch + 1}: loss {mean[0]:.4f}  pixAcc {metrics['pixAcc']:.4f}  "
                           f"mIoU {metrics['mIoU']:.4f}  {record['images_per_s']:.1f} images/s")
        if checkpoint_path is not None:
            rng = _gather(rng_state(), world)  # every rank takes part; rank 0 writes
            if out is not None:
                save_checkpoint(checkpoint_path, {
                    "config": config.to_dict(), "num_classes": train_set.num_classes,
                    "classes": list(train_set.classes), "iteration": iteration,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rng, "history": history,
                    "losses": torch.tensor(losses, dtype=torch.float64),
                })

    metrics = history[-1] if history else None
    final = None if metrics is None else {key: metrics[key] for key in ("pixAcc", "mIoU", "mIoU_all", "IoU")}
    if out is not None and final is not None:
        write_json(out / "metrics.json", {**final, "classes": list(train_set.classes),
                                          "epoch": metrics["epoch"], "config": config.to_dict()})
    return {
        "config": config.to_dict(), "classes": list(train_set.classes), "history": history, "losses": losses,
        "metrics": final, "checkpoint": str(checkpoint_path) if checkpoint_path else None,
        "model": revert_sync_batchnorm(model) if world > 1 else model,
    }


def sweep(
    config: TrainConfig,
    *,
    alphas: list[float],
    seeds: list[int],
    with_fcn: bool = False,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The SE-loss weight sweep: train EncNet with ``se_weight = alpha`` for every alpha and seed.

    ``with_fcn`` adds an FCN run per seed, so the ablation table (FCN, EncNet
    (alpha = 0), EncNet + SE-loss) comes from one file. Every run is ``config``
    with ``se_weight``, ``seed`` (and ``model``) replaced and no files of its own.
    ``out``: a JSON file, rewritten after each run; runs it already holds (for
    the same base config) are not trained again, so an interrupted sweep
    continues where it stopped. Returns what the file holds::

        {"config": base config, "alphas": [...], "seeds": [...],
         "runs": [{"model", "se_weight", "seed", "pixAcc", "mIoU", "mIoU_all", "IoU", "history"}]}
    """
    base = dataclasses.replace(config, out=None, resume=None)
    result = {"config": base.to_dict(), "alphas": list(alphas), "seeds": list(seeds), "runs": []}
    rank, _, _ = setup_process(config.device)  # under torchrun: join the group before rank 0 reads the file
    previous = [json.loads(Path(out).read_text()) if out is not None and Path(out).is_file() and rank == 0 else None]
    if dist.is_initialized():  # the other ranks follow rank 0's file
        dist.broadcast_object_list(previous, src=0)
    if previous[0] is not None:
        if previous[0]["config"] != _json_safe(result["config"]):
            raise ValueError(
                f"{str(out)!r} holds a sweep of another config; pass another --out, or delete the file to start over"
            )
        result["runs"] = previous[0]["runs"]
    planned = [("fcn", 0.0, seed) for seed in seeds] if with_fcn else []
    planned += [(config.model, alpha, seed) for alpha in alphas for seed in seeds]
    done = {(run["model"], run["se_weight"], run["seed"]) for run in result["runs"]}
    for model, alpha, seed in planned:
        if (model, alpha, seed) in done:
            continue
        run = train(dataclasses.replace(base, model=model, se_weight=alpha, seed=seed), progress=progress)
        result["runs"].append({"model": model, "se_weight": alpha, "seed": seed, **run["metrics"],
                               "history": run["history"]})
        if out is not None and rank == 0:
            write_json(out, result)
    return result
