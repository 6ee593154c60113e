r"""Inference on whole images: sliding window, several scales, horizontal flip.

A segmentation network is trained on crops of ``crop_size``; at test time an
image can be larger. :func:`sliding_window` then runs the network on windows of
``crop_size`` moved by a stride of 2/3 of the crop (the reference
implementation's stride), so neighbouring windows overlap by a third, and
averages the logits where they overlap. Windows at the right and bottom edges
are shifted inwards to end at the border, so no padding is needed.

:func:`predict` adds the multi-scale test of the paper: the image is resized by
each factor in ``scales`` (the paper's ``--ms``: 0.5, 0.75, 1.0, 1.25, 1.5,
1.75), optionally flipped left-right, segmented, and brought back to its own
size; the class probabilities of all views are averaged:

.. math::

    p(c \mid \text{pixel}) = \frac{1}{|V|} \sum_{v \in V}
        \mathrm{softmax}_c\big(\text{resize}(f(v(\text{image})))\big)

where ``V`` is the set of (scale, flip) views.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .viz import overlay, save_palette_png

MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _window_starts(length: int, crop_size: int, stride: int) -> list[int]:
    """Start offsets of windows of ``crop_size`` covering ``length`` pixels, the last one flush with the end."""
    if length <= crop_size:
        return [0]
    return list(range(0, length - crop_size, stride)) + [length - crop_size]


def sliding_window(model: nn.Module, images: Tensor, *, crop_size: int) -> Tensor:
    """Logits (B, K, H, W) of ``model(images)["out"]`` computed window by window.

    ``images`` is (B, 3, H, W); inputs no larger than ``crop_size`` on both sides
    go through in one pass.
    """
    height, width = images.shape[-2:]
    if height <= crop_size and width <= crop_size:
        return model(images)["out"]
    stride = math.ceil(crop_size * 2 / 3)
    logits, counts = None, images.new_zeros(1, 1, height, width)
    for top in _window_starts(height, crop_size, stride):
        for left in _window_starts(width, crop_size, stride):
            rows, cols = slice(top, top + crop_size), slice(left, left + crop_size)
            window_logits = model(images[..., rows, cols])["out"]  # (B, K, h, w)
            if logits is None:
                logits = images.new_zeros(images.size(0), window_logits.size(1), height, width)
            logits[..., rows, cols] += window_logits
            counts[..., rows, cols] += 1
    return logits / counts


@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, *, crop_size: int, scales: tuple[float, ...] = (1.0,), flip: bool = False
) -> Tensor:
    """Class probabilities (B, K, H, W) for (B, 3, H, W) images, averaged over scales and flips.

    The model should be in eval mode. ``scales`` multiply the image's own size.
    """
    if not scales or any(scale <= 0 for scale in scales):
        raise ValueError(f"scales must be positive factors, e.g. {MULTI_SCALES}; got {scales!r}")
    height, width = images.shape[-2:]
    probabilities = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if scale == 1 else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            logits = sliding_window(model, view, crop_size=crop_size)
            if flipped:
                logits = logits.flip(-1)
            if scale != 1:
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            view_probabilities = logits.softmax(1)
            probabilities = view_probabilities if probabilities is None else probabilities + view_probabilities
    return probabilities / (len(scales) * (2 if flip else 1))


def fit_size(height: int, width: int, fit: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of an image resized to fit in ``fit`` = (long, short) keeping its aspect ratio.

    mmsegmentation's ``Resize(scale=(2048, 512), keep_ratio=True)``: the factor is
    the largest that keeps the long side <= ``max(fit)`` and the short side <= ``min(fit)``.
    """
    factor = min(max(fit) / max(height, width), min(fit) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def long_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) of an image whose long side is resized to ``long_side``, aspect kept (PyTorch-Encoding)."""
    if height > width:
        return long_side, int(width * long_side / height + 0.5)
    return int(height * long_side / width + 0.5), long_side


def padded_sliding_window(
    model: nn.Module,
    images: Tensor,
    *,
    crop_size: int,
    stride: int,
    pad_value: Tensor,
    flip: bool = False,
    score: Callable[[Tensor], Tensor] = lambda logits: logits,
) -> Tensor:
    """Logits (B, K, H, W) from windows of ``crop_size`` at ``stride``, each padded to the crop (the reference's way).

    Windows start at 0, stride, 2 stride, ... until they reach the border; a
    window (or an image) smaller than the crop is padded on the right and bottom
    with ``pad_value`` (3,) (a black pixel, normalised), and the logits of the
    padding are cut away. With ``flip`` each window's logits are summed with
    those of its mirror image, flipped back. ``score`` maps each window's logits
    (the reference takes their ``exp``); overlapping scores are averaged.
    """
    height, width = images.shape[-2:]

    def run(window: Tensor) -> Tensor:
        h, w = window.shape[-2:]
        padded = pad_value.view(1, 3, 1, 1).expand(window.size(0), 3, max(h, crop_size), max(w, crop_size)).clone()
        padded[..., :h, :w] = window
        logits = model(padded)["out"]
        if flip:
            logits = logits + model(padded.flip(-1))["out"].flip(-1)
        return score(logits[..., :h, :w])

    rows = range(0, height - crop_size + stride, stride) if height > crop_size else [0]
    cols = range(0, width - crop_size + stride, stride) if width > crop_size else [0]
    scores, counts = None, images.new_zeros(1, 1, height, width)
    for top in rows:
        for left in cols:
            window = (..., slice(top, min(top + crop_size, height)), slice(left, min(left + crop_size, width)))
            window_scores = run(images[window])
            if scores is None:
                scores = images.new_zeros(images.size(0), window_scores.size(1), height, width)
            scores[window] += window_scores
            counts[window] += 1
    return scores / counts


def _view_size(height: int, width: int, protocol: Any, scale: float) -> tuple[int, int]:
    if protocol.fit is not None:
        return fit_size(height, width, (int(protocol.fit[0] * scale), int(protocol.fit[1] * scale)))
    if protocol.base_size is not None:
        return long_side_size(height, width, math.ceil(protocol.base_size * scale))
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.no_grad()
def predict_protocol(model: nn.Module, images: Tensor, protocol: Any, *, ms: bool = False) -> Tensor:
    """Class scores (B, K, H, W) of normalised (B, 3, H, W) images under a publisher's test ``protocol``.

    ``protocol`` is an :class:`encnet.models.zoo.Protocol`; without ``ms`` there is
    one view, at scale 1, unflipped. Each scale resizes the image (to fit in
    ``fit`` x scale, or to a long side of ``base_size`` x scale) and runs the whole
    image, or padded sliding windows of ``crop_size``; the scores are resized
    back to the image's size and combined as the publisher does:

    - ``combine="probabilities"`` (mmsegmentation): the softmax of every (scale,
      flip) view is averaged;
    - ``combine="exp"`` (PyTorch-Encoding's ``MultiEvalModule``): each window
      scores ``exp(logits + flipped logits)``, windows are averaged where they
      overlap, and the scales' maps are summed.

    The result is normalised to sum to 1 over K; its argmax is the predicted label.
    """
    height, width = images.shape[-2:]
    scales = protocol.scales if ms else (1.0,)
    flip = ms and protocol.flip
    pad_value = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).to(images)  # black, normalised
    total = None
    for scale in scales:
        view = F.interpolate(images, size=_view_size(height, width, protocol, scale), mode="bilinear",
                             align_corners=protocol.align_corners)
        if protocol.crop_size is not None:
            stride = int(protocol.crop_size * protocol.stride_rate)
            score = torch.exp if protocol.combine == "exp" else (lambda logits: logits.softmax(1))
            maps = [padded_sliding_window(model, view, crop_size=protocol.crop_size, stride=stride,
                                          pad_value=pad_value, flip=flip, score=score)]
        else:
            logits = model(view)["out"]
            if protocol.combine == "exp":
                maps = [(logits + model(view.flip(-1))["out"].flip(-1) if flip else logits).exp()]
            else:
                maps = [logits.softmax(1)] + ([model(view.flip(-1))["out"].flip(-1).softmax(1)] if flip else [])
        for scores in maps:
            scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=protocol.align_corners)
            total = scores if total is None else total + scores
    return total / total.sum(1, keepdim=True)


@dataclass
class Segmentation:
    """What :func:`segment` returns for one image of H x W pixels and K classes.

    Attributes:
        labels: (H, W) int64, the predicted class of every pixel.
        se: (K,) the SE branch's probability that each class is in the image
            (sigmoid of ``"se"``), or None for a model without the branch.
        gamma: (C,) the Context Encoding Module's channel attention, or None (FCN).
    """

    labels: Tensor
    se: Tensor | None
    gamma: Tensor | None

    def top_classes(self, classes: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` classes the SE branch finds most probable, with their probabilities."""
        if self.se is None:
            return []
        values, indices = self.se.topk(min(k, self.se.numel()))
        return [(classes[i], round(v, 4)) for v, i in zip(values.tolist(), indices.tolist())]

    def pixel_shares(self, classes: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` classes covering most pixels, with their share of the image."""
        counts = torch.bincount(self.labels.flatten(), minlength=len(classes)).double()
        values, indices = (counts / counts.sum()).topk(min(k, len(classes)))
        return [(classes[i], round(v, 4)) for v, i in zip(values.tolist(), indices.tolist()) if v > 0]


def to_model_input(image: Any) -> Tensor:
    """A PIL image, a file path or a uint8 (3, H, W) tensor -> a normalised float (1, 3, H, W) tensor."""
    if isinstance(image, (str, os.PathLike)):
        from .data.folder import read_image

        image = read_image(Path(image))
    if isinstance(image, Image.Image):
        image = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    if not isinstance(image, Tensor) or image.dim() != 3 or image.size(0) != 3 or image.dtype != torch.uint8:
        raise ValueError("expected an RGB image: a PIL image, a path, or a uint8 (3, H, W) tensor")
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image.float() / 255 - mean) / std)[None]


@torch.no_grad()
def segment(model: nn.Module, image: Any, *, protocol: Any = None, ms: bool = False) -> Segmentation:
    """Segment one image with ``model`` (in eval mode) under a publisher's test ``protocol``.

    ``image``: see :func:`to_model_input`. ``protocol``: an
    :class:`encnet.models.zoo.Protocol` (a published entry's ``protocol``); None
    runs the whole image at its own size. The SE probabilities and gamma come
    from one pass over the whole image at the protocol's single scale.
    """
    from .models.zoo import Protocol

    protocol = protocol or Protocol()
    x = to_model_input(image).to(next(model.parameters()).device)
    labels = predict_protocol(model, x, protocol, ms=ms).argmax(1)[0].cpu()
    view = F.interpolate(x, size=_view_size(*x.shape[-2:], protocol, 1.0), mode="bilinear",
                         align_corners=protocol.align_corners)
    outputs = model(view)
    enc_module = getattr(getattr(model, "head", None), "enc_module", None)
    gamma = enc_module.gamma[0].cpu() if enc_module is not None and enc_module.gamma is not None else None
    return Segmentation(labels, outputs["se"][0].sigmoid().cpu() if "se" in outputs else None, gamma)


def save_segmentation(result: Segmentation, image: Any, out: str | os.PathLike, stem: str, *,
                      classes: Sequence[str], palette: Sequence[Sequence[int]], extra: dict | None = None) -> dict:
    """Write ``<stem>_labels.png`` (palette PNG), ``<stem>_overlay.png`` and ``<stem>.json`` into ``out``.

    The JSON holds the SE branch's 10 most probable classes, the 10 classes
    covering most pixels, and ``extra``. Returns the JSON's content.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_palette_png(out / f"{stem}_labels.png", result.labels, palette)
    blend = overlay(to_model_input(image)[0], result.labels, palette)  # (H, W, 3) in [0, 1]
    Image.fromarray((blend * 255 + 0.5).astype(np.uint8)).save(out / f"{stem}_overlay.png")
    record = {
        **(extra or {}),
        "size": list(result.labels.shape),
        "se_top10": [{"class": name, "probability": p} for name, p in result.top_classes(classes)],
        "pixels_top10": [{"class": name, "share": share} for name, share in result.pixel_shares(classes)],
    }
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
