"""Datasets of EncNet: the embedded synthetic benchmark and the real loaders.

================  ===========================  =======  ==========================
name              class                        classes  needs
================  ===========================  =======  ==========================
``"synthetic"``   :class:`SyntheticScenes`     17       nothing (rendered on the fly)
``"ade20k"``      :class:`ADE20K`              150      ``root`` (see data/README.md)
``"pcontext"``    :class:`PascalContext`       59       ``root``
``"voc"``         :class:`PascalVOC`           21       ``root`` (+ SBD and scipy for ``aug``)
================  ===========================  =======  ==========================

:func:`build_dataset` returns a split ready for training or validation; every
class keeps the contract :class:`SegmentationDataset`, and
:func:`dataset_options` lists the options each dataset takes (read from the
signatures, so a new dataset needs no list of them kept by hand).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError
from . import synthetic, transforms
from .ade20k import ADE20K
from .palette import voc_colormap
from .pcontext import PascalContext
from .synthetic import SyntheticScenes
from .voc import PascalVOC


@runtime_checkable
class SegmentationDataset(Protocol):
    """What a dataset of :data:`DATASETS` must be: a sized, indexable set of ``(image, mask)`` with named classes.

    Attributes (on the class, so that they can be read without loading anything):
        classes: the name of every class, in label order.
        num_classes: ``len(classes)``; the labels of a mask are in ``[0, num_classes)`` or 255 (ignored).
        palette: one ``(r, g, b)`` triple of ints in [0, 255] per class, in label order (for drawing masks).

    Items, as :func:`build_dataset` gives them: ``(image, mask)`` with ``image`` a
    float32 tensor ``(3, H, W)`` normalised with the ImageNet mean and std
    (``transforms.IMAGENET_MEAN`` / ``IMAGENET_STD``) and ``mask`` an int64 tensor
    ``(H, W)`` of labels in ``[0, num_classes)``, 255 for ignored pixels.

    What the classes themselves return:

    - the real datasets (:class:`ADE20K` and :class:`PascalContext`, on the shared base
      ``folder.SegmentationFiles``, and :class:`PascalVOC`) take ``root``, ``split`` and
      ``transforms``; item ``i`` is ``transforms(image, mask)``, and without transforms
      ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))`` at the file's
      size, labels already in ``[0, num_classes)`` and 255 (ADE20K's "other" and
      PASCAL-Context's background, stored as 0, are shifted to 255; VOC keeps its 255).
      :func:`build_dataset` passes the transforms that crop, convert and normalise.
    - :class:`SyntheticScenes` takes no transforms: it renders its items at their final
      size, already as :func:`build_dataset` gives them (plain float32 normalised image
      ``(3, S, S)``, int64 mask ``(S, S)``, no pixel ignored).

    A new dataset keeps this contract, takes ``(root, split, transforms=None, **its options)``
    and is added to :data:`DATASETS`; its keyword parameters are its options
    (:func:`dataset_options`). ``isinstance(dataset, SegmentationDataset)`` checks that the
    members exist, not their types or the items: the tests check those.
    """

    classes: tuple[str, ...]
    num_classes: int
    palette: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]: ...


DATASETS = {"synthetic": SyntheticScenes, "ade20k": ADE20K, "pcontext": PascalContext, "voc": PascalVOC}

# The arguments build_dataset passes itself to a real dataset's class; its other keyword parameters are its options.
_PASSED_TO_CLASSES = ("root", "split", "transforms")
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def dataset_options(name: str) -> dict[str, Any]:
    """The ``options`` of ``build_dataset(name, ...)``: ``{parameter name: its default}``, in signature order.

    Read from the signatures, never kept by hand: for a real dataset, the keyword
    parameters of its class in :data:`DATASETS` but ``root``, ``split`` and
    ``transforms`` (``{"aug": False}`` for "voc"); for "synthetic", the keyword-only
    parameters of the builder :func:`build_dataset` calls (``train_samples``,
    ``val_samples``, ``image_size``, ``seed``). A parameter without a default maps to
    ``inspect.Parameter.empty``. An unknown ``name`` is a ValueError, as in :func:`build_dataset`.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if name == "synthetic":
        parameters = inspect.signature(_synthetic).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    parameters = inspect.signature(DATASETS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind in _KEYWORD_KINDS and p.name not in _PASSED_TO_CLASSES}


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
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if name == "synthetic":
        return _synthetic(split, crop_size, **options)
    if root is None:
        raise UserError(f"dataset {name!r} needs root=<folder holding it>; see data/README.md for the layout")
    if crop_size is None or (split == "train" and base_size is None):
        raise UserError(
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
        raise UserError(
            f"the synthetic scenes are rendered at image_size={image_size} and never cropped, but "
            f"crop_size={crop_size}; set them equal (or leave image_size out: it defaults to crop_size)"
        )
    size = image_size or crop_size or synthetic.MIN_SIZE
    num_samples = train_samples if split == "train" else val_samples
    return SyntheticScenes(split, num_samples=num_samples, image_size=size, seed=seed)


__all__ = [
    "ADE20K",
    "DATASETS",
    "PascalContext",
    "PascalVOC",
    "SegmentationDataset",
    "SyntheticScenes",
    "build_dataset",
    "dataset_options",
    "transforms",
    "voc_colormap",
]
