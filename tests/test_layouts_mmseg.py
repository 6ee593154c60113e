"""mmsegmentation's checkpoint layouts load strictly into encnet's models.

The fixtures ``tests/fixtures/layouts/mmseg_*.json`` hold the key names and
shapes of mmsegmentation's own EncNet models and ResNetV1c backbones (written by
``tests/peers/make_layouts_mmseg.py`` from mmsegmentation 1.2.2). Each test fills
a layout with random tensors, wraps it as mmsegmentation's files are, loads it
with :func:`encnet.models.from_checkpoint` (or ``dilated_resnet(weights=path)``)
and checks that the file's tensors and the model's are one-to-one: every
tensor of the file is, unchanged (the Encoding's ``scale`` negated, ``s_k =
-scale_k``), exactly one tensor of the model, and every tensor of the model comes
from the file. Names are checked where a swap would keep the shapes (the stem's
BNs, the lateral convs, the heads). mmsegmentation is not needed; the
equality of the outputs with mmsegmentation's own forward pass is
``tests/peers/test_mmseg_equality.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

from encnet.models import dilated_resnet, from_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
SEGMENTATION = [
    "mmseg_encnet_r50_ade20k", "mmseg_encnet_r101_ade20k", "mmseg_encnet_r50_lateral", "mmseg_encnet_r50_no_se"]

NAMES = {
    # mmsegmentation key -> encnet key, where tensors of the same shape could be swapped
    "backbone.stem.0.weight": "backbone.conv1.0.weight",
    "backbone.stem.1.running_var": "backbone.conv1.1.running_var",
    "backbone.stem.3.weight": "backbone.conv1.3.weight",
    "backbone.stem.4.weight": "backbone.conv1.4.weight",
    "backbone.stem.6.weight": "backbone.conv1.6.weight",
    "backbone.stem.7.bias": "backbone.bn1.bias",
    "backbone.layer3.0.downsample.1.running_mean": "backbone.layer3.0.downsample.1.running_mean",
    "backbone.layer4.2.conv2.weight": "backbone.layer4.2.conv2.weight",
    "decode_head.bottleneck.bn.weight": "head.conv.1.weight",
    "decode_head.lateral_convs.0.bn.bias": "head.lateral.c2.1.bias",
    "decode_head.lateral_convs.1.bn.bias": "head.lateral.c3.1.bias",
    "decode_head.fusion.bn.running_mean": "head.fusion.1.running_mean",
    "decode_head.enc_module.encoding_project.bn.weight": "head.enc_module.reduce.1.weight",
    "decode_head.enc_module.encoding.0.codewords": "head.enc_module.encoding.codewords",
    "decode_head.enc_module.encoding.1.running_var": "head.enc_module.codes_norm.running_var",
    "decode_head.enc_module.fc.0.bias": "head.enc_module.attention.bias",
    "decode_head.se_layer.bias": "head.enc_module.se_classifier.bias",
    "decode_head.conv_seg.bias": "head.classifier.1.bias",
    "auxiliary_head.convs.0.bn.weight": "aux_head.0.1.weight",
    "auxiliary_head.conv_seg.bias": "aux_head.2.bias",
}
SCALE = "decode_head.enc_module.encoding.0.scale"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def random_tensors(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, Tensor]:
    """A tensor of each recorded shape: normal values, running variances in (0.5, 1.5), distinct int64 counters."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000 + index, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


def mmseg_checkpoint(state: dict[str, Tensor], num_classes: int) -> dict:
    """``state`` as mmcv's ``save_checkpoint`` wrote mmsegmentation 0.x's published files (plain-typed ``meta``)."""
    meta = {
        "mmseg_version": "0.5.0+0000000",
        "config": "model = dict(type='EncoderDecoder', ...)",
        "CLASSES": tuple(f"class{index}" for index in range(num_classes)),
        "PALETTE": [[index, 2 * index % 256, 3 * index % 256] for index in range(num_classes)],
        "env_info": "sys.platform: linux",
        "seed": None,
        "exp_name": "encnet_r50-d8_512x512_80k_ade20k.py",
        "mmcv_version": "1.0.0",
        "time": "Mon Jun 22 04:24:12 2020",
        "epoch": 1,
        "iter": 80000,
    }
    return {"meta": meta, "state_dict": state}


def assert_one_to_one(source: dict[str, Tensor], target: dict[str, Tensor]) -> None:
    """Each source tensor (``scale`` negated) equals exactly one target tensor, and each target tensor one source."""
    by_values: dict[tuple, list[str]] = {}
    for key, value in target.items():
        by_values.setdefault((value.dtype, tuple(value.shape), tuple(value.flatten()[:2].tolist())), []).append(key)
    unused = set(target)
    for key, value in source.items():
        expected = -value if key.endswith(".scale") else value
        candidates = by_values.get((expected.dtype, tuple(expected.shape), tuple(expected.flatten()[:2].tolist())), [])
        matches = [name for name in candidates if name in unused and torch.equal(target[name], expected)]
        assert len(matches) == 1, f"{key} {tuple(value.shape)} is in {len(matches)} tensors of the model, expected 1"
        unused.discard(matches[0])
    assert not unused, f"tensors of the model that the file did not fill: {sorted(unused)[:5]}"


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_layout_loads_one_to_one(name, tmp_path):
    layout = fixture(name)
    assert layout["publisher"] == "mmsegmentation" and layout["kind"] == "segmentation"
    state = random_tensors(layout["state_dict"])
    checkpoint = mmseg_checkpoint(state, layout["num_classes"])
    if name == "mmseg_encnet_r50_ade20k":  # one through a file, read with torch.load(weights_only=True)
        torch.save(checkpoint, tmp_path / "encnet.pth")
        checkpoint = tmp_path / "encnet.pth"
    model = from_checkpoint(checkpoint, num_classes=layout["num_classes"])

    assert not model.training
    loaded = model.state_dict()
    assert_one_to_one(state, loaded)
    assert sum(value.numel() for value in state.values()) == sum(value.numel() for value in loaded.values())
    for mmseg_key, encnet_key in NAMES.items():
        if mmseg_key in state:
            assert torch.equal(loaded[encnet_key], state[mmseg_key]), f"{mmseg_key} -> {encnet_key}"
    assert torch.equal(model.head.enc_module.encoding.smoothing, -state[SCALE])

    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 32, 48))
    has_se = "decode_head.se_layer.weight" in state
    assert set(outputs) == {"out", "aux"} | ({"se"} if has_se else set())
    assert outputs["out"].shape == outputs["aux"].shape == (1, layout["num_classes"], 32, 48)
    if has_se:
        assert outputs["se"].shape == (1, layout["num_classes"])


def test_segmentation_layout_without_aux_head():
    """A model trained without ``auxiliary_head`` (mmseg's configs allow it) has no ``"aux"`` output."""
    shapes = {key: shape for key, shape in fixture("mmseg_encnet_r50_ade20k")["state_dict"].items()
              if not key.startswith("auxiliary_head.")}
    state = random_tensors(shapes, seed=1)
    model = from_checkpoint(mmseg_checkpoint(state, 150))
    assert_one_to_one(state, model.state_dict())
    with torch.no_grad():
        assert set(model(torch.randn(1, 3, 32, 32))) == {"out", "se"}


@pytest.mark.parametrize(
    "name, with_fc", [("mmseg_resnet50_v1c", False), ("mmseg_resnet50_v1c", True), ("mmseg_resnet101_v1c", True)]
)
def test_backbone_layout_loads_one_to_one(name, with_fc, tmp_path):
    """The ImageNet ResNetV1c files: tensors under "state_dict", mmseg's names, maybe an ImageNet classifier."""
    layout = fixture(name)
    assert layout["kind"] == "backbone"
    state = random_tensors(layout["state_dict"], seed=2)
    classifier = {"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)} if with_fc else {}
    torch.save({"state_dict": {**state, **classifier}}, tmp_path / "resnet_v1c.pth")

    backbone = dilated_resnet(name.removeprefix("mmseg_"), weights=tmp_path / "resnet_v1c.pth")
    loaded = backbone.state_dict()
    assert_one_to_one(state, loaded)
    for mmseg_key, encnet_key in NAMES.items():
        if mmseg_key.startswith("backbone."):
            assert torch.equal(loaded[encnet_key.removeprefix("backbone.")], state[mmseg_key.removeprefix("backbone.")])


@pytest.fixture(scope="module")
def r50_state() -> dict[str, Tensor]:
    return random_tensors(fixture("mmseg_encnet_r50_ade20k")["state_dict"], seed=3)


def test_wrong_class_count_is_an_error(r50_state):
    with pytest.raises(ValueError, match=r"150 classes.*num_classes=21"):
        from_checkpoint(mmseg_checkpoint(r50_state, 150), num_classes=21)


def test_unknown_layout_is_an_error():
    with pytest.raises(ValueError, match="encoder"):
        from_checkpoint({"state_dict": {"encoder.conv.weight": torch.zeros(8, 3, 3, 3)}})


def test_missing_tensor_is_an_error(r50_state):
    state = {key: value for key, value in r50_state.items() if key != "decode_head.conv_seg.bias"}
    with pytest.raises(ValueError, match=r"conv_seg\.bias|classifier\.1\.bias"):
        from_checkpoint(mmseg_checkpoint(state, 150))


def test_unsupported_head_is_an_error(r50_state):
    """mmseg's FCNHead with ``num_convs=2`` has a second conv that encnet's auxiliary head does not."""
    extra = {"auxiliary_head.convs.1.conv.weight": torch.zeros(256, 256, 3, 3)}
    with pytest.raises(ValueError, match=r"auxiliary_head\.convs\.1"):
        from_checkpoint(mmseg_checkpoint({**r50_state, **extra}, 150))
