"""Datasets of EncNet: the embedded synthetic benchmark and the real loaders.

================  ===========================  =======  ==========================
name              class                        classes  needs
================  ===========================  =======  ==========================
``"synthetic"``   :class:`SyntheticScenes`     17       nothing (rendered on the fly)
``"ade20k"``      :class:`ADE20K`              150      ``root`` (see data/README.md)
``"pcontext"``    :class:`PascalContext`       59       ``root``
``"voc"``         :class:`PascalVOC`           21       ``root`` (+ SBD and scipy for ``aug``)
================  ===========================  =======  ==========================

:func:`build_dataset` returns a split ready for training or validation.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from . import transforms
from .ade20k import ADE20K
from .palette import voc_colormap
from .pcontext import PascalContext
from .synthetic import SyntheticScenes
from .voc import PascalVOC

DATASETS = {"synthetic": SyntheticScenes, "ade20k": ADE20K, "pcontext": PascalContext, "voc": PascalVOC}


def build_dataset(
    name: str,
    split: str,
    *,
    root: str | Path | None = None,
    crop_size: int | None = None,
    base_size: int | None = None,
    **options,
) -> Dataset:
    """A dataset split yielding ``(image float32 (3, H, W) normalised, mask int64 (H, W), 255 = ignore)``.

    Real datasets (``root`` required) get :func:`transforms.train_transforms`
    (``base_size``, ``crop_size``) for "train" and :func:`transforms.val_transforms`
    (``crop_size``) otherwise; ``options`` go to the class (``aug=True`` for "voc").

    "synthetic" is rendered at its final size and normalised, so it gets no
    transform. Its ``options``: ``train_samples`` and ``val_samples`` (the
    length of each split, so one set of options serves both), ``image_size``
    (defaults to ``crop_size``) and ``seed``; ``base_size`` is not used.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if name == "synthetic":
        return _synthetic(split, crop_size, **options)
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<folder holding it>; see data/README.md for the layout")
    if crop_size is None or (split == "train" and base_size is None):
        raise ValueError(
            f"dataset {name!r} needs crop_size (and base_size for training), e.g. crop_size=480, base_size=520"
        )
    joint = (
        transforms.train_transforms(base_size=base_size, crop_size=crop_size)
        if split == "train"
        else transforms.val_transforms(crop_size=crop_size)
    )
    return DATASETS[name](root, split, transforms=joint, **options)


def _synthetic(
    split: str,
    crop_size: int | None,
    *,
    train_samples: int = 2000,
    val_samples: int = 500,
    image_size: int | None = None,
    seed: int = 0,
) -> SyntheticScenes:
    if image_size is not None and crop_size is not None and image_size != crop_size:
        raise ValueError(
            f"the synthetic scenes are rendered at image_size={image_size} and never cropped, but "
            f"crop_size={crop_size}; set them equal (or leave image_size out: it defaults to crop_size)"
        )
    size = image_size or crop_size or 64
    num_samples = train_samples if split == "train" else val_samples
    return SyntheticScenes(split, num_samples=num_samples, image_size=size, seed=seed)


__all__ = [
    "ADE20K",
    "DATASETS",
    "PascalContext",
    "PascalVOC",
    "SyntheticScenes",
    "build_dataset",
    "transforms",
    "voc_colormap",
]
