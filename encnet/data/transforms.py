"""Joint image + mask transforms for segmentation (torchvision.transforms.v2).

A dataset item is an image and its mask; every geometric step must move them
together. torchvision.transforms.v2 does that when the mask is a
:class:`tv_tensors.Mask`: one random draw per call, bilinear resizing for the
image, nearest for the mask, and a fill value per type. The loaders of
:mod:`encnet.data` return ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask
int64 (H, W))``, and these pipelines map that to ``(image float32 (3, h, w)
normalised, mask int64 (h, w))`` as plain tensors, 255 marking ignored pixels.

Training (the reference implementation's recipe)::

    long side ~ U{0.5 base_size .. 2.0 base_size}, aspect kept  -> RandomLongSide
    pad right/bottom to crop_size: image 0 (black), mask 255     -> PadToSize
    random crop_size x crop_size window                          -> RandomCrop
    horizontal flip with probability 1/2                         -> RandomHorizontalFlip
    scale to [0, 1], normalise with the ImageNet mean / std      -> ToDtype, Normalize

Validation during training (the reference's validation transform): resize the
short side to ``crop_size``, take the central ``crop_size`` square, normalise.
It scores a fixed-size view of each image for model selection; scoring whole
images (and multi-scale) is the evaluation's job, not the loader's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


class RandomLongSide(v2.Transform):
    """Resize so that the long side is a random integer in ``[min_size, max_size]``, aspect kept."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomLongSide needs 0 < min_size <= max_size, got {min_size} and {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"long_side": int(torch.randint(self.min_size, self.max_size + 1, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=None, max_size=params["long_side"])


class PadToSize(v2.Transform):
    """Pad on the right and bottom to at least ``size x size``: images with 0, masks with 255."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size - width, 0), max(self.size - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


def to_normalised_tensors() -> list[v2.Transform]:
    """Image to float32 normalised with the ImageNet mean and std, mask to int64 (no resizing)."""
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        v2.ToPureTensor(),
    ]


def train_transforms(*, base_size: int, crop_size: int) -> v2.Compose:
    """Training augmentation: random long side in [0.5, 2] x ``base_size``, pad, random crop, flip."""
    return v2.Compose([
        RandomLongSide(int(0.5 * base_size), int(2.0 * base_size)),
        PadToSize(crop_size),
        v2.RandomCrop(crop_size),
        v2.RandomHorizontalFlip(),
        *to_normalised_tensors(),
    ])


def val_transforms(*, crop_size: int) -> v2.Compose:
    """Validation view: short side resized to ``crop_size``, central square crop."""
    return v2.Compose([v2.Resize(crop_size), v2.CenterCrop(crop_size), *to_normalised_tensors()])


def denormalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """Undo a normalisation, by default ImageNet's: (3, H, W) or (B, 3, H, W) -> RGB in [0, 1], for display.

    ``x * std + mean`` per channel, clamped to [0, 1]; CIFAR-10 passes its own
    ``CIFAR10_MEAN`` and ``CIFAR10_STD``.
    """
    mean = torch.tensor(mean, device=image.device)[:, None, None]
    std = torch.tensor(std, device=image.device)[:, None, None]
    return (image * std + mean).clamp(0, 1)
