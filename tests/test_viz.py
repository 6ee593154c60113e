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
