"""Notebook 05's scene picker: one layout of the synthetic scenes, in any scene, segmented by several models.

``SyntheticScenes.render(layout, scene=s)`` draws the same boxes and discs, pixel for pixel, under
the backdrop of scene ``s``; only the labels change with it. :func:`draw_scene` shows the image,
its ground truth and each model's labels with a legend of the classes they show, and scores each
model on the ambiguous pixels (the boxes and discs), the pixels only the scene can tell;
:func:`scene_picker` wraps it in ipywidgets controls (a scene, a layout) that redraw it. One
update is one forward pass per model of one small image.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.synthetic import SyntheticScenes
from ..inference import Protocol, predict
from ..viz import class_legend, colorize, to_rgb
from .notebook import show


def ambiguous_accuracy(labels: torch.Tensor, mask: torch.Tensor, dataset: SyntheticScenes) -> float:
    """Share of the ambiguous pixels of ``mask`` (H, W) that ``labels`` (H, W) gets right (nan if there are none)."""
    ambiguous = torch.isin(mask, torch.tensor(dataset.ambiguous))
    if not ambiguous.any():
        return float("nan")
    return (labels[ambiguous] == mask[ambiguous]).float().mean().item()


def draw_scene(models: dict[str, nn.Module], dataset: SyntheticScenes, scene: int, layout: int):
    """Image, ground truth and each model's labels of ``dataset.render(layout, scene=scene)``, in one row.

    ``models`` maps a title to a model in eval mode. Right of the row, a legend names the classes
    of the ground truth and of the models' labels (:func:`encnet.viz.class_legend`). Returns the
    figure and, per title, the share of the ambiguous pixels the model labels right
    (:func:`ambiguous_accuracy`).
    """
    import matplotlib.pyplot as plt

    if not 0 <= layout < len(dataset):
        raise ValueError(f"layout must be in [0, {len(dataset)}) (an index of the dataset), got {layout}")
    image, mask = dataset.render(layout, scene=scene)
    predictions = {name: predict(model, image[None], Protocol(crop_size=max(image.shape[-2:]))).argmax(1)[0]
                   for name, model in models.items()}
    accuracy = {name: ambiguous_accuracy(labels, mask, dataset) for name, labels in predictions.items()}
    fig, axes = plt.subplots(1, 2 + len(models), figsize=(1.9 * (2 + len(models)) + 1.6, 2.9), layout="constrained")
    axes[0].imshow(to_rgb(image))
    axes[0].set_title(f"{dataset.scenes[scene]}, layout {layout}")
    axes[1].imshow(colorize(mask, dataset.palette))
    axes[1].set_title("ground truth")
    for ax, (name, labels) in zip(axes[2:], predictions.items()):
        ax.imshow(colorize(labels, dataset.palette))
        ax.set_title(f"{name}: {100 * accuracy[name]:.0f}% right")
    for ax in axes:
        ax.axis("off")
    class_legend(fig, [mask, *predictions.values()], dataset.palette, dataset.classes)
    return fig, accuracy


def scene_picker(models: dict[str, nn.Module], dataset: SyntheticScenes, *, scene: int = 0, layout: int = 7):
    """Controls (a scene, a layout) and an output that :func:`draw_scene` redraws: an ``ipywidgets.VBox``.

    Its last child, a ``Label``, repeats the scores in words ("FCN 12% · EncNet 95% of the ambiguous
    pixels right"); the figure goes into the ``Output`` widget before it.
    """
    import ipywidgets as widgets

    scene_choice = widgets.Dropdown(options=[(name, s) for s, name in enumerate(dataset.scenes)], value=scene,
                                    description="scene")
    layout_choice = widgets.BoundedIntText(value=layout, min=0, max=len(dataset) - 1, description="layout")
    output, scores = widgets.Output(), widgets.Label()

    def redraw(_=None):
        fig, accuracy = draw_scene(models, dataset, scene_choice.value, layout_choice.value)
        show(output, fig, label=f"scene {scene_choice.value}, layout {layout_choice.value}")
        scores.value = " · ".join(f"{name} {100 * a:.0f}%" for name, a in accuracy.items()) + \
            " of the ambiguous pixels right"

    scene_choice.observe(redraw, names="value")
    layout_choice.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([scene_choice, layout_choice]), output, scores])
