r"""SyntheticScenes: an embedded benchmark where only the scene tells what an object is.

EncNet's claim is that the context of a scene narrows the list of probable
classes: a boat is on water, a car is on a road. A plain dilated FCN labels each
pixel from what its receptive field sees, so when two classes look the same up
close it has to guess. This benchmark builds exactly that situation, on the fly,
small enough for a laptop CPU.

Design
------
Every image shows one of four scenes. It is twice as tall as it is wide
(``image_size`` rows, ``image_size // 2`` columns; 128 x 64 by default) and has
two regions, far apart:

- **the backdrop** (the top 9-15 % of the rows, with a wavy edge) in the
  scene's own texture -- bricks of a ``building``, waves of the ``sea``, planks
  of a ``cupboard``, blotches of a ``hedge`` -- and one or two **landmarks** of
  the scene standing on its edge (``traffic light``, ``lighthouse``, ``clock``,
  ``tree``);
- **the ground** (the same texture in every scene) carrying one to three
  **ambiguous objects** in its bottom 30 % of the rows. Each is a *box* or a
  *disc*, drawn identically in every scene but labelled after the scene: a box
  is a ``car`` in the street, a ``boat`` in the harbour, an ``oven`` in the
  kitchen, a ``shed`` in the garden; a disc is a ``manhole``, a ``buoy``, a
  ``plate`` or a ``ball``.

A box or a disc is the same bag of pixels in all four scenes (same shapes,
colours, noise, and ground around it): nothing local separates a car from a
boat. Only the backdrop and the landmarks say which scene it is, and they end
above row ``0.15 x image_size + 5`` (24 at 128 rows) while the ambiguous
objects start at row ``0.7 x image_size`` (89): at least 66 rows apart at 128 x
64, and farther at larger sizes. That is beyond the reach of the dilated FCN on
the ``"small"`` backbone: the gradient of one of its output pixels reaches up to 56
rows above the pixel and 49 below (measured on the built model,
``tests/test_context_beyond_reach.py``), so the whole window an FCN pixel of an
ambiguous object sees is the same, pixel for pixel, in the four scenes. Such a
model can at best learn each object's shape and guess its scene: a quarter of
the ambiguous pixels right (:func:`local_ceiling` computes the mIoU this
allows). A model that looks at the whole image at once -- the Context Encoding
Module's encoded semantics ``e`` and its channel attention ``gamma`` -- can read
the scene and pick the right label, and the SE-loss says outright which of the
four box (disc) classes the image holds, i.e. which scene it is.

``render(index, scene=s)`` draws sample ``index`` in scene ``s`` from the same
random draws: the four scenes of one layout show the very same objects with
four different labels.

Classes (17): 0 ``ground``, then per scene its backdrop, landmark, box class
and disc class (:attr:`SyntheticScenes.classes`); the eight box and disc classes
are ambiguous (:attr:`SyntheticScenes.ambiguous`). No pixel is ignored (the mask
holds no 255). :meth:`SyntheticScenes.decode` tells the scene and the part
(:attr:`SyntheticScenes.parts`) of any label, :meth:`SyntheticScenes.label` the
label of a scene's part, so that no user needs the order of the classes.

Images are rendered in RGB [0, 1] with per-pixel noise and a per-image
brightness jitter (the same distributions in every scene), then normalised with
the ImageNet mean and std like the real datasets
(``encnet.data.transforms.IMAGENET_MEAN`` / ``IMAGENET_STD``): roughly zero
mean and unit variance per channel. ``encnet.data.transforms.denormalize``
undoes it for display.

Every sample is a pure function of ``(seed, split, index)``: the same triple
gives the same image on any machine, "train" and "val" draw from different
streams, and nothing is stored. Rendering is numpy on the whole image or on
small windows; ``data/README.md`` has its measured speed, from::

    python -m timeit -s "import itertools, encnet.data as d; i = itertools.count()" \
        -s "s = d.SyntheticScenes(num_samples=10**9, image_size=128)" "s[next(i)]"
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError
from .transforms import IMAGENET_MEAN, IMAGENET_STD


class Scene(NamedTuple):
    """The class names of one scene type."""

    name: str
    backdrop: str
    landmark: str
    box: str  # the ambiguous box, drawn the same in every scene
    disc: str  # the ambiguous disc, drawn the same in every scene


SCENES = (
    Scene("street", "building", "traffic light", "car", "manhole"),
    Scene("harbour", "sea", "lighthouse", "boat", "buoy"),
    Scene("kitchen", "cupboard", "clock", "oven", "plate"),
    Scene("garden", "hedge", "tree", "shed", "ball"),
)
CLASSES = ("ground",) + tuple(name for scene in SCENES for name in scene[1:])
PALETTE = (
    (128, 128, 128),  # ground
    (180, 80, 60), (240, 200, 0), (220, 20, 60), (100, 60, 30),  # street
    (30, 90, 200), (255, 255, 255), (0, 0, 142), (0, 200, 200),  # harbour
    (190, 140, 80), (120, 0, 160), (250, 120, 30), (255, 170, 220),  # kitchen
    (40, 140, 40), (0, 80, 0), (160, 200, 60), (230, 230, 120),  # garden
)
SPLITS = {"train": 0, "val": 1}
PARTS = ("ground",) + Scene._fields[1:]  # ground, backdrop, landmark, box, disc
AMBIGUOUS_PARTS = ("box", "disc")

# Colours in RGB [0, 1] of the shared (scene-independent) things.
_GROUND = (0.56, 0.54, 0.49)
_BOX_BODY, _BOX_WINDOW = (0.30, 0.36, 0.48), (0.72, 0.82, 0.88)
_DISC_RIM, _DISC_CENTRE = (0.92, 0.62, 0.12), (0.55, 0.30, 0.06)
_NOISE, _BRIGHTNESS = 0.07, (0.9, 1.1)  # noise std 0.07 / sqrt(3) = 0.04

# The layout, in fractions of the image's height S: the backdrop's edge lies between rows _EDGE[0] S and
# _EDGE[1] S (then a wave of up to 3 rows, landmarks' feet at most 5 rows below the edge); the ambiguous
# objects lie in rows _OBJECTS S and below. MIN_SIZE keeps them 66 rows apart or more.
_EDGE, _OBJECTS = (0.09, 0.15), 0.7
MIN_SIZE = 128


def _class_id(scene: int, part: int) -> int:
    """Label of part 1 (backdrop), 2 (landmark), 3 (box) or 4 (disc) of a scene (0: the ground, no scene)."""
    return 4 * scene + part


# Scene (-1 for the ground) and part (an index into PARTS) of every label, in the order of CLASSES.
_SCENE_OF = torch.tensor([-1] + [scene for scene in range(len(SCENES)) for _ in PARTS[1:]])
_PART_OF = torch.tensor([0] + [part for _ in SCENES for part in range(1, len(PARTS))])


def _textures(size: int) -> np.ndarray:
    """Texture banks, (5, 3, 2 size, 2 size) float32: the ground, then each scene's backdrop.

    Fixed (not seeded by the dataset's seed): they are the look of this world.
    Each sample crops them at a random offset.
    """
    rng = np.random.default_rng(20180318)
    n = 2 * size
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)

    def paint(base, shade):  # base RGB + a per-pixel shade (n, n) -> (3, n, n)
        return np.asarray(base, np.float32)[:, None, None] + shade[None]

    def blotches(cell):  # smooth noise in [-1, 1]: random values on a coarse grid, upsampled
        coarse = rng.uniform(-1, 1, (n // cell + 2, n // cell + 2)).astype(np.float32)
        return np.kron(coarse, np.ones((cell, cell), np.float32))[:n, :n]

    grain = rng.normal(0, 1, (n, n)).astype(np.float32)
    mortar = (y % 8 < 1) | ((x + 8 * (y // 8 % 2)) % 16 < 1)
    bricks = np.where(mortar, 0.22, 0.03 * grain)
    waves = 0.12 * np.sin(0.9 * y + 1.5 * np.sin(0.25 * x))
    planks = np.where(x % 14 < 1, -0.25, 0.05 * np.sin(0.6 * x + 3 * np.sin(0.08 * y)))
    return np.stack([
        paint(_GROUND, 0.04 * grain + 0.03 * blotches(6)),
        paint((0.62, 0.30, 0.22), bricks),
        paint((0.15, 0.36, 0.66), waves),
        paint((0.70, 0.52, 0.30), planks),
        paint((0.22, 0.50, 0.18), 0.12 * blotches(4)),
    ]).clip(0, 1)


def _rect(image, mask, top, left, height, width, colour, label) -> None:
    """Paint an axis-aligned rectangle (clipped to the image) in place."""
    bottom, right = min(max(top + height, 0), image.shape[1]), min(max(left + width, 0), image.shape[2])
    top, left = max(top, 0), max(left, 0)
    image[:, top:bottom, left:right] = np.asarray(colour, np.float32)[:, None, None]
    mask[top:bottom, left:right] = label


def _disc(image, mask, cy, cx, radius, colour, label) -> None:
    """Paint a disc (clipped to the image) in place, touching only its bounding window."""
    top, left = max(cy - radius, 0), max(cx - radius, 0)
    bottom, right = min(cy + radius + 1, image.shape[1]), min(cx + radius + 1, image.shape[2])
    y, x = np.arange(top, bottom)[:, None], np.arange(left, right)[None, :]
    inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    window = image[:, top:bottom, left:right]
    window[:, inside] = np.asarray(colour, np.float32)[:, None]
    mask[top:bottom, left:right][inside] = label


def _landmark(image, mask, scene, foot, cx, label) -> None:
    """Draw the landmark of ``scene`` standing with its foot at row ``foot``, centred on column ``cx``."""
    if scene == 0:  # traffic light: a pole and a dark head with three lamps
        _rect(image, mask, foot - 12, cx - 1, 12, 2, (0.25, 0.25, 0.25), label)
        _rect(image, mask, foot - 26, cx - 3, 14, 7, (0.10, 0.10, 0.10), label)
        for row, lamp in enumerate([(0.9, 0.1, 0.1), (0.95, 0.8, 0.1), (0.1, 0.8, 0.2)]):
            _rect(image, mask, foot - 24 + 4 * row, cx - 1, 2, 3, lamp, label)
    elif scene == 1:  # lighthouse: a red and white striped tower with a lamp on top
        for row in range(6):
            colour = (0.85, 0.1, 0.1) if row % 2 == 0 else (0.97, 0.97, 0.97)
            _rect(image, mask, foot - 4 * (row + 1), cx - 3, 4, 7, colour, label)
        _rect(image, mask, foot - 28, cx - 2, 4, 5, (1.0, 0.9, 0.3), label)
    elif scene == 2:  # clock: a white face with a dark rim and two hands, hung above the foot
        _disc(image, mask, foot - 12, cx, 7, (0.08, 0.08, 0.08), label)
        _disc(image, mask, foot - 12, cx, 5, (0.97, 0.97, 0.95), label)
        _rect(image, mask, foot - 16, cx, 5, 1, (0.08, 0.08, 0.08), label)
        _rect(image, mask, foot - 12, cx, 1, 4, (0.08, 0.08, 0.08), label)
    else:  # tree: a brown trunk under a dark green crown
        _rect(image, mask, foot - 10, cx - 1, 10, 3, (0.40, 0.25, 0.12), label)
        _disc(image, mask, foot - 17, cx, 8, (0.05, 0.28, 0.08), label)


class SyntheticScenes(Dataset):
    """Scenes where an object's class depends on the scene around it; see the module docstring.

    Args:
        split: ``"train"`` or ``"val"`` (independent random streams).
        num_samples: number of images (the dataset's length).
        image_size: height ``S`` of the images, at least 128; they are ``S // 2`` wide.
        seed: with ``split`` and the index, decides every sample.

    Items are ``(image, mask)``: ``image`` float32 ``(3, S, S // 2)`` normalised with the
    ImageNet mean and std; ``mask`` int64 ``(S, S // 2)`` with labels in ``[0, 17)``
    (no ignored pixels). :meth:`scene_of` gives a sample's scene type, an index
    into :attr:`scenes`; :meth:`decode` the scene and part of labels.
    """

    classes = CLASSES
    num_classes = len(CLASSES)
    palette = PALETTE
    scenes = tuple(scene.name for scene in SCENES)
    parts = PARTS
    # The labels of the boxes and discs (8, ascending): the same pixels in every scene, told apart by it alone.
    ambiguous = tuple(sorted(_class_id(s, PARTS.index(part)) for s in range(len(SCENES)) for part in AMBIGUOUS_PARTS))

    @staticmethod
    def label(scene: int, part: str) -> int:
        """Label of ``part`` (one of :attr:`parts` but "ground") of scene ``scene`` (an index into :attr:`scenes`).

        ``label(1, "box")`` is the label of ``"boat"``: a box in the harbour.
        """
        if part not in PARTS[1:] or not 0 <= scene < len(SCENES):
            raise ValueError(f"expected a scene in [0, {len(SCENES)}) and a part in {PARTS[1:]}, got {scene}, {part!r}")
        return _class_id(scene, PARTS.index(part))

    @staticmethod
    def decode(labels: Tensor) -> tuple[Tensor, Tensor]:
        """(scene, part) of every label of ``labels`` (any shape, ints in ``[0, 17)``), two tensors of its shape.

        ``scene`` is an index into :attr:`scenes`, -1 for the ground (no scene's own);
        ``part`` an index into :attr:`parts` (0 ground, 1 backdrop, 2 landmark, 3 box, 4 disc).
        A box predicted in the wrong scene has the right part and the wrong scene.
        """
        labels = torch.as_tensor(labels)
        if labels.numel() and not (0 <= labels.min() and labels.max() < len(CLASSES)):
            raise ValueError(f"labels of SyntheticScenes are in [0, {len(CLASSES)}), "
                             f"got values from {labels.min().item()} to {labels.max().item()}")
        return _SCENE_OF.to(labels.device)[labels], _PART_OF.to(labels.device)[labels]

    def __init__(
        self, split: str = "train", num_samples: int = 2000, image_size: int = MIN_SIZE, seed: int = 0
    ) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; SyntheticScenes has splits {', '.join(SPLITS)}")
        if num_samples < 1:
            raise UserError(f"num_samples must be at least 1, got {num_samples}")
        if image_size < MIN_SIZE:
            raise UserError(
                f"image_size (the height) must be at least {MIN_SIZE} pixels to keep the scene cues out of the "
                f"small FCN's reach around the ambiguous objects, got {image_size}; use {MIN_SIZE} or more"
            )
        self.split, self.num_samples, self.image_size, self.seed = split, num_samples, image_size, seed
        self._textures = _textures(image_size)
        self._mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
        self._std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a SyntheticScenes of {self.num_samples} samples")
        return np.random.default_rng([self.seed, SPLITS[self.split], index])

    def scene_of(self, index: int) -> int:
        """Scene type of sample ``index``: an index into :attr:`scenes` (cheap: renders nothing)."""
        return int(self._rng(index).integers(len(SCENES)))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.render(index)

    def render(self, index: int, scene: int | None = None) -> tuple[Tensor, Tensor]:
        """Sample ``index``; with ``scene``, the same sample moved to another scene type.

        Everything but the scene (layout, objects, noise) comes from the same
        random draws, so ``render(i, scene=s)`` for the four ``s`` shows the same
        boxes and discs, pixel for pixel, under four backdrops and four labels.
        """
        rng = self._rng(index)
        drawn = int(rng.integers(len(SCENES)))  # first draw: the same as scene_of(index)
        if scene is None:
            scene = drawn
        elif not 0 <= scene < len(SCENES):
            raise ValueError(f"scene must be in [0, {len(SCENES)}) (an index into {self.scenes}), got {scene}")
        S, W = self.image_size, self.image_size // 2  # rows, columns

        # Backdrop (top) over ground (everywhere else), both cropped from the texture banks.
        edge = rng.integers(int(_EDGE[0] * S), int(_EDGE[1] * S) + 1)
        wave = rng.uniform(0, 3) * np.sin(rng.uniform(0.05, 0.2) * np.arange(W) + rng.uniform(0, 2 * np.pi))
        backdrop = np.arange(S)[:, None] < (edge + np.round(wave))[None, :]  # (S, W)
        oy, ox = rng.integers(0, S, size=(2, 2))
        ground_texture = self._textures[0, :, oy[0] : oy[0] + S, ox[0] : ox[0] + W]
        backdrop_texture = self._textures[scene + 1, :, oy[1] : oy[1] + S, ox[1] : ox[1] + W]
        image = np.where(backdrop, backdrop_texture, ground_texture)  # (3, S, W)
        mask = np.where(backdrop, _class_id(scene, 1), 0).astype(np.uint8)

        # One or two landmarks standing on the backdrop's edge, in separate halves of the width.
        for half in rng.permutation(2)[: rng.integers(1, 3)]:
            cx = int(rng.integers(half * W // 2 + 8, (half + 1) * W // 2 - 8))
            foot = int(edge + rng.integers(2, 6))
            _landmark(image, mask, scene, foot, cx, _class_id(scene, 2))

        # One to three ambiguous objects in the bottom rows: the same drawing in every scene.
        for _ in range(rng.integers(1, 4)):
            if rng.random() < 0.5:
                height, width = rng.integers(8, 13), rng.integers(12, 21)
                top = int(rng.integers(int(_OBJECTS * S), S - height))
                left = int(rng.integers(1, W - width))
                _rect(image, mask, top, left, height, width, _BOX_BODY, _class_id(scene, 3))
                _rect(image, mask, top + 2, left + 2, 3, width - 4, _BOX_WINDOW, _class_id(scene, 3))
            else:
                radius = int(rng.integers(4, 8))
                cy = int(rng.integers(int(_OBJECTS * S) + radius, S - radius))
                cx = int(rng.integers(radius, W - radius))
                _disc(image, mask, cy, cx, radius, _DISC_RIM, _class_id(scene, 4))
                _disc(image, mask, cy, cx, radius // 2, _DISC_CENTRE, _class_id(scene, 4))

        # Uniform noise in [-_NOISE, _NOISE) from raw random bytes: 8x faster than rng.random.
        noise = np.frombuffer(rng.bytes(3 * S * W), dtype=np.int8).reshape(3, S, W).astype(np.float32)
        image = (image * rng.uniform(*_BRIGHTNESS) + (_NOISE / 128) * noise).clip(0, 1)
        image = (image - self._mean) / self._std
        return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))


def local_ceiling(scenes: SyntheticScenes) -> dict[str, float]:
    """The best scores a model that cannot see the scene from an ambiguous pixel can expect on ``scenes``.

    Such a model (the FCN: the window it reads around an ambiguous pixel is the
    same in the four scenes) is granted everything else: every non-ambiguous
    pixel right, and the part (box or disc) of every ambiguous pixel. Only the
    scene is left, which it must guess independently of the truth. Guessing each
    scene with the same probability gives a class with ``n`` of the ``P`` pixels
    of its part the expected IoU ``(n/4) / (n + P/4 - n/4)`` (1/7 when the four
    scenes are equally frequent); with the scenes equally frequent no other
    guessing does better in expectation, since a class's IoU ``q / (1 + 3q)`` is
    concave in the share ``q`` of guesses it gets. The ambiguous pixels are then a
    quarter right. Computed from the masks of ``scenes`` (rendering every sample).

    Returns ``{"mIoU", "pixAcc", "ambiguous_IoU", "ambiguous_accuracy"}`` (fractions):
    mIoU over the 17 classes, ambiguous_IoU the mean over the 8 ambiguous classes.
    """
    counts = torch.zeros(len(CLASSES), dtype=torch.float64)
    for index in range(len(scenes)):
        counts += torch.bincount(scenes[index][1].flatten(), minlength=len(CLASSES)).double()
    iou = torch.ones(len(CLASSES), dtype=torch.float64)
    for part in AMBIGUOUS_PARTS:
        labels = [_class_id(s, PARTS.index(part)) for s in range(len(SCENES))]
        n, total = counts[labels], counts[labels].sum()
        iou[labels] = (n / 4) / (n + total / 4 - n / 4)
    ambiguous = list(SyntheticScenes.ambiguous)
    present = counts > 0
    return {
        "mIoU": iou[present].mean().item(),
        "pixAcc": (1 - 0.75 * counts[ambiguous].sum() / counts.sum()).item(),
        "ambiguous_IoU": iou[ambiguous].mean().item(),
        "ambiguous_accuracy": 0.25,
    }
