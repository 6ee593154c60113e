"""Evaluation: a model's pixAcc and mIoU on a dataset split, every image through :func:`encnet.inference.predict`.

    from encnet.inference import Protocol
    from encnet.models import load_trained
    from encnet.data.wrappers import whole_images
    model, config, _ = load_trained("runs/quick/checkpoint.pt")
    val = whole_images("synthetic", "val", root=None, options=config.dataset_options)
    evaluate(model, val, Protocol(crop_size=config.crop_size))          # single scale
    evaluate(model, val, Protocol(crop_size=config.crop_size).multi_scale())  # the paper's --ms

During training the validation split is scored as the data loader gives it
(``build_dataset``'s central crop, the reference's quick check); ``encnet
evaluate`` scores every pixel of the full images (:func:`encnet.data.wrappers.whole_images`),
single- or multi-scale. Under a process group every rank scores every N-th
image and the confusion matrices are summed (:mod:`encnet.metrics`).

``amp="bf16"`` or ``"fp16"`` runs the model's forward passes under
``torch.autocast`` (:func:`amp_autocast`, as training with ``TrainConfig.amp``
does); the logits are brought back to float32 before the windows and views
are combined.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .distributed import show_progress
from .inference import Protocol, predict
from .metrics import SegmentationMetric
from .viz import save_palette_png

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # TrainConfig.amp -> autocast's dtype ("off": none)


def amp_autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, dtype)`` for ``amp`` = "bf16" or "fp16" (``TrainConfig.amp``); "off": no-op."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def _autocast_forward(model: nn.Module, device: torch.device, amp: str) -> Callable[[Tensor], dict[str, Tensor]]:
    """``model``'s forward under :func:`amp_autocast`, its outputs cast back to float32."""
    def forward(images: Tensor) -> dict[str, Tensor]:
        with amp_autocast(device, amp):
            outputs = model(images)
        return {name: value.float() for name, value in outputs.items()}

    return forward


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """The memory format of ``model``'s first convolution (NHWC after training with ``channels_last``)."""
    weight = next((m.weight for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    nhwc = weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    protocol: Protocol | None = None,
    *,
    batch_size: int = 1,
    workers: int = 0,
    predictions: str | os.PathLike | None = None,
    progress: bool | None = None,
    amp: str = "off",
) -> dict[str, Any]:
    """pixAcc, mIoU, mIoU_all and per-class IoU of ``model`` on ``dataset`` (see :mod:`encnet.metrics`).

    Images go through :func:`encnet.inference.predict` under ``protocol`` (sliding
    windows of ``protocol.crop_size``, its scales and flips). ``predictions``: a
    folder for one palette PNG per image, ``{index:05d}.png``, colours from
    ``dataset.palette``. ``progress``: a tqdm bar on rank 0 (None: when standard
    error is a terminal). ``protocol`` None: each image whole, at its own size.
    ``amp``: "off" (float32), or "bf16" / "fp16" forward passes under autocast.
    """
    protocol = protocol or Protocol()
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
    memory_format = memory_format_of(model)
    forward = model if amp == "off" else _autocast_forward(model, device, amp)
    for images, masks in tqdm(loader, desc="evaluate", leave=False, disable=not show_progress(progress, rank)):
        labels = predict(forward, images.to(device, memory_format=memory_format), protocol).argmax(1)
        metric.update(labels, masks.to(device))
        if predictions is not None:
            for label in labels.cpu():
                save_palette_png(Path(predictions) / f"{indices[seen]:05d}.png", label, dataset.palette)
                seen += 1
    if world > 1:
        metric.all_reduce()
    return metric.compute()
