"""The image picker of notebook 02: one forward pass up front, a redraw per pick, errors that say what to do."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from encnet.data import SyntheticScenes
from encnet.errors import UserError
from encnet.models import encnet_small, fcn_small
from encnet.teaching.gallery import SHOWN_CHANNELS, draw, picker, precompute


@pytest.fixture(scope="module")
def gallery():
    torch.manual_seed(0)
    dataset = SyntheticScenes("val", num_samples=8, image_size=128)
    return precompute(encnet_small(num_classes=dataset.num_classes), dataset, count=6, batch_size=4)


def test_precompute_keeps_what_one_forward_pass_of_each_image_gives(gallery):
    model_gamma = gallery.gamma
    assert model_gamma.shape == (6, 128) and ((model_gamma > 0) & (model_gamma < 1)).all()
    assert gallery.se.shape == gallery.present.shape == (6, gallery.dataset.num_classes)
    assert gallery.labels.shape == gallery.masks.shape == (6, 128, 64)
    assert gallery.scenes.tolist() == [gallery.dataset.scene_of(i) for i in range(6)]
    assert gallery.present[:, 0].all()  # every synthetic scene has ground
    channels = gallery.shown_channels()
    assert len(set(channels.tolist())) == SHOWN_CHANNELS


def test_draw_returns_the_numbers_of_the_picked_image(gallery):
    fig, numbers = draw(gallery, 3)
    assert np.array_equal(numbers["gamma"], gallery.gamma[3]) and np.array_equal(numbers["se"], gallery.se[3])
    assert numbers["scene"] == gallery.dataset.scenes[gallery.scenes[3]]
    assert numbers["present"] == [gallery.dataset.classes[c] for c in np.flatnonzero(gallery.present[3])]
    assert len(fig.axes) == 6  # image, ground truth, labels, gamma strip, SE bars, colorbar
    assert [ax.get_title() for ax in fig.axes[:3]] == [f"image 3\n{numbers['scene']}", "ground\ntruth",
                                                       "EncNet's\nlabels"]
    shown = {gallery.dataset.classes[c] for c in np.union1d(gallery.masks[3].unique(), gallery.labels[3].unique())}
    assert {text.get_text() for text in fig.legends[0].get_texts()} == shown
    plt.close("all")


def test_moving_the_slider_redraws_the_output(gallery):
    slider, output = picker(gallery).children
    first = output.outputs[0]["data"]["image/png"]
    slider.value = 4
    assert len(output.outputs) == 1 and output.outputs[0]["data"]["image/png"] != first
    slider.value = 0
    assert output.outputs[0]["data"]["image/png"] == first  # the same image, the same picture
    plt.close("all")


def test_bad_requests_say_what_to_do(gallery):
    with pytest.raises(UserError, match="position must be in"):
        draw(gallery, 6)
    with pytest.raises(UserError, match="count must be between 1"):
        precompute(encnet_small(num_classes=17), gallery.dataset, count=9)
    with pytest.raises(UserError, match="no SE branch"):
        precompute(fcn_small(num_classes=17), gallery.dataset, count=2)
