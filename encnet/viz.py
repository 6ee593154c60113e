"""Plotting helpers shared by the notebooks: label maps in a dataset's palette.

``colorize`` turns a (H, W) label map into an RGB image, ``overlay`` blends it
over a normalised image, ``show_segmentations`` lays out rows of images with
their ground truth and predictions. Pixels labelled ``ignore_index`` are black.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .data.transforms import denormalize


def colorize(mask: Tensor | np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 RGB in ``palette``; ``ignore_index`` is black."""
    labels = torch.as_tensor(mask).long().cpu().numpy()
    colours = np.zeros((max(len(palette), 256), 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    colours[ignore_index] = 0
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(colours):
        raise ValueError(f"labels must lie in [0, {len(colours)}), got [{labels.min()}, {labels.max()}]")
    return colours[labels]


def to_rgb(image: Tensor) -> np.ndarray:
    """A normalised (3, H, W) image -> (H, W, 3) floats in [0, 1] for ``imshow``."""
    return denormalize(image.detach().cpu()).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay(image: Tensor, mask: Tensor, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend the colorized ``mask`` over the normalised ``image``: (H, W, 3) floats in [0, 1]."""
    blended = (1 - alpha) * to_rgb(image) + alpha * colorize(mask, palette) / 255.0
    return blended.clip(0, 1)  # float rounding can step just past 1, which imshow warns about


def show_segmentations(images, columns: dict[str, Sequence[Tensor]], palette, *, panel_inches: float = 1.8):
    """A grid: one row per image, the image first, then one column per entry of ``columns``.

    ``columns`` maps a title ("ground truth", "FCN", ...) to one (H, W) label map per image;
    each panel is ``panel_inches`` wide and high. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows, cols = len(images), 1 + len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_inches * cols, panel_inches * rows), squeeze=False)
    for r, image in enumerate(images):
        axes[r, 0].imshow(to_rgb(image))
        for c, (title, masks) in enumerate(columns.items(), start=1):
            axes[r, c].imshow(colorize(masks[r], palette))
            if r == 0:
                axes[r, c].set_title(title)
        if r == 0:
            axes[r, 0].set_title("image")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def palette_legend(classes: Sequence[str], palette: Sequence[Sequence[int]], *, columns: int = 4):
    """A figure listing each class name next to its colour, each swatch edged in grey (white stays visible)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="0.3", label=name) for name, c in zip(classes, palette)]
    fig, ax = plt.subplots(figsize=(1.9 * columns, 0.3 * (len(classes) // columns + 1)))
    ax.axis("off")  # an empty, hidden axes: inline backends do not draw a figure without axes
    ax.legend(handles=handles, loc="center", ncol=columns, frameon=False)
    return fig


def save_palette_png(path, labels: Tensor | np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """(H, W) labels -> an 8-bit palette PNG: the labels as pixel values, ``palette`` as their colours."""
    from PIL import Image

    image = Image.fromarray(torch.as_tensor(labels).cpu().numpy().astype(np.uint8), mode="P")
    image.putpalette([channel for colour in palette for channel in colour])
    image.save(path)
