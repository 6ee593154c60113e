"""The architecture diagram of notebook 02 names what a built EncNet really holds."""

import importlib
import operator

import matplotlib.pyplot as plt
import pytest
import torch

from encnet.losses import EncNetLoss
from encnet.models import encnet_small
from encnet.teaching.diagram import ARROWS, BOXES, MODULE_FRAME, Box, draw_architecture


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return encnet_small(num_classes=5).eval()


def _package_object(name: str):
    module, qualname = name.split(":")
    return operator.attrgetter(qualname)(importlib.import_module(module))


@pytest.mark.parametrize("box", [box for box in BOXES if box.path], ids=lambda box: box.key)
def test_every_path_on_the_diagram_is_an_attribute_of_that_class_on_a_built_encnet(model, box):
    assert type(operator.attrgetter(box.path)(model)).__name__ == box.kind
    assert box.kind in box.label() and box.path.split(".")[-1] in box.label()


@pytest.mark.parametrize("box", [box for box in BOXES if box.package], ids=lambda box: box.key)
def test_every_package_name_on_the_diagram_exists(box):
    for name in box.package.split(", "):
        assert callable(_package_object(name)), name
        assert name.split(":")[1] in box.label()


def test_the_module_frame_the_stages_and_the_outputs_are_the_models(model):
    path, kind = MODULE_FRAME
    assert type(operator.attrgetter(path)(model)).__name__ == kind
    stages = {arrow.end: arrow.stage for arrow in ARROWS if arrow.stage}
    assert set(stages.values()) <= set(model.backbone.return_layers.values())
    assert stages["aux_head"] == model.aux_head.stage
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 32, 32))
    assert {arrow.output for arrow in ARROWS if arrow.output} == set(outputs)


def test_the_loss_box_states_the_default_weights_of_encnet_loss():
    loss = next(box for box in BOXES if box.key == "loss")
    defaults = EncNetLoss()
    assert f"{defaults.aux_weight} CE(aux)" in loss.what and f"{defaults.se_weight} SE-loss" in loss.what


def test_every_arrow_joins_two_boxes_and_the_figure_draws_them_all():
    keys = [box.key for box in BOXES]
    assert len(set(keys)) == len(keys)
    assert {end for arrow in ARROWS for end in (arrow.start, arrow.end)} == set(keys)
    fig = draw_architecture()
    texts = {text.get_text() for text in fig.axes[0].texts}
    assert {box.label() for box in BOXES} <= texts
    assert {arrow.label for arrow in ARROWS if arrow.label} <= texts
    plt.close(fig)


def test_a_box_inside_the_module_is_named_from_enc_module():
    box = Box("x", "what", (0, 0), "white", "head.enc_module.encoding", "Encoding")
    outside = Box("y", "what", (0, 0), "white", "head.conv", "Conv2dNormActivation", "encnet.nn:ContextEncoding")
    assert box.label() == "what\nenc_module.encoding\n(Encoding)"
    assert outside.label() == "what\nmodel.head.conv\n(Conv2dNormActivation)\nContextEncoding"
