import pytest
import torch
from torch import nn

from encnet.teaching.receptive import centred, deepest_pixels, effective_receptive_field, input_gradients, mass_beyond


class OneConv(nn.Module):
    """A 3 x 3 convolution: each output pixel reads its 3 x 3 neighbourhood and nothing else."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


class GlobalPool(OneConv):
    """The convolution plus the image's mean feature added at every pixel: it reads the whole image."""

    def forward(self, x):
        features = self.conv(x)
        return {"out": features + features.mean((2, 3), keepdim=True)}


def _batch(B=2, size=16):
    torch.manual_seed(0)
    return torch.randn(B, 3, size, size), torch.tensor([[8, 8], [3, 12]])[:B], torch.tensor([0, 1])[:B]


def test_a_convolution_reaches_its_kernel_and_global_pooling_everywhere():
    images, pixels, labels = _batch()
    local = input_gradients(OneConv().eval(), images, pixels, labels)
    assert local.shape == (2, 16, 16)
    assert local[0, 7:10, 7:10].gt(0).all() and local[0, 0, 0] == 0 and local[0, 8, 11] == 0  # 3 px away: unseen
    assert local[0].gt(0).sum() == 9
    whole = input_gradients(GlobalPool().eval(), images, pixels, labels)
    assert whole.gt(0).all()  # every input pixel changes the logit


def test_the_batch_gives_each_image_its_own_gradient_and_weights_generalise_labels():
    model = GlobalPool().eval()
    images, pixels, labels = _batch()
    both = input_gradients(model, images, pixels, labels)
    alone = input_gradients(model, images[1:], pixels[1:], labels[1:])
    torch.testing.assert_close(both[1:], alone)
    one_hot = torch.nn.functional.one_hot(labels, 2).float()
    torch.testing.assert_close(input_gradients(model, images, pixels, one_hot), both)


def test_centred_maps_and_the_mass_beyond_a_radius():
    maps = torch.zeros(1, 5, 5)
    maps[0, 1, 4] = 1.0  # the asked pixel
    maps[0, 1, 0] = 3.0  # 4 px to its left
    field = centred(maps, torch.tensor([[1, 4]]))[0]
    assert field.shape == (9, 9) and field[4, 4] == 1 and field[4, 0] == 3
    assert mass_beyond(field, 3.5) == pytest.approx(0.75) and mass_beyond(field, 4.5) == 0
    with pytest.raises(ValueError, match="odd sides"):
        mass_beyond(torch.ones(4, 4), 1)


def test_the_effective_receptive_field_has_unit_mass_and_a_convolution_keeps_it_local():
    images, pixels, labels = _batch()
    field = effective_receptive_field(OneConv().eval(), images, pixels, labels)
    assert field.shape == (31, 31) and field.sum().item() == pytest.approx(1.0)
    assert mass_beyond(field, 1.5) == 0  # nothing beyond the 3 x 3 kernel
    assert mass_beyond(effective_receptive_field(GlobalPool().eval(), images, pixels, labels), 1.5) > 0.01


def test_bad_input_says_what_was_expected():
    images, pixels, labels = _batch()
    with pytest.raises(ValueError, match="eval mode"):
        input_gradients(OneConv().train(), images, pixels, labels)
    with pytest.raises(ValueError, match="inside the 16 x 16"):
        input_gradients(OneConv().eval(), images, torch.tensor([[8, 8], [3, 16]]), labels)
    with pytest.raises(ValueError, match=r"labels \(B,\)"):
        input_gradients(OneConv().eval(), images, pixels, labels[:1])


def test_deepest_pixels_find_the_centre_of_the_thickest_object():
    masks = torch.zeros(2, 12, 12, dtype=torch.long)
    masks[0, 2:9, 1:8] = 3  # a 7 x 7 square, centre (5, 4)
    masks[0, 10:12, 9:12] = 5  # a thin strip of another asked class
    masks[1, 0:3, 0:3] = 5  # in the corner: the border bounds it, so its centre (1, 1) survives
    pixels, labels = deepest_pixels(masks, (3, 5))
    assert pixels.tolist() == [[5, 4], [1, 1]] and labels.tolist() == [3, 5]
    with pytest.raises(ValueError, match="hold no pixel"):
        deepest_pixels(masks, (7,))
