"""Image + mask files on disk -> ``(tv_tensors.Image, tv_tensors.Mask)``, with errors that name the file.

The base of the folder datasets, ADE20K and PASCAL-Context: a subclass finds
its pairs of files and names its classes; reading, checking, the label shift
both datasets share (stored 0 = unlabelled, k = class k-1) and the joint
``transforms`` are done here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import UserError
from .transforms import IGNORE_INDEX

MASK_MODES = ("L", "P")


def read_image(path: Path) -> tv_tensors.Image:
    """An RGB image file -> uint8 (3, H, W); a missing or unreadable file is a :class:`UserError` naming it."""
    if not path.is_file():
        raise UserError(f"the image {path} does not exist; extract the dataset's archive again, or fix its split list")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(
            f"cannot read the image {path} ({error}): the file is corrupt or truncated; "
            "extract it again from the dataset's archive"
        ) from error
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))


def mask_mode_problem(mode: str) -> str | None:
    """Why a mask of PIL ``mode`` is no label image, or None if it is one (8-bit single channel: "L" or "P")."""
    if mode in MASK_MODES:
        return None
    kind = {"RGB": "a colour image", "RGBA": "a colour image", "I;16": "16-bit", "I": "32-bit", "F": "floating-point"}
    return (
        f"is mode {mode} ({kind.get(mode, 'not single-channel 8-bit')}), but a mask must be a single-channel "
        "8-bit PNG (mode L or P) whose values are the class indices; convert it, e.g. map each colour "
        "to its class index"
    )


def read_mask(path: Path) -> np.ndarray:
    """A single-channel label PNG (mode "L" or palette "P") -> its stored values, (H, W) uint8."""
    if not path.is_file():
        raise UserError(f"the mask {path} does not exist; extract the dataset's archive again, or fix its split list")
    try:
        with Image.open(path) as image:
            problem = mask_mode_problem(image.mode)
            values = None if problem else np.asarray(image).copy()
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(
            f"cannot read the mask {path} ({error}): the file is corrupt or truncated; extract it again"
        ) from error
    if problem:
        raise UserError(f"the mask {path} {problem}")
    return values


def shift_labels(stored: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """Stored 0 = unlabelled, k = class k-1 -> labels in [0, num_classes) with 255 for unlabelled.

    The convention of ADE20K and of PASCAL-Context's 59 classes. Values above
    ``num_classes`` mean the mask is not of this dataset: an error naming the file.
    """
    if stored.max(initial=0) > num_classes:
        raise UserError(
            f"the mask {path} holds the value {int(stored.max())}, but this dataset stores labels in "
            f"[0, {num_classes}] (0 = unlabelled); is the file from another dataset or a wrong conversion?"
        )
    labels = stored.astype(np.int64) - 1
    labels[stored == 0] = IGNORE_INDEX
    return labels


class SegmentationFiles(Dataset):
    """Pairs of image and mask files: item ``i`` is ``transforms(image, mask)``.

    Without ``transforms`` an item is ``(tv_tensors.Image uint8 (3, H, W),
    tv_tensors.Mask int64 (H, W))`` with labels in ``[0, num_classes)`` and 255
    for ignored pixels (:func:`shift_labels` of the stored values). Subclasses
    set ``classes``, ``num_classes`` and ``palette``.
    """

    classes: tuple[str, ...]
    num_classes: int
    palette: tuple[tuple[int, int, int], ...]

    def __init__(self, images: list[Path], masks: list[Path], transforms: Callable | None = None) -> None:
        self.images, self.masks, self.transforms = images, masks, transforms

    def __len__(self) -> int:
        return len(self.images)

    def pairs(self) -> list[tuple[Path, Path]]:
        """``(image file, mask file)`` of every item, in order (what :mod:`encnet.data.check` checks)."""
        return list(zip(self.images, self.masks))

    def __getitem__(self, index: int):
        image = read_image(self.images[index])
        mask = shift_labels(read_mask(self.masks[index]), self.num_classes, self.masks[index])
        if mask.shape != tuple(image.shape[1:]):
            raise UserError(
                f"the mask {self.masks[index]} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{self.images[index]} is {image.shape[2]}x{image.shape[1]}; one of the two files is wrong"
            )
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        return self.transforms(image, mask) if self.transforms is not None else (image, mask)
