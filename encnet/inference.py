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

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

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
