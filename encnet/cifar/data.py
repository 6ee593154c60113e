r"""CIFAR-10 for the classification experiment, and a procedural stand-in for it.

The paper's recognition experiment (Zhang et al., CVPR 2018, "EncNet
Experiments on CIFAR-10") trains 14-layer networks on CIFAR-10: 50,000 training
and 10,000 test images, 32 x 32 RGB, 10 classes. Both datasets here yield the
same items, ``(image float32 (3, 32, 32) normalised, label int64 scalar)``, and
name their classes in ``classes``.

CIFAR-10 (:func:`cifar10`)
--------------------------
Read from the "python version" of the dataset, the layout torchvision's
``CIFAR10(root, download=True)`` writes::

    <root>/cifar-10-batches-py/
        data_batch_1 .. data_batch_5   training set, 10,000 images each
        test_batch                     test set, 10,000 images
        batches.meta                   class names ("label_names")

Each batch is a pickled dict: ``data``, a ``(10000, 3072)`` uint8 array whose
rows hold the red, green then blue 32 x 32 planes, and ``labels``, a list of
ints in ``[0, 10)``. The files are read here rather than through
``torchvision.datasets.CIFAR10``, which also checks the MD5 sum of every file:
that check would reject any test fixture, so the reading code could not be
tested without the 160 MB download.

Standard CIFAR augmentation for training (:func:`train_transforms`): random
32 x 32 crop of the image padded by 4 pixels (zeros), horizontal flip with
probability 1/2, then scaling to [0, 1] and per-channel normalisation with the
CIFAR-10 training set's mean and standard deviation. The test set is only
normalised (:func:`eval_transforms`). (Many CIFAR codes, the reference
implementation's among them, use the std ``(0.2023, 0.1994, 0.2010)``; the
per-pixel std of the training set is :data:`CIFAR10_STD`.)

The stand-in (:class:`SyntheticCifar10`)
----------------------------------------
A procedural 10-class dataset of 32 x 32 RGB images for machines without
CIFAR-10 (this project's tests and CI never download anything). A class is a
shape or texture family -- ``disc``, ``ring``, ``square``, ``frame``,
``triangle``, ``cross``, ``stripes``, ``checker``, ``dots``, ``bar`` -- drawn
at a random position, size and rotation over a random colour gradient, with
pixel noise. Colour is only a hint: each class has a hue family, but two
classes with unrelated shapes share each family and one object in four takes
any hue. So a network has to learn shapes and textures: learnable, but not
solved by a colour histogram. Its images are rendered at their final place and
size and are not augmented further; every sample is a pure function of
``(seed, split, index)`` and label ``index % 10``.

Which one the notebook uses
---------------------------
``notebooks/06_cifar10_encnet.ipynb`` trains on CIFAR-10 when
``data/cifar-10-batches-py`` exists under the repository root, and on
:class:`SyntheticCifar10` otherwise, and says which in its output.
"""

from __future__ import annotations

import colorsys
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
BASE_FOLDER = "cifar-10-batches-py"
SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
META_FILE = "batches.meta"


def train_transforms() -> v2.Compose:
    """uint8 image (3, 32, 32) -> float32 (3, 32, 32): random crop (pad 4), flip, normalise."""
    return v2.Compose([
        v2.RandomCrop(32, padding=4),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ])


def eval_transforms() -> v2.Compose:
    """uint8 image (3, 32, 32) -> float32 (3, 32, 32), normalised with the CIFAR-10 mean and std."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


class CifarImages(Dataset):
    """Labelled 32 x 32 images held in memory: item ``i`` is ``(transforms(images[i]), labels[i])``.

    ``images`` uint8 (N, 3, 32, 32), ``labels`` int64 (N,), ``classes`` the
    class names. Built by :func:`cifar10`.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: tuple[str, ...], transforms: Callable) -> None:
        self.images, self.labels, self.classes, self.transforms = images, labels, classes, transforms
        self.num_classes = len(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transforms(tv_tensors.Image(self.images[index])).as_subclass(Tensor), self.labels[index]


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # the batches are Python 2 pickles


def cifar10(root: str | Path, split: str = "train", *, transforms: Callable | None = None) -> CifarImages:
    """The CIFAR-10 ``split`` ("train": 50,000 images, "test": 10,000) read from ``<root>/cifar-10-batches-py``.

    ``transforms`` maps a uint8 ``tv_tensors.Image`` (3, 32, 32) to the image
    the dataset yields; ``None`` takes the standard one for the split
    (:func:`train_transforms` for "train", :func:`eval_transforms` for "test").
    Items: ``(image float32 (3, 32, 32) normalised, label int64 scalar)``.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; valid splits: {', '.join(SPLIT_FILES)}")
    folder = Path(root) / BASE_FOLDER
    missing = [name for name in [*SPLIT_FILES[split], META_FILE] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Expected the python version's layout "
            f"<root>/{BASE_FOLDER}/{{data_batch_1 .. data_batch_5, test_batch, {META_FILE}}}. To get it, "
            f"online: python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', download=True)\"; "
            f"offline: take the 'CIFAR-10 python version' archive (cifar-10-python.tar.gz) from the CIFAR-10 "
            f"page and extract it under {root}"
        )
    batches = [_unpickle(folder / name) for name in SPLIT_FILES[split]]
    images = torch.from_numpy(np.concatenate([b["data"] for b in batches])).reshape(-1, 3, 32, 32)
    labels = torch.tensor([label for b in batches for label in b["labels"]], dtype=torch.int64)
    classes = tuple(_unpickle(folder / META_FILE)["label_names"])
    if transforms is None:
        transforms = train_transforms() if split == "train" else eval_transforms()
    return CifarImages(images, labels, classes, transforms)


# The stand-in. Shapes live in the object's own frame (u, v), the unit disc
# being its extent; each returns the "ink" of the first colour (True) or of the
# second one (False, used by the textures) inside the object's mask.
SHAPES = ("disc", "ring", "square", "frame", "triangle", "cross", "stripes", "checker", "dots", "bar")
# Hue family of each class: five families, each shared by two unrelated shapes.
HUES = (0.0, 0.2, 0.4, 0.6, 0.8, 0.0, 0.6, 0.8, 0.4, 0.2)
SPLITS = {"train": 0, "test": 1}
_SUPERSAMPLING = 2  # render at 64 x 64, average 2 x 2 blocks: smooth edges
_NOISE_STD = 0.06
_FREE_HUE = 0.25  # share of objects whose hue ignores the family


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mask, ink) boolean arrays of class ``label`` on the object frame ``(u, v)``."""
    r = np.hypot(u, v)
    box = np.maximum(abs(u), abs(v))
    name = SHAPES[label]
    if name == "disc":
        return r <= 1, r <= 1
    if name == "ring":
        return (r <= 1) & (r >= rng.uniform(0.45, 0.65)), r <= 1
    if name == "square":
        return box <= 0.8, box <= 0.8
    if name == "frame":
        inside = (box <= 0.85) & (box >= rng.uniform(0.45, 0.6))
        return inside, inside
    if name == "triangle":
        inside = (v >= -0.5) & (v + np.sqrt(3) * abs(u) <= 1)
        return inside, inside
    if name == "cross":
        arm = rng.uniform(0.22, 0.35)
        inside = ((abs(u) <= arm) & (abs(v) <= 0.95)) | ((abs(v) <= arm) & (abs(u) <= 0.95))
        return inside, inside
    if name == "stripes":
        period = rng.uniform(0.45, 0.7)
        return box <= 0.85, (u / period) % 1 < 0.5
    if name == "checker":
        cell = rng.uniform(0.35, 0.5)
        return box <= 0.85, (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
    if name == "dots":
        centres = rng.uniform(-0.8, 0.8, size=(int(rng.integers(4, 8)), 2))
        inside = np.zeros(u.shape, bool)
        for cu, cv in centres:
            inside |= np.hypot(u - cu, v - cv) <= 0.2
        return inside, inside
    inside = (abs(u) <= rng.uniform(0.18, 0.3)) & (abs(v) <= 1)  # bar
    return inside, inside


class SyntheticCifar10(Dataset):
    """A procedural 10-class stand-in for CIFAR-10 (see the module docstring).

    Args:
        split: ``"train"`` or ``"test"`` (independent random streams).
        num_samples: number of images (the dataset's length).
        seed: with ``split`` and the index, decides every sample.

    Items are ``(image float32 (3, 32, 32), label int64 scalar)``, the image
    normalised with the CIFAR-10 mean and std like :func:`cifar10`'s, the label
    ``index % 10`` (balanced classes), an index into :attr:`classes`.
    """

    classes = SHAPES
    num_classes = len(SHAPES)

    def __init__(self, split: str = "train", *, num_samples: int = 5000, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; SyntheticCifar10 has splits {', '.join(SPLITS)}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.split, self.num_samples, self.seed = split, num_samples, seed
        self._mean = np.asarray(CIFAR10_MEAN, np.float32)[:, None, None]
        self._std = np.asarray(CIFAR10_STD, np.float32)[:, None, None]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a SyntheticCifar10 of {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        label = index % len(SHAPES)
        n = 32 * _SUPERSAMPLING
        y, x = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / _SUPERSAMPLING  # pixel coordinates

        # Background: a linear gradient between two dull colours, in a random direction.
        angle = rng.uniform(0, 2 * np.pi)
        ramp = ((np.cos(angle) * (x - 16) + np.sin(angle) * (y - 16)) / 32 + 0.5)[None]
        dull = [colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.15, 0.85)) for _ in range(2)]
        low, high = (np.asarray(c, np.float32)[:, None, None] for c in dull)
        image = low + (high - low) * ramp

        # The object: random centre, radius and rotation; its frame (u, v) has the unit disc as extent.
        cy, cx = rng.uniform(11, 21, size=2)
        radius, theta = rng.uniform(7, 13), rng.uniform(0, 2 * np.pi)
        dy, dx = (y - cy) / radius, (x - cx) / radius
        u, v = np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy
        mask, ink = _shape_mask(label, u, v, rng)
        hue = rng.uniform() if rng.uniform() < _FREE_HUE else (HUES[label] + rng.normal(0, 0.04)) % 1
        saturation, value = rng.uniform(0.5, 1), rng.uniform(0.55, 1)
        colour = np.asarray(colorsys.hsv_to_rgb(hue, saturation, value), np.float32)[:, None]
        second = np.asarray(colorsys.hsv_to_rgb(hue, saturation, 0.35 * value), np.float32)[:, None]
        image[:, mask] = np.where(ink[mask], colour, second)

        image = image.reshape(3, 32, _SUPERSAMPLING, 32, _SUPERSAMPLING).mean((2, 4))
        image = image + rng.normal(0, _NOISE_STD, image.shape).astype(np.float32)
        image = (image.clip(0, 1) - self._mean) / self._std
        return torch.from_numpy(image.astype(np.float32)), torch.tensor(label)
