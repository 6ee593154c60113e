import numpy as np
import pytest
import torch

from encnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from encnet.viz import colorize, overlay, to_rgb

PALETTE = [(10, 20, 30), (200, 100, 0)]


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
