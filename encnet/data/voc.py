"""PASCAL VOC 2012 segmentation, 21 classes (background + 20 objects), optionally with the SBD masks.

Built on torchvision's :class:`~torchvision.datasets.VOCSegmentation` and, for
the "aug" training set, :class:`~torchvision.datasets.SBDataset` (the Semantic
Boundaries Dataset of Hariharan et al., 2011, whose ``.mat`` masks need scipy),
which list the files; the files are read here, with errors that name them.
Layout under ``root``::

    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png            palette PNG: 0..20, 255 = boundary
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt   1 464 / 1 449 / 2 913 ids
    <root>/benchmark_RELEASE/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}   (aug only)

``aug=True`` gives the usual 10 582-image "train_aug" set: the VOC train images
plus every SBD image (its train and val lists) that is not in VOC val; an image
in both keeps its VOC mask. Labels: 0..20 and 255 (ignored: VOC's object
boundaries and "difficult" regions).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import SBDataset, VOCSegmentation

from ..errors import UserError
from .folder import read_image, read_mask
from .palette import voc_colormap
from .transforms import IGNORE_INDEX

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"
SPLITS = ("train", "val", "trainval")
CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _layout_error(root: Path, missing: Path, aug: bool) -> UserError:
    sbd = (
        " and, for aug=True, <root>/benchmark_RELEASE/dataset/{img,cls,train.txt,val.txt} (SBD, "
        f"{SBD_URL})"
        if aug
        else ""
    )
    return UserError(
        f"PASCAL VOC not found: {missing} does not exist. Expected, with <root> = {root} (--data-root): "
        "<root>/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<split>.txt}"
        f"{sbd}. Get them with `python -m encnet.data.prepare voc --root {root}` (downloads {VOC_URL} "
        "and the SBD archive)"
    )


def _sbd(root: Path, image_set: str) -> SBDataset:
    try:
        return SBDataset(str(root), image_set=image_set, mode="segmentation")
    except RuntimeError as error:
        if "scipy" not in str(error).lower():
            raise
        raise ImportError(
            "PascalVOC(aug=True) reads the SBD masks, which are MATLAB .mat files: it needs scipy, "
            "which is not installed. Run `pip install scipy`, or use aug=False"
        ) from error


class PascalVOC(Dataset):
    """PASCAL VOC 2012, ``split`` "train", "val" or "trainval"; ``aug=True`` (train only) adds SBD.

    Items are ``transforms(image, mask)``, or without transforms
    ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))`` with
    labels in [0, 21) and 255 for ignored pixels.
    """

    classes = CLASSES
    num_classes = len(CLASSES)
    palette = voc_colormap(len(CLASSES))

    def __init__(
        self, root: str | Path, split: str = "train", transforms: Callable | None = None, aug: bool = False
    ) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; PascalVOC has splits {', '.join(SPLITS)}")
        if aug and split != "train":
            raise UserError(f"aug=True adds the SBD masks to the training set; use split='train', not {split!r}")
        root = Path(root)
        voc = root / "VOCdevkit" / "VOC2012"
        needed = [voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation" / f"{split}.txt"]
        sbd = root / "benchmark_RELEASE" / "dataset"
        if aug:
            needed += [voc / "ImageSets" / "Segmentation" / "val.txt", sbd / "img", sbd / "cls"]
            needed += [sbd / "train.txt", sbd / "val.txt"]
        for path in needed:
            if not path.exists():
                raise _layout_error(root, path, aug)
        self.transforms = transforms
        base = VOCSegmentation(str(root), year="2012", image_set=split)
        self._samples = [(base, index) for index in range(len(base))]
        if aug:
            taken = {Path(image).stem for image in base.images}
            taken |= set((voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
            for image_set in ("train", "val"):
                extra = _sbd(sbd, image_set)
                for index, image in enumerate(extra.images):
                    if Path(image).stem not in taken:
                        taken.add(Path(image).stem)
                        self._samples.append((extra, index))

    def __len__(self) -> int:
        return len(self._samples)

    def pairs(self) -> list[tuple[Path, Path]]:
        """``(image file, mask file)`` of every item, in order (what :mod:`encnet.data.check` checks)."""
        return [(Path(source.images[position]), Path(source.masks[position])) for source, position in self._samples]

    def __getitem__(self, index: int):
        source, position = self._samples[index]
        image_file, mask_file = Path(source.images[position]), Path(source.masks[position])
        image = read_image(image_file)
        # A VOC mask is a palette PNG; SBD's are MATLAB files, read by torchvision.
        mask = read_mask(mask_file) if mask_file.suffix == ".png" else _read_sbd_mask(mask_file)
        labelled = mask[mask != IGNORE_INDEX]
        if mask.ndim != 2 or labelled.max(initial=0) >= self.num_classes:
            raise UserError(
                f"the mask {mask_file} is not a VOC label image (shape {mask.shape}, values up to "
                f"{int(labelled.max(initial=0))}); expected (H, W) labels in [0, 21) or 255; "
                "extract or convert it again"
            )
        if mask.shape != tuple(image.shape[1:]):
            raise UserError(
                f"the mask {mask_file} is {mask.shape[1]}x{mask.shape[0]} but its image {image_file} "
                f"is {image.shape[2]}x{image.shape[1]}; one of the two files is wrong"
            )
        mask = tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))
        return self.transforms(image, mask) if self.transforms is not None else (image, mask)


def _read_sbd_mask(path: Path) -> np.ndarray:
    """The (H, W) labels of SBD's ``.mat`` mask ``path`` (its ``GTcls.Segmentation`` field)."""
    from scipy.io import loadmat  # present: the constructor checked it (see _sbd)

    if not path.is_file():
        raise UserError(f"the SBD mask {path} does not exist; extract the SBD archive again ({SBD_URL})")
    try:
        return np.asarray(loadmat(str(path))["GTcls"][0]["Segmentation"][0])
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise UserError(
            f"cannot read the SBD mask {path} ({error}): the file is corrupt or truncated; "
            f"extract it again from the SBD archive ({SBD_URL})"
        ) from error
