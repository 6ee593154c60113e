import pytest
import torch
from torchvision import tv_tensors

from encnet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomLongSide,
    denormalize,
    train_transforms,
    val_transforms,
)

CELL = 10


def checkerboard(height: int = 70, width: int = 100):
    """Mask: 0/1 cells of CELL px; image: grey for 0, white for 1.

    With an even number of cells across, flipping only one of the two inverts it.

    Neither value is the black the image is padded with.
    """
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask = ((rows // CELL + cols // CELL) % 2).long()
    image = torch.where(mask.bool(), 255, 128).to(torch.uint8).expand(3, -1, -1).clone()
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def assert_aligned(image: torch.Tensor, mask: torch.Tensor) -> None:
    """Every labelled pixel inside a cell has the colour of its label; padding is black + 255.

    Pixels next to a cell edge are left out (resizing blurs the image there), and
    so is the outer ring, where the crop hides whether a cell edge is next.
    """
    grey = denormalize(image).mean(0)  # (H, W) in [0, 1]
    centre = mask[1:-1, 1:-1]
    neighbours = torch.stack([mask[1:-1, :-2], mask[1:-1, 2:], mask[:-2, 1:-1], mask[2:, 1:-1]])
    inside = torch.zeros_like(mask, dtype=torch.bool)
    inside[1:-1, 1:-1] = neighbours.eq(centre).all(0) & (centre != 255)
    assert inside.sum() > 20
    agree = ((grey > 0.75) == (mask == 1))[inside].float().mean().item()
    assert agree > 0.99, f"only {agree:.1%} of the pixels inside cells match their label"
    labelled = mask != 255
    if (~labelled).any():
        assert grey[~labelled].max() < 0.05  # padded image pixels are black
    assert set(mask.unique().tolist()) <= {0, 1, 255}


def test_a_checkerboard_survives_every_random_training_transform():
    torch.manual_seed(0)
    transform = train_transforms(base_size=60, crop_size=48)
    saw_padding = saw_flip_or_scale = False
    for _ in range(25):
        image, mask = transform(*checkerboard())
        assert type(image) is torch.Tensor and type(mask) is torch.Tensor  # plain tensors out
        assert image.dtype == torch.float32 and image.shape == (3, 48, 48)
        assert mask.dtype == torch.int64 and mask.shape == (48, 48)
        assert_aligned(image, mask)
        saw_padding |= bool((mask == 255).any())
        saw_flip_or_scale |= not torch.equal(mask[:CELL, :CELL], torch.zeros(CELL, CELL, dtype=torch.long))
    assert saw_padding and saw_flip_or_scale


def test_validation_transform_resizes_the_short_side_and_crops_the_centre():
    image, mask = checkerboard(height=70, width=100)
    out_image, out_mask = val_transforms(crop_size=35)(image, mask)
    assert out_image.shape == (3, 35, 35) and out_mask.shape == (35, 35)
    assert_aligned(out_image, out_mask)
    # short side 70 -> 35 (scale 1/2); the central 35 of the 50 columns start at column 7 or 8 (rounding)
    half = mask[::2, ::2]
    assert any(torch.equal(out_mask, half[:, left : left + 35]) for left in (7, 8))


def test_random_long_side_stays_in_range_and_keeps_the_aspect():
    torch.manual_seed(0)
    image, mask = checkerboard(height=70, width=100)
    sizes = set()
    for _ in range(30):
        out_image, out_mask = RandomLongSide(20, 80)(image, mask)
        height, width = out_image.shape[-2:]
        assert out_mask.shape == (height, width)
        assert 20 <= width <= 80 and abs(height / width - 70 / 100) < 0.05
        sizes.add(width)
    assert len(sizes) > 10
    with pytest.raises(ValueError, match="min_size <= max_size"):
        RandomLongSide(50, 40)


def test_denormalize_inverts_the_imagenet_normalisation():
    rgb = torch.rand(2, 3, 4, 5)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(denormalize((rgb - mean) / std), rgb)


def test_denormalize_takes_another_dataset_s_mean_and_std():
    rgb, mean, std = torch.rand(3, 4, 5), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (rgb - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(denormalize(normalised, mean, std), rgb)
    assert not torch.allclose(denormalize(normalised), rgb)  # the ImageNet default is another normalisation
