"""ADE20K, the MIT SceneParsing benchmark (ADEChallengeData2016): 150 classes.

Layout under ``root`` (what ``python -m encnet.data.prepare ade20k --root data/``
leaves, or the official zip extracted into ``root``)::

    <root>/ADEChallengeData2016/images/training/ADE_train_00000001.jpg       20 210 images
    <root>/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg        2 000 images
    <root>/ADEChallengeData2016/annotations/{training,validation}/<same name>.png

Annotations store 0 for "other" (unlabelled) and ``k`` for class ``k`` of 150;
the loader returns 255 (ignored) for 0 and ``k - 1`` for ``k``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .folder import SegmentationFiles
from .palette import voc_colormap

URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
SPLITS = {"train": "training", "val": "validation"}
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def _layout_error(root: Path, missing: Path) -> UserError:
    return UserError(
        f"ADE20K not found: {missing} does not exist. Expected the layout "
        f"<root>/ADEChallengeData2016/images/{{training,validation}}/*.jpg and "
        f"<root>/ADEChallengeData2016/annotations/{{training,validation}}/*.png with <root> = {root} "
        "(--data-root). "
        f"Get it with `python -m encnet.data.prepare ade20k --root {root}` (downloads {URL}), "
        "or extract that zip into the root yourself"
    )


class ADE20K(SegmentationFiles):
    """ADE20K SceneParsing, ``split`` "train" (20 210 images) or "val" (2 000).

    Items are ``transforms(image, mask)``, or without transforms
    ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))`` with
    labels in [0, 150) and 255 where the annotation says "other".
    """

    classes = CLASSES
    num_classes = len(CLASSES)
    palette = voc_colormap(len(CLASSES) + 1)[1:]

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; ADE20K has splits {', '.join(SPLITS)}")
        root = Path(root)
        base = root / "ADEChallengeData2016"
        image_dir, mask_dir = base / "images" / SPLITS[split], base / "annotations" / SPLITS[split]
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise _layout_error(root, folder)
        images = sorted(image_dir.glob("*.jpg"))
        if not images:
            raise _layout_error(root, image_dir / "*.jpg")
        masks = [mask_dir / (image.stem + ".png") for image in images]
        missing = [mask for mask in masks if not mask.is_file()]
        if missing:
            raise UserError(
                f"ADE20K is incomplete: {len(missing)} of the {len(images)} images of {image_dir} have no "
                f"annotation in {mask_dir} (first missing: {missing[0].name}); extract the archive again"
            )
        orphans = sorted({mask.stem for mask in mask_dir.glob("*.png")} - {image.stem for image in images})
        if orphans:
            raise UserError(
                f"ADE20K is incomplete: {len(orphans)} annotations of {mask_dir} have no image in {image_dir} "
                f"(first: {orphans[0]}.jpg); extract the archive again"
            )
        super().__init__(images, masks, transforms)
