r"""An image picker over the synthetic benchmark: an image, EncNet's labels, its attention and its SE predictions.

Notebook 02 shows what the Context Encoding Module computes for one image at a
time. :func:`precompute` runs a trained EncNet once over the candidate images and
keeps, per image, the channel factors :math:`\gamma \in (0, 1)^C`, the SE
probabilities :math:`\sigma(z_c)` and the per-pixel labels; :func:`draw` then
only draws (no forward pass), and :func:`picker` wires it to a slider::

    gallery = precompute(model, SyntheticScenes("val", num_samples=200), count=48)
    draw(gallery, 0)             # the static view: image, truth, labels, gamma strip, SE bars
    display(picker(gallery))     # the same figure, redrawn for the image the slider picks

The :math:`\gamma` strip puts the image's factors above the mean :math:`\gamma`
of each scene type over the gallery, on the channels whose scene means differ
most, so that one sees which scene the attention reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data import SyntheticScenes
from ..errors import UserError
from ..losses import se_target
from ..viz import class_legend, colorize, to_rgb
from .notebook import show

SHOWN_CHANNELS = 24
"""Channels in the gamma strip: those whose per-scene means differ most (largest standard deviation)."""


@dataclass(frozen=True)
class Gallery:
    """EncNet's outputs on ``n`` images of a :class:`SyntheticScenes`, computed once.

    Attributes:
        images: (n, 3, H, W) normalised images; ``masks`` (n, H, W) their ground truth.
        scenes: (n,) scene type of each image, an index into ``dataset.scenes``.
        gamma: (n, C) the module's channel factors, ``model.head.enc_module.gamma``.
        se: (n, M) SE probabilities, ``sigmoid(model(x)["se"])``; ``present`` (n, M) the
            0/1 ``se_target`` of each mask.
        labels: (n, H, W) EncNet's per-pixel labels, the argmax of ``model(x)["out"]``.
        dataset: where the images come from (class and scene names, palette).
    """

    images: Tensor
    masks: Tensor
    scenes: np.ndarray
    gamma: np.ndarray
    se: np.ndarray
    present: np.ndarray
    labels: Tensor
    dataset: SyntheticScenes

    def __len__(self) -> int:
        return len(self.images)

    def scene_means(self) -> np.ndarray:
        """(scenes, C): the mean gamma of each scene type over the gallery (NaN for a scene it lacks)."""
        return np.stack([self.gamma[self.scenes == s].mean(0) if (self.scenes == s).any()
                         else np.full(self.gamma.shape[1], np.nan) for s in range(len(self.dataset.scenes))])

    def shown_channels(self) -> np.ndarray:
        """The :data:`SHOWN_CHANNELS` channels whose scene means differ most, grouped by the scene that raises them."""
        means = self.scene_means()
        top = np.argsort(np.nanstd(means, 0))[::-1][:SHOWN_CHANNELS]
        return top[np.lexsort((-np.nanmax(means[:, top], 0), np.nanargmax(means[:, top], 0)))]


def precompute(model: torch.nn.Module, dataset: SyntheticScenes, count: int, batch_size: int = 25) -> Gallery:
    """Run ``model`` (a trained EncNet with an SE branch) in eval mode on the first ``count`` images of ``dataset``."""
    if not 0 < count <= len(dataset):
        raise UserError(f"count must be between 1 and the dataset's {len(dataset)} images, got {count}; "
                        "ask for fewer images or build the dataset with a larger num_samples")
    images, masks = map(torch.stack, zip(*(dataset[i] for i in range(count))))
    model.eval()
    gamma, se, labels = [], [], []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            outputs = model(images[start:start + batch_size])
            if "se" not in outputs:
                raise UserError("the model has no SE branch (no 'se' output); pick an EncNet trained with "
                                "se_weight > 0")
            gamma.append(model.head.enc_module.gamma)
            se.append(torch.sigmoid(outputs["se"]))
            labels.append(outputs["out"].argmax(1))
    scenes = np.array([dataset.scene_of(i) for i in range(count)])
    return Gallery(images, masks, scenes, torch.cat(gamma).numpy(), torch.cat(se).numpy(),
                   se_target(masks, dataset.num_classes).numpy(), torch.cat(labels), dataset)


def draw(gallery: Gallery, position: int):
    """Draw image ``position`` of ``gallery``: image, ground truth, EncNet's labels (with a legend of their
    classes), gamma strip, SE probabilities.

    Returns ``(figure, numbers)``, ``numbers`` a dict with the image's ``"scene"``, its
    ``"gamma"`` (C,), its SE probabilities ``"se"`` (M,), the classes ``"present"`` and
    those the SE branch ``"predicted"`` (probability above 0.5).
    """
    import matplotlib.pyplot as plt

    if not 0 <= position < len(gallery):
        raise UserError(f"position must be in [0, {len(gallery)}) (the gallery's images), got {position}")
    data = gallery.dataset
    scene, gamma, se = int(gallery.scenes[position]), gallery.gamma[position], gallery.se[position]
    present = gallery.present[position].astype(bool)
    channels = gallery.shown_channels()

    fig = plt.figure(figsize=(12, 4.6), layout="constrained")
    grid = fig.add_gridspec(1, 5, width_ratios=(0.55, 0.55, 0.55, 2.4, 1.5))
    ax_image, ax_truth, ax_labels = (fig.add_subplot(grid[0, i]) for i in range(3))
    ax_gamma, ax_se = fig.add_subplot(grid[0, 3]), fig.add_subplot(grid[0, 4])
    ax_image.imshow(to_rgb(gallery.images[position]))
    ax_image.set_title(f"image {position}\n{data.scenes[scene]}")
    ax_truth.imshow(colorize(gallery.masks[position], data.palette))
    ax_truth.set_title("ground\ntruth")
    ax_labels.imshow(colorize(gallery.labels[position], data.palette))
    ax_labels.set_title("EncNet's\nlabels")
    for ax in (ax_image, ax_truth, ax_labels):
        ax.axis("off")
    class_legend(fig, [gallery.masks[position], gallery.labels[position]], data.palette, data.classes)

    strip = np.vstack([gamma[channels][None], gallery.scene_means()[:, channels]])
    shown = ax_gamma.imshow(strip, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax_gamma.set_yticks(range(len(strip)), ["this image", *(f"mean, {name}" for name in data.scenes)])
    ax_gamma.axhline(0.5, color="white", linewidth=3)
    ax_gamma.set_xticks([])
    ax_gamma.set_xlabel(f"the {len(channels)} channels whose scene means differ most")
    ax_gamma.set_title("attention $\\gamma$ of this image and per scene")
    fig.colorbar(shown, ax=ax_gamma, location="bottom", shrink=0.8).set_label("$\\gamma_c$ (channel factor, 0 to 1)")

    rows = np.arange(data.num_classes)
    ax_se.barh(rows, se, color=np.where(present, "#31a354", "0.75"), edgecolor="0.3", linewidth=0.5)
    ax_se.axvline(0.5, color="0.3", linestyle=":", linewidth=1)
    ax_se.set_yticks(rows, data.classes)
    ax_se.invert_yaxis()
    ax_se.set_xlim(0, 1)
    ax_se.set_xlabel("SE probability $\\sigma(z_c)$")
    ax_se.set_title("SE branch (green: present)")
    numbers = {"scene": data.scenes[scene], "gamma": gamma, "se": se,
               "present": [data.classes[c] for c in np.flatnonzero(present)],
               "predicted": [data.classes[c] for c in np.flatnonzero(se > 0.5)]}
    return fig, numbers


def picker(gallery: Gallery, position: int = 0):
    """A slider over the gallery's images and an ``Output`` showing :func:`draw` of the picked one.

    Returns an ``ipywidgets.VBox`` (slider, output); ``picker(...).children`` are the two.
    The figure is rendered to a PNG and put in the output's ``outputs`` (so the
    update works, and can be tested, without a live front end).
    """
    import ipywidgets

    options = [(f"{i}: {gallery.dataset.scenes[s]}", i) for i, s in enumerate(gallery.scenes)]
    slider = ipywidgets.SelectionSlider(options=options, value=position, description="image",
                                        continuous_update=False, layout={"width": "480px"})
    output = ipywidgets.Output()

    def redraw(change=None) -> None:
        fig, _ = draw(gallery, slider.value)
        show(output, fig, label=f"image {slider.value}")

    slider.observe(redraw, names="value")
    redraw()
    return ipywidgets.VBox([slider, output])
