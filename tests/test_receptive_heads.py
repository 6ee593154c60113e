"""The receptive-field heads: ASPP and image pooling see the whole image, the FCN does not."""

import dataclasses

import pytest
import torch

from encnet.config import preset
from encnet.engine import train
from encnet.models import build_model, get_model, list_models, load_trained


def _support(model, size: int) -> tuple[int, int]:
    """(rows, columns) of the input pixels on which the centre output pixel's logits depend (gradient != 0)."""
    torch.manual_seed(0)
    image = torch.randn(1, 3, size, size, requires_grad=True)
    model.eval()(image)["out"][0, :, size // 2, size // 2].sum().backward()
    reached = image.grad.abs().sum(1)[0] > 0
    rows, cols = reached.any(1).nonzero(), reached.any(0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_the_heads_are_registered_models_with_their_options():
    assert {"aspp", "pool"} <= set(list_models())
    assert get_model("aspp").options == {"rate": 12} and get_model("pool").options == {}
    assert not get_model("aspp").se_branch and not get_model("pool").se_branch
    model = build_model("aspp", "small", num_classes=17, rate=3)
    assert [branch[0].dilation for branch in model.head.branches[1:]] == [(3, 3), (6, 6), (9, 9)]
    assert model(torch.randn(2, 3, 64, 64))["out"].shape == (2, 17, 64, 64)


@pytest.mark.parametrize("name, options, whole", [("fcn", {}, False), ("aspp", {"rate": 3}, True),
                                                  ("aspp", {"rate": 12}, False), ("pool", {}, True)])
def test_what_the_centre_pixel_sees_on_a_160_pixel_image(name, options, whole):
    """ASPP's rate 12 (DeepLabv3's, for 512-pixel crops) on a 20 x 20 map: its dilated taps fall off the map,
    and the head sees what the FCN sees."""
    model = build_model(name, "small", num_classes=3, aux=False, **options)
    rows, cols = _support(model, 160)
    assert ((rows, cols) == (160, 160)) == whole, (rows, cols)


def test_a_receptive_field_head_trains_and_reloads(tmp_path):
    config = dataclasses.replace(preset("synthetic-quick"), model="pool", epochs=1)
    assert config.se_weight == 0  # no SE branch
    result = train(dataclasses.replace(config, out=str(tmp_path)), progress=False)
    assert result["metrics"]["mIoU"] > 0 and type(result["model"].head).__name__ == "ImagePoolingHead"
    model, saved, _ = load_trained(tmp_path / "checkpoint.pt")
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images)["out"], result["model"].eval()(images)["out"])
    assert saved.model == "pool"
