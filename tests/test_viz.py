import numpy as np
import pytest
import torch

from encnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from encnet.viz import class_legend, colorize, overlay, present_classes, show_segmentations, to_rgb

PALETTE = [(10, 20, 30), (200, 100, 0)]
CLASSES = ["ground", "sky", "car", "boat", "tree"]
FIVE = [(128, 128, 128), (0, 0, 255), (255, 0, 0), (0, 0, 128), (255, 255, 255)]  # white: its edge must show


def test_colorize_uses_the_palette_and_blacks_out_ignore():
    rgb = colorize(torch.tensor([[0, 1], [255, 0]]), PALETTE)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 1].tolist() == [200, 100, 0]
    assert rgb[1, 0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="labels must lie"):
        colorize(torch.tensor([[-1]]), PALETTE)


def test_to_rgb_undoes_imagenet_normalisation_and_overlay_blends():
    grey = torch.full((3, 2, 2), 0.5)
    normalised = (grey - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(to_rgb(normalised), 0.5, atol=1e-6)
    blended = overlay(normalised, torch.ones(2, 2, dtype=torch.long), PALETTE, alpha=0.5)
    np.testing.assert_allclose(blended[0, 0], 0.25 + 0.5 * np.array([200, 100, 0]) / 255, atol=1e-6)


def test_overlay_stays_within_the_unit_range():
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    white = (torch.ones(3, 4, 4) - mean) / std
    for alpha in (0.3, 0.45, 0.7):  # 0.45 and 0.7 give 1 + 1e-8 without clipping
        blended = overlay(white, torch.zeros(4, 4, dtype=torch.long), [(255, 255, 255)], alpha=alpha)
        assert blended.min() >= 0 and blended.max() <= 1


def test_palette_legend_lists_every_class_in_its_colour():
    import matplotlib

    matplotlib.use("Agg")
    from encnet.viz import palette_legend

    fig = palette_legend(["road", "car"], PALETTE, columns=2)
    (ax,) = fig.axes  # one hidden axes, so that inline backends draw the figure
    legend = ax.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["road", "car"]
    colours = [tuple(round(255 * v) for v in patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    assert colours == [tuple(c) for c in PALETTE]
    assert all(patch.get_edgecolor()[:3] == (0.3, 0.3, 0.3) for patch in legend.get_patches())  # white shows


def legend_entries(legend):
    """(names, RGB colours 0-255, edge colours) of a legend's entries."""
    colours = [tuple(round(255 * v) for v in patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    edges = [patch.get_edgecolor()[:3] for patch in legend.get_patches()]
    return [text.get_text() for text in legend.get_texts()], colours, edges


def test_present_classes_is_the_sorted_union_without_ignore():
    assert present_classes(torch.tensor([[4, 0], [255, 4]]), np.array([[[2]]])) == [0, 2, 4]
    assert present_classes(torch.tensor([[7, 1]]), ignore_index=7) == [1]


def test_class_legend_lists_exactly_the_classes_present_in_their_colours():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots(layout="constrained")
    legend = class_legend(fig, [torch.tensor([[4, 0]]), torch.tensor([[255, 2], [0, 0]])], FIVE, CLASSES)
    assert fig.legends == [legend]
    names, colours, edges = legend_entries(legend)
    assert names == ["ground", "car", "tree"]  # not sky or boat, not the ignored 255
    assert colours == [FIVE[0], FIVE[2], FIVE[4]] and all(edge == (0.3, 0.3, 0.3) for edge in edges)
    assert legend_entries(class_legend(fig, [torch.tensor([[3, 1]])], FIVE))[0] == ["1", "3"]  # no names: numbers
    plt.close("all")


@pytest.mark.parametrize("per_image", ["row", "column"])
def test_show_segmentations_lays_out_the_grid_with_a_legend_of_the_shown_classes(per_image):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [torch.zeros(3, 8, 4), torch.zeros(3, 8, 4)]
    truth = [torch.zeros(8, 4, dtype=torch.long), torch.full((8, 4), 2)]
    predicted = [torch.ones(8, 4), torch.full((8, 4), 2.0)]  # any dtype: float labels too
    fig = show_segmentations(images, {"ground truth": truth, "model": predicted}, FIVE, CLASSES,
                             titles=["first", "second"], per_image=per_image, panel_inches=2.0)
    assert len(fig.axes) == 6
    (legend,) = fig.legends
    assert legend_entries(legend)[0] == ["ground", "sky", "car"]  # the label maps' classes only, in label order
    kinds, titles = ["image", "ground truth", "model"], ["first", "second"]
    if per_image == "column":  # 3 rows x 2 columns: the titles on top, the kinds on the left
        top, left = fig.axes[:2], fig.axes[::2]
        assert [ax.get_title() for ax in top] == titles and [ax.get_ylabel() for ax in left] == kinds
    else:  # 2 rows x 3 columns: the kinds on top, the titles on the left
        top, left = fig.axes[:3], fig.axes[::3]
        assert [ax.get_title() for ax in top] == kinds and [ax.get_ylabel() for ax in left] == titles
    assert fig.get_size_inches()[1] > 2.0 * len(left)  # panels about 2 inches high
    with pytest.raises(ValueError, match="per_image"):
        show_segmentations(images, {"ground truth": truth}, FIVE, per_image="grid")
    plt.close("all")
