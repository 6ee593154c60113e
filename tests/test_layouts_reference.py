"""PyTorch-Encoding's published key layouts convert into encnet's models, every tensor used.

The fixtures ``tests/fixtures/layouts/reference_*.json`` record the keys and
shapes of the authors' model-zoo modules (written by
``tests/peers/make_layouts_reference.py`` from PyTorch-Encoding's own code).
Here each layout is filled with random tensors and converted; the check is
name-blind where it can be: every tensor of the file must reach the model with
its value (the Encoding's ``scale`` as ``smoothing = -scale``), and the model
may hold no tensor that did not come from the file.
"""

from __future__ import annotations

import json
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import Tensor

from encnet.models import dilated_resnet, from_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
SEGMENTATION = sorted(FIXTURES.glob("reference_encnet_*.json"))
BACKBONES = sorted(FIXTURES.glob("reference_resnet*.json"))


def test_fixtures_present():
    names = [path.stem.removeprefix("reference_") for path in SEGMENTATION + BACKBONES]
    assert names == ["encnet_resnet101s_ade", "encnet_resnet101s_pcontext", "encnet_resnet50s_ade",
                     "encnet_resnet50s_pcontext", "resnet101s", "resnet50s"]


def read_fixture(path: Path) -> dict:
    fixture = json.loads(path.read_text())
    assert fixture["publisher"] == "PyTorch-Encoding"
    return fixture


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> OrderedDict[str, Tensor]:
    """Tensors of the recorded shapes: BN variances positive, counters int64, Encoding scales negative."""
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith(("running_var", ".scale")):
            sign = -1 if key.endswith(".scale") else 1
            state[key] = sign * (torch.rand(shape, generator=generator) + 0.5)
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


def fingerprint(tensor: Tensor) -> tuple:
    """Shape, first values and sum: unique for random tensors (equal tensors give equal sums)."""
    values = tensor.detach().flatten()
    return tuple(tensor.shape), tuple(values[:4].tolist()), values.sum().item()


def assert_every_tensor_used(source: dict[str, Tensor], model_state: dict[str, Tensor]) -> None:
    """Each float tensor of ``source`` (``*.scale`` negated) is in ``model_state``, and nothing else is."""
    expected = sorted(fingerprint(-value if key.endswith(".scale") else value)
                      for key, value in source.items() if value.is_floating_point())
    loaded = sorted(fingerprint(value) for value in model_state.values() if value.is_floating_point())
    assert len(loaded) == len(expected), f"{len(expected)} tensors in the file, {len(loaded)} in the model"
    assert loaded == expected, "some tensors of the file did not reach the model unchanged"


def as_published(state: dict[str, Tensor], folder: Path, name: str) -> Path:
    """The model zoo's form of a file: ``<name>-<sha1[:8]>.zip`` holding the ``.pth`` of the state dict."""
    archive = folder / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zipped, zipped.open(f"{name}.pth", "w") as pth:
        torch.save(state, pth)
    return archive


@pytest.mark.parametrize("path", SEGMENTATION, ids=lambda path: path.stem)
def test_reference_encnet_layout_converts(path, tmp_path):
    """Strict conversion of each EncNet layout.

    ResNet-50s ADE20K goes through a zipped file, as published; ResNet-101s
    ADE20K comes without ``num_batches_tracked``, as a file saved by PyTorch
    older than 0.4.1 would.
    """
    fixture = read_fixture(path)
    classes = fixture["num_classes"]
    state = random_state(fixture["state_dict"])
    source: dict[str, Tensor] | Path = state
    if path.stem == "reference_encnet_resnet50s_ade":
        source = as_published(state, tmp_path, "encnet_resnet50s_ade-07ac287c")
    if path.stem == "reference_encnet_resnet101s_ade":
        source = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    model = from_checkpoint(source, num_classes=classes)
    loaded = model.state_dict()
    assert_every_tensor_used(state, loaded)

    lateral = "head.connect.0.0.weight" in state
    assert classes == (59 if "pcontext" in path.stem else 150)
    assert lateral == ("pcontext" in path.stem)  # get_encnet: lateral for dataset names starting with "p"
    by_name = {
        "pretrained.conv1.6.weight": "backbone.conv1.6.weight",
        "pretrained.bn1.running_var": "backbone.bn1.running_var",
        "pretrained.layer4.2.conv3.weight": "backbone.layer4.2.conv3.weight",
        "head.encmodule.encoding.3.codewords": "head.enc_module.encoding.codewords",
        "head.encmodule.selayer.weight": "head.enc_module.se_classifier.weight",
        "head.conv6.1.weight": "head.classifier.1.weight",
        "auxlayer.conv5.4.weight": "aux_head.2.weight",
        **({"head.connect.1.0.weight": "head.lateral.c3.0.weight"} if lateral else {}),
    }
    for theirs, ours in by_name.items():
        assert torch.equal(loaded[ours], state[theirs]), f"{theirs} -> {ours}"
    assert torch.equal(loaded["head.enc_module.encoding.smoothing"], -state["head.encmodule.encoding.3.scale"])

    if path.stem == "reference_encnet_resnet50s_pcontext":  # one forward: the lateral head's shapes fit
        with torch.no_grad():
            outputs = model(torch.randn(1, 3, 33, 41))
        assert outputs["out"].shape == outputs["aux"].shape == (1, classes, 33, 41)
        assert outputs["se"].shape == (1, classes)


def test_wrong_class_count_is_a_clear_error():
    fixture = read_fixture(FIXTURES / "reference_encnet_resnet50s_ade.json")
    placeholders = {key: torch.zeros(()).expand(shape) for key, shape in fixture["state_dict"].items()}
    with pytest.raises(ValueError, match="150 classes.*num_classes=151"):
        from_checkpoint(placeholders, num_classes=151)


@pytest.mark.parametrize("path", BACKBONES, ids=lambda path: path.stem)
def test_reference_imagenet_backbone_loads(path, tmp_path):
    """The ImageNet ``resnet50s``/``resnet101s`` files (with the classifier ``fc``) as weights of the backbone."""
    fixture = read_fixture(path)
    name = path.stem.removeprefix("reference_")
    state = random_state(fixture["state_dict"])
    assert {"fc.weight", "fc.bias"} <= set(state)
    file = tmp_path / f"{name}.pth"
    torch.save(state, file)
    backbone = dilated_resnet(name, weights=file)
    loaded = backbone.state_dict()
    assert_every_tensor_used({key: value for key, value in state.items() if not key.startswith("fc.")}, loaded)
    assert torch.equal(loaded["conv1.0.weight"], state["conv1.0.weight"])
    assert torch.equal(loaded["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
