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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
