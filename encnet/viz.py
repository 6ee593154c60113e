"""Plotting helpers shared by the notebooks: label maps in a dataset's palette.

``colorize`` turns a (H, W) label map into an RGB image, ``overlay`` blends it
over a normalised image, ``show_segmentations`` lays out images with their ground
truth and predictions, and ``class_legend`` adds to any figure a legend of the
classes its label maps show. Pixels labelled ``ignore_index`` are black.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .data.transforms import denormalize

LEGEND_ROWS = 24  # a class legend longer than this wraps into more columns


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


def present_classes(*label_maps: Tensor | np.ndarray, ignore_index: int = 255) -> list[int]:
    """The classes found in any of ``label_maps`` (any shapes and dtypes), sorted, ``ignore_index`` left out."""
    found = set().union(*(torch.as_tensor(labels).long().unique().tolist() for labels in label_maps))
    return sorted(found - {ignore_index})


def _swatches(labels: Sequence[int], classes: Sequence[str] | None, palette: Sequence[Sequence[int]]):
    """One legend handle per class of ``labels``: its colour, edged in grey (white stays visible), and its name."""
    from matplotlib.patches import Patch

    return [Patch(facecolor=np.asarray(palette[c]) / 255.0, edgecolor="0.3",
                  label=str(c) if classes is None else classes[c]) for c in labels]


def class_legend(fig, label_maps: Sequence[Tensor | np.ndarray], palette: Sequence[Sequence[int]],
                 classes: Sequence[str] | None = None, *, ignore_index: int = 255, **where):
    """Add to ``fig`` a legend of exactly the classes present in ``label_maps``, in ``palette``.

    ``classes`` names them (default: the label numbers); more than ``LEGEND_ROWS`` classes go
    into several columns. ``where`` is passed to ``Figure.legend``; by default the legend sits
    right of the axes, which needs a figure made with ``layout="constrained"``. Returns the legend.
    """
    present = present_classes(*label_maps, ignore_index=ignore_index)
    where = where or {"loc": "outside right center"}
    return fig.legend(handles=_swatches(present, classes, palette), title="classes", frameon=False,
                      ncol=max(1, -(-len(present) // LEGEND_ROWS)), **where)


def show_segmentations(images, columns: dict[str, Sequence[Tensor]], palette, classes: Sequence[str] | None = None,
                       *, titles: Sequence[str] | None = None, per_image: str = "row", panel_inches: float = 1.8):
    """A grid of images and their label maps, with a legend of the classes the label maps show.

    ``columns`` maps a title ("ground truth", "FCN", ...) to one (H, W) label map per image.
    ``per_image="row"``: one row per image, the image first, then one column per entry of
    ``columns``; ``per_image="column"``: one column per image, the image on top, then one row
    per entry (the layout for tall images). ``titles`` names the images (one each), ``classes``
    the legend's entries (:func:`class_legend`). Each panel is about ``panel_inches`` high and as
    wide as the first image's aspect ratio makes it. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if per_image not in ("row", "column"):
        raise ValueError(f"per_image must be 'row' or 'column', got {per_image!r}")
    height, width = images[0].shape[-2:]
    kinds = ["image", *columns]  # grid[k, j] below: panel k (the image, then each entry) of image j
    shape = (len(kinds), len(images)) if per_image == "column" else (len(images), len(kinds))
    label_maps = [labels for masks in columns.values() for labels in masks]
    legend_inches = 1.5 * -(-len(present_classes(*label_maps)) // LEGEND_ROWS)  # 1.5 inches a legend column
    fig, axes = plt.subplots(*shape, squeeze=False, layout="constrained",
                             figsize=(shape[1] * (panel_inches * width / height + 0.05) + 0.4 + legend_inches,
                                      shape[0] * (panel_inches + 0.2) + 0.5))
    grid = axes if per_image == "column" else axes.T
    for j, image in enumerate(images):
        grid[0, j].imshow(to_rgb(image))
        for k, masks in enumerate(columns.values(), start=1):
            grid[k, j].imshow(colorize(masks[j], palette))
    for k, kind in enumerate(kinds):  # the panels' names along one edge, the images' titles along the other
        (grid[k, 0].set_ylabel if per_image == "column" else grid[k, 0].set_title)(kind)
    for j, title in enumerate(titles or ()):
        (grid[0, j].set_title if per_image == "column" else grid[0, j].set_ylabel)(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    class_legend(fig, label_maps, palette, classes)
    return fig


def palette_legend(classes: Sequence[str], palette: Sequence[Sequence[int]], *, columns: int = 4):
    """A figure listing each class name next to its colour, each swatch edged in grey (white stays visible)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.9 * columns, 0.3 * (len(classes) // columns + 1)))
    ax.axis("off")  # an empty, hidden axes: inline backends do not draw a figure without axes
    ax.legend(handles=_swatches(range(len(classes)), classes, palette), loc="center", ncol=columns, frameon=False)
    return fig


def save_palette_png(path, labels: Tensor | np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """(H, W) labels -> an 8-bit palette PNG: the labels as pixel values, ``palette`` as their colours."""
    from PIL import Image

    image = Image.fromarray(torch.as_tensor(labels).cpu().numpy().astype(np.uint8), mode="P")
    image.putpalette([channel for colour in palette for channel in colour])
    image.save(path)
