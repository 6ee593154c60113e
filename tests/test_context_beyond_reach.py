"""The synthetic benchmark puts the scene out of the FCN's reach: shown on the built model, not asserted.

The FCN of the ``synthetic`` preset reads, for an output pixel, the input rows where the gradient of
its logits is non-zero (``encnet.teaching.receptive.row_reach``). Around every ambiguous pixel of
many layouts, those rows are the same in the four scene renderings of the layout, pixel for pixel:
nothing the FCN sees tells a car from a boat. A whole-image head (ASPP with rate 5) does reach the
cues, so the test is not blind. The local ceiling is the best such a scene-blind model can expect.
"""

import pytest
import torch

from encnet.config import preset
from encnet.data import build_dataset
from encnet.data.synthetic import SCENES, local_ceiling
from encnet.metrics import SegmentationMetric
from encnet.models import build_model
from encnet.teaching.receptive import row_reach

CONFIG = preset("synthetic")


@pytest.fixture(scope="module")
def scenes():
    options = {**CONFIG.dataset_options, "val_samples": 48}
    return build_dataset("synthetic", "val", crop_size=CONFIG.crop_size, **options)


def _first_row_alike(renders) -> int:
    """The first row from which the four renderings' images are equal to the bottom."""
    images = torch.stack([image for image, _ in renders])  # (4, 3, H, W)
    differs = (images != images[0]).any(dim=(0, 1, 3))  # (H,)
    assert differs.any()  # the scenes do differ, somewhere
    return int(differs.nonzero().max()) + 1


def _ambiguous_rows(scenes, mask) -> torch.Tensor:
    return torch.isin(mask, torch.tensor(scenes.ambiguous)).nonzero()[:, 0].unique()


def test_the_fcn_window_around_every_ambiguous_pixel_is_the_same_in_the_four_scenes(scenes):
    height, width = scenes[0][0].shape[-2:]
    fcn = build_model("fcn", CONFIG.backbone, num_classes=scenes.num_classes).eval()
    lowest_object_row = int(0.7 * height)
    asked = torch.arange(lowest_object_row, height)
    top, bottom = row_reach(fcn, height, width, asked)
    reach = int((asked - top).max())
    assert 45 <= reach <= 60, reach  # the small backbone's field, about 99 px tall: measured, not assumed
    margins = []
    for index in range(len(scenes)):
        renders = [scenes.render(index, scene=s) for s in range(len(SCENES))]
        alike = _first_row_alike(renders)
        rows = _ambiguous_rows(scenes, renders[0][1])
        assert rows.numel() and rows.min() >= lowest_object_row
        for _, mask in renders[1:]:  # the same object pixels, under other labels
            assert torch.equal(_ambiguous_rows(scenes, mask), rows)
        first_read = int(top[rows - lowest_object_row].min())
        assert first_read >= alike, (index, first_read, alike)
        margins.append(first_read - alike)
    assert min(margins) >= 5  # rows to spare between what the FCN reads and the last row that differs


def test_a_whole_image_head_does_reach_the_scene(scenes):
    height, width = scenes[0][0].shape[-2:]
    aspp = build_model("aspp", CONFIG.backbone, num_classes=scenes.num_classes, rate=5).eval()
    top, _ = row_reach(aspp, height, width, torch.tensor([height - 1]), trials=1)
    alike = min(_first_row_alike([scenes.render(i, scene=s) for s in range(len(SCENES))]) for i in range(8))
    assert int(top[0]) < alike  # the bottom row reads rows where the scenes differ


def test_the_local_ceiling_is_what_a_scene_blind_labelling_scores(scenes):
    ceiling = local_ceiling(scenes)
    assert ceiling["ambiguous_accuracy"] == 0.25
    assert 0.12 < ceiling["ambiguous_IoU"] < 0.17  # 1/7 with equally frequent scenes
    assert ceiling["mIoU"] == pytest.approx((9 + 8 * ceiling["ambiguous_IoU"]) / 17)
    # Simulate it: the truth everywhere, but each ambiguous pixel's scene drawn at random.
    generator = torch.Generator().manual_seed(0)
    metric = SegmentationMetric(scenes.num_classes)
    label = torch.tensor([[scenes.label(s, part) if part in ("box", "disc") else 0 for part in scenes.parts]
                          for s in range(len(SCENES))])  # [scene, part] -> label
    for index in range(len(scenes)):
        mask = scenes[index][1]
        _, part = scenes.decode(mask)
        guessed = label[torch.randint(0, len(SCENES), mask.shape, generator=generator), part]
        metric.update(torch.where(torch.isin(mask, torch.tensor(scenes.ambiguous)), guessed, mask)[None], mask[None])
    measured = metric.compute()
    assert measured["mIoU"] == pytest.approx(ceiling["mIoU"], abs=0.02)
    assert measured["pixAcc"] == pytest.approx(ceiling["pixAcc"], abs=0.005)
