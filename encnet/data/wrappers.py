"""Views of a dataset for the training engine: deterministic augmentation, whole images.

- :class:`KeyedAugmentation`: ``dataset[(epoch, index)]``, sample ``index``
  augmented with draws that depend on ``(seed, epoch, index)`` only.
- :func:`whole_images`: a split as full images, normalised and nothing else,
  for :func:`encnet.evaluation.evaluate`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import UserError
from . import DATASETS, build_dataset, transforms


class KeyedAugmentation(Dataset):
    """``dataset[(epoch, index)]``: sample ``index`` augmented with random draws seeded by ``(seed, epoch, index)``.

    The dataset's random transforms draw from torch's global generator; here it
    is re-seeded for each sample (and restored afterwards), so an augmentation
    depends on nothing but the key: not on the worker process, the rank, or the
    samples loaded before it.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]


def whole_images(name: str, split: str, *, root: str | None, options: dict[str, Any]) -> Dataset:
    """``split`` of dataset ``name`` as whole images, normalised and nothing else, for evaluation.

    ``build_dataset``'s validation view is a central crop, for quick checks
    during training; the evaluation scores every pixel of the images.
    ``options`` go to the dataset class (see :func:`encnet.data.build_dataset`).
    """
    if name == "synthetic":  # rendered at its final size and normalised: nothing to crop
        return build_dataset(name, split, **options)
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if root is None:
        raise UserError(f"dataset {name!r} needs its folder: pass --data-root <folder>; data/README.md gives its "
                        "layout")
    return DATASETS[name](root, split, transforms=v2.Compose(transforms.to_normalised_tensors()), **options)
