"""Image + mask files on disk -> ``(tv_tensors.Image, tv_tensors.Mask)``, with errors that name the file.

The base of the folder datasets, ADE20K and PASCAL-Context: a subclass finds
its pairs of files and names its classes; reading, checking, the label shift
both datasets share (stored 0 = unlabelled, k = class k-1) and the joint
``transforms`` are done here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import UserError
from .transforms import IGNORE_INDEX

MASK_MODES = ("L", "P")
MAX_PIXELS = 50_000_000
"""The largest image (width x height) :func:`read_image` decodes: 50 million pixels, a 48-megapixel photo
(8000 x 6000) and a little more. A larger image is refused from its header, before decoding: decoded, a
12000 x 12000 PNG of a few hundred KB takes 430 MB as bytes and 1.7 GB as the model's float input.
``--max-pixels N`` of ``encnet predict``, ``evaluate`` and ``train`` raises it (through the environment
variable ``ENCNET_MAX_PIXELS``, which reaches the data loader's workers)."""
IMAGE_MODES = ("RGB", "L", "P", "CMYK", "YCbCr", "RGBA", "LA")
"""The 8-bit modes :func:`read_image` converts to RGB; 16-bit (``I;16``), 32-bit (``I``) and float (``F``)
images are refused, since converting them would clip them silently."""


def max_pixels() -> int:
    """The image size limit in force: ``ENCNET_MAX_PIXELS`` if set (``--max-pixels``), else :data:`MAX_PIXELS`."""
    value = os.environ.get("ENCNET_MAX_PIXELS", "")
    if not value:
        return MAX_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"ENCNET_MAX_PIXELS is {value!r}, but it must be a positive whole number of pixels; "
                        "unset it or pass --max-pixels N")
    return int(value)


def check_size(width: int, height: int, source: str) -> None:
    """Refuse an image of more than :func:`max_pixels` pixels, naming ``source`` and the flag that raises it."""
    limit = max_pixels()
    if width * height > limit:
        raise UserError(
            f"{source} is {width} x {height} = {width * height:,} pixels, more than the limit of {limit:,}; "
            f"downscale it, or pass --max-pixels {width * height} if this machine has the memory for it"
        )


_pil_limit_lock = threading.Lock()
_pil_limit_users = [0, Image.MAX_IMAGE_PIXELS]  # how many threads are inside no_pil_size_limit; PIL's own limit


@contextlib.contextmanager
def no_pil_size_limit() -> Iterator[None]:
    """PIL's own decompression-bomb check off while :func:`check_size` applies ours, from the header.

    PIL's limit is one global; the count keeps it off until the last thread
    (``check_files`` opens headers in threads) has left, then puts it back.
    """
    with _pil_limit_lock:
        if _pil_limit_users[0] == 0:
            _pil_limit_users[1] = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pil_limit_users[0] += 1
    try:
        yield
    finally:
        with _pil_limit_lock:
            _pil_limit_users[0] -= 1
            if _pil_limit_users[0] == 0:
                Image.MAX_IMAGE_PIXELS = _pil_limit_users[1]


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``path`` opened by PIL (header read, pixels not yet decoded), checked before anything decodes it.

    A missing or unreadable file, an image larger than :func:`max_pixels` or
    one not of :data:`IMAGE_MODES` is a :class:`UserError` naming the file, as
    is a failure to decode it inside the ``with`` block.
    """
    if not path.is_file():
        raise UserError(f"the image {path} does not exist; check the path (for a dataset: extract its archive "
                        "again, or fix its split list)")
    try:
        with no_pil_size_limit(), Image.open(path) as image:
            check_size(*image.size, f"the image {path}")
            if image.mode not in IMAGE_MODES:
                raise UserError(f"the image {path} is mode {image.mode}, but encnet reads 8-bit images "
                                f"({', '.join(IMAGE_MODES)}); convert it to 8-bit RGB first")
            yield image
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(
            f"cannot read {path} as an image ({error}): it is not an image file PIL can read, or it is corrupt "
            "or truncated; pass a PNG or JPEG (for a dataset: extract the file again from its archive)"
        ) from None


def read_image(path: Path) -> tv_tensors.Image:
    """An 8-bit image file -> RGB uint8 (3, H, W); checked by :func:`open_image` before decoding."""
    with open_image(path) as image:
        array = np.asarray(image.convert("RGB"))
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
