"""Dataset files checked before a run depends on them.

Two checks of the image/mask pairs of a dataset (its ``pairs()``: every
:class:`~encnet.data.folder.SegmentationFiles` and :class:`~encnet.data.PascalVOC`
has it; a dataset without files, such as the synthetic scenes, passes both):

- :func:`check_files`, fast, before the first training iteration and before an
  evaluation: every file exists and its header reads; an image is an 8-bit
  image, a mask a single-channel 8-bit label PNG (mode L or P) of its image's
  size, and a JPEG ends with its end-of-image marker (a truncated download
  does not). No pixel is decoded, except of a JPEG without that marker.
- :func:`check_dataset`, complete (``encnet check-data``): every item is
  loaded as training loads it, so every pixel is decoded and every mask's
  labels are checked against the dataset's range.

The label range is not part of the fast check (it needs every pixel); the
loaders check it as each mask is loaded and name the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import UserError, one_line
from .folder import IMAGE_MODES, mask_mode_problem, max_pixels, no_pil_size_limit

_JPEG_END = b"\xff\xd9"  # EOI: cannot occur inside JPEG entropy-coded data (0xFF is followed by 0x00 there)
_TAIL_BYTES = 1024
_WORKERS = min(16, (os.cpu_count() or 1) * 4)  # threads: the checks wait on the disk, not on the CPU


def check_files(dataset: Dataset, *, same_size: bool = False) -> None:
    """The fast check of every image/mask pair of ``dataset``; raises one :class:`UserError` for all problems.

    Pass the dataset itself, not a wrapper (a Subset, an augmentation) around it.
    The error names the first bad file, how many pairs fail and how to list
    them all. ``same_size``: the images must also be of one size (whole images
    batched together, as an evaluation with a batch size above 1 does).
    """
    if not hasattr(dataset, "pairs"):
        return
    pairs = dataset.pairs()
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        checked = list(pool.map(lambda pair: _check_pair(*pair), pairs))
    problems = [problem for _, problem in checked if problem]
    if problems:
        raise UserError(
            f"{len(problems)} of the {len(pairs)} image/mask pairs of {type(dataset).__name__} fail the file "
            f"check; the first: {problems[0]}. List them all with `encnet check-data --dataset <name> "
            "--data-root <root>`, then fix or re-extract them"
        )
    sizes = {size: image for (size, _), (image, _) in zip(checked, pairs)}
    if same_size and len(sizes) > 1:
        (first, one), (second, other) = list(sizes.items())[:2]
        raise UserError(
            f"whole images batched together must have one size, but {one} is {first[0]}x{first[1]} and "
            f"{other} is {second[0]}x{second[1]}; evaluate with a batch size of 1"
        )


def _check_pair(image: Path, mask: Path) -> tuple[tuple[int, int] | None, str | None]:
    """One image and its mask, from their headers.

    Returns ``((width, height), None)`` if sound, else ``(None, what is wrong)``.
    """
    image_size, problem = _image_header(image)
    if problem:
        return None, problem
    if mask.suffix == ".mat":  # SBD's MATLAB masks have no image header: present is all the fast check asks
        return (image_size, None) if mask.is_file() else (None, f"the mask {mask} does not exist")
    try:
        with Image.open(mask) as opened:
            mode, mask_size = opened.mode, opened.size
    except FileNotFoundError:
        return None, f"the mask {mask} does not exist"
    except (OSError, SyntaxError, ValueError) as error:
        return None, f"cannot read the mask {mask} ({error}): corrupt or not an image"
    problem = mask_mode_problem(mode)
    if problem:
        return None, f"the mask {mask} {problem}"
    if mask_size != image_size:
        return None, (f"the mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                      f"{image_size[0]}x{image_size[1]}; one of the two files is wrong")
    return image_size, None


def _image_header(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """``((width, height), None)`` of a sound image file, or ``(None, what is wrong)``."""
    try:
        with no_pil_size_limit(), Image.open(path) as opened:
            mode, size, kind = opened.mode, opened.size, opened.format
    except FileNotFoundError:
        return None, f"the image {path} does not exist"
    except (OSError, SyntaxError, ValueError) as error:
        return None, f"cannot read the image {path} ({error}): corrupt or not an image"
    if mode not in IMAGE_MODES:
        return None, f"the image {path} is mode {mode}, expected an 8-bit image ({', '.join(IMAGE_MODES)})"
    if size[0] * size[1] > max_pixels():
        return None, (f"the image {path} is {size[0]} x {size[1]} pixels, more than the limit of {max_pixels():,} "
                      "(--max-pixels raises it)")
    if kind == "JPEG" and not _ends_a_jpeg(path):
        return None, f"the image {path} is truncated (it does not decode to its end); download or extract it again"
    return size, None


def _ends_a_jpeg(path: Path) -> bool:
    """Whether the JPEG ``path`` is complete: its end-of-image marker is in its last bytes, or it decodes fully."""
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        if _JPEG_END in file.read():
            return True
    try:  # some writers pad the file after the marker: decode it to be sure
        with Image.open(path) as opened:
            opened.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def check_dataset(dataset: Dataset, *, progress: bool = True, workers: int | None = None) -> list[str]:
    """The complete check: load every item of ``dataset``; the problems found, one line each, in order.

    ``dataset`` should have no transforms (a random crop would check part of a
    mask only). Items load in ``workers`` threads (default: 4 per CPU core, at most 16).
    """
    workers = workers or min(16, (os.cpu_count() or 1) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes: Iterable[str | None] = pool.map(lambda index: _load_problem(dataset, index), range(len(dataset)))
        bar = tqdm(outcomes, total=len(dataset), desc=f"check {type(dataset).__name__}", disable=not progress)
        return [problem for problem in bar if problem]


def _load_problem(dataset: Dataset, index: int) -> str | None:
    try:
        dataset[index]
    except UserError as error:
        return one_line(error)
    return None
