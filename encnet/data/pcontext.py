"""PASCAL-Context: the VOC 2010 images with whole-scene labels, 59 classes.

The annotations are published as one JSON file, ``trainval_merged.json`` (the
PASCAL in Detail release: for each image its segments, each a category id of
the full 459-category set and a COCO run-length-encoded mask). The standard
conversion (mmsegmentation's ``pascal_context.py``; ``python -m
encnet.data.prepare pcontext`` does the same without the Detail API) paints each
image's segments in file order with their category ids, then maps the 59
category ids of the benchmark, sorted, to 1..59 and everything else to 0, and
writes one PNG per image plus the two split lists::

    <root>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png       0 = background, 1..59
    <root>/VOCdevkit/VOC2010/ImageSets/SegmentationContext/train.txt  4 998 ids
    <root>/VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt    5 105 ids

The 59-class benchmark ignores background: the loader returns 255 for stored 0
and ``k - 1`` for ``k`` (mmsegmentation's ``reduce_zero_label``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .folder import SegmentationFiles
from .palette import voc_colormap

ANNOTATIONS_URL = "https://codalabuser.blob.core.windows.net/public/trainval_merged.json"
IMAGES_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"
SPLITS = ("train", "val")
CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
CATEGORY_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
    144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347,
    349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)
"""Category ids (in ``trainval_merged.json``) of :data:`CLASSES`, in the same order."""


def _layout_error(root: Path, missing: Path) -> UserError:
    return UserError(
        f"PASCAL-Context not found: {missing} does not exist. Expected, with <root> = {root} (--data-root): "
        "<root>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg, "
        "<root>/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png and "
        "<root>/VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt. "
        f"Get them with `python -m encnet.data.prepare pcontext --root {root}` (downloads "
        f"{IMAGES_URL} and {ANNOTATIONS_URL}, then converts the annotations to PNG masks)"
    )


class PascalContext(SegmentationFiles):
    """PASCAL-Context, 59 classes, ``split`` "train" (4 998 images) or "val" (5 105).

    Items are ``transforms(image, mask)``, or without transforms
    ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))`` with
    labels in [0, 59) and 255 on background.
    """

    classes = CLASSES
    num_classes = len(CLASSES)
    palette = voc_colormap(len(CLASSES) + 1)[1:]

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; PascalContext has splits {', '.join(SPLITS)}")
        root = Path(root)
        base = root / "VOCdevkit" / "VOC2010"
        image_dir, mask_dir = base / "JPEGImages", base / "SegmentationClassContext"
        split_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        for path in (image_dir, mask_dir, split_file):
            if not path.exists():
                raise _layout_error(root, path)
        ids = split_file.read_text().split()
        if not ids:
            raise UserError(f"the split list {split_file} is empty; convert the annotations again")
        images = [image_dir / f"{name}.jpg" for name in ids]
        masks = [mask_dir / f"{name}.png" for name in ids]
        for kind, files in (("image", images), ("mask", masks)):
            missing = [path for path in files if not path.is_file()]
            if missing:
                raise UserError(
                    f"PASCAL-Context is incomplete: {len(missing)} of the {len(ids)} {kind}s listed in "
                    f"{split_file} are missing (first: {missing[0]}); extract or convert again"
                )
        super().__init__(images, masks, transforms)
