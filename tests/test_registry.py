"""One registry of models and one of losses: a head or a loss added in one place reaches every command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import encnet.models
from encnet import losses
from encnet.__main__ import _parser, _train_config, main
from encnet.config import TrainConfig, preset
from encnet.errors import UserError
from encnet.models import build_model, from_checkpoint, get_model, list_models, load_trained, register_model, registry


@pytest.fixture
def own_registry(monkeypatch):
    """The model registry as it is, restored after the test: what a test registers does not leak."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _register_throwaway() -> type[nn.Module]:
    """What a newcomer writes to add a head: the class and its decorator, nothing else."""

    @register_model("throwaway")
    class ThrowawayHead(nn.Module):
        """A 1x1 conv to ``width`` channels, then one to the classes; an SE branch on the pooled features."""

        def __init__(self, channels, num_classes, *, norm_layer=nn.BatchNorm2d, se_loss=True, width=16):
            super().__init__()
            self.reduce = nn.Sequential(nn.Conv2d(channels["c4"], width, 1), norm_layer(width), nn.ReLU())
            self.classifier = nn.Conv2d(width, num_classes, 1)
            self.se = nn.Linear(width, num_classes) if se_loss else None

        def forward(self, features):
            x = self.reduce(features["c4"])
            outputs = {"out": self.classifier(x)}
            if self.se is not None:
                outputs["se"] = self.se(x.mean((2, 3)))
            return outputs

    return ThrowawayHead


def test_a_head_registered_in_a_test_trains_evaluates_predicts_sweeps_and_reloads(own_registry, tmp_path, capsys):
    head = _register_throwaway()
    spec = get_model("throwaway")
    assert spec.options == {"width": 16} and spec.se_branch and "throwaway" in list_models()
    run = tmp_path / "run"
    assert main(["train", "--preset", "synthetic-quick", "--model", "throwaway", "--model-options", '{"width": 8}',
                 "--out", str(run), "--no-progress"]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["config"]["model"] == "throwaway" and trained["config"]["model_options"] == {"width": 8}

    assert main(["evaluate", str(run / "checkpoint.pt"), "--workers", "0", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["mIoU"] == pytest.approx(trained["mIoU"])

    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "--weights", str(run / "checkpoint.pt"), "--out", str(tmp_path / "p"),
                 "--device", "cpu"]) == 0
    assert np.asarray(Image.open(tmp_path / "p" / "scene_labels.png")).shape == (64, 80)
    assert len(json.loads((tmp_path / "p" / "scene.json").read_text())["se_top10"]) == 10  # its SE branch

    sweep = tmp_path / "sweep" / "sweep.json"
    assert main(["sweep", "--preset", "synthetic-quick", "--model", "throwaway", "--epochs", "1",
                 "--se-weights", "0", "0.5", "--out", str(sweep)]) == 0
    runs = json.loads(sweep.read_text())["runs"]
    assert [(r["model"], r["se_weight"]) for r in runs] == [("throwaway", 0.0), ("throwaway", 0.5)]

    model = from_checkpoint(run / "checkpoint.pt")
    assert isinstance(model.head, head) and model.head.classifier.in_channels == 8 and model.publisher == "encnet"
    reference, config, _ = load_trained(run / "checkpoint.pt")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images)["out"], reference(images)["out"])
    assert model.protocol.crop_size == config.crop_size
    capsys.readouterr()


def test_options_are_read_off_the_head_and_checked(own_registry):
    _register_throwaway()
    with pytest.raises(UserError, match="'width' of throwaway must be a positive integer, got 0"):
        TrainConfig.from_dict({**preset("synthetic-quick").to_dict(), "model": "throwaway",
                               "model_options": {"width": 0}})
    config = dataclasses.replace(preset("synthetic-quick"), model="throwaway", model_options={"width": 16})
    assert config.model_options == {}  # the default is left out, so equal models compare equal
    assert "throwaway" in _parser()._subparsers._group_actions[0].choices["train"]._option_string_actions[
        "--model"].choices
    with pytest.raises(ValueError, match="a model named 'throwaway' is registered already"):
        _register_throwaway()

    def no_default(channels, num_classes, *, norm_layer=nn.BatchNorm2d, rate):
        return nn.Identity()

    with pytest.raises(TypeError, match="option 'rate' of model 'broken' needs a default"):
        register_model("broken")(no_default)
    with pytest.raises(TypeError, match=r"must take \(channels, num_classes, \*, \.\.\.\) first"):
        register_model("broken")(lambda features, classes: nn.Identity())
    assert "broken" not in list_models()


def test_the_torchvision_style_names_come_from_the_registry(own_registry):
    model = encnet.models.fcn_small(num_classes=3)
    assert isinstance(model, encnet.models.FCN) and encnet.models.fcn_small.__name__ == "fcn_small"
    _register_throwaway()
    assert isinstance(encnet.models.throwaway_small(num_classes=3, width=4).head.classifier, nn.Conv2d)
    assert "encnet_resnet101_v1c" in dir(encnet.models)
    with pytest.raises(AttributeError, match="no attribute 'pspnet_small'"):
        encnet.models.pspnet_small  # noqa: B018
    with pytest.raises(UserError, match="the fcn model has no SE branch"):
        build_model("fcn", "small", num_classes=3, se_loss=True)
    with pytest.raises(UserError, match="unknown backbone 'resnet18'; valid backbones: resnet50"):
        build_model("encnet", "resnet18", num_classes=3)


def test_the_config_names_the_loss_and_the_engine_uses_it(monkeypatch):
    calls = []

    class CountingLoss(losses.EncNetLoss):
        def __init__(self, aux_weight: float = 0.2, se_weight: float = 0.2, seed: int = -1):
            super().__init__(se_weight=se_weight, aux_weight=aux_weight)
            self.seed = seed

        def forward(self, outputs, mask, labelled=None):
            calls.append(self.seed)
            return super().forward(outputs, mask, labelled)

    monkeypatch.setattr(losses, "LOSSES", dict(losses.LOSSES))
    losses.register_loss("counting")(CountingLoss)
    config = dataclasses.replace(preset("synthetic-quick"), loss="counting", seed=3, epochs=1)
    built = losses.build_loss("counting", config)
    assert (built.seed, built.aux_weight, built.se_weight) == (3, config.aux_weight, config.se_weight)
    from encnet.engine import train

    result = train(config, progress=False)
    assert calls == [3] * 4 and result["history"][0]["loss_parts"].keys() == {"out", "aux", "se"}
    with pytest.raises(UserError, match="unknown loss 'focal'; valid losses: encnet, counting"):
        dataclasses.replace(config, loss="focal")


def test_every_config_field_has_a_flag_of_its_type():
    args = _parser().parse_args([
        "train", "--preset", "synthetic", "--momentum", "0.5", "--model-options", '{"num_codes": 8}',
        "--weights-backbone", "none", "--dropout", "0.3", "--channels-last", "--loss", "encnet",
        "--dataset-options", '{"train_samples": 64}',
    ])
    config = _train_config(args)
    assert (config.momentum, config.model_options, config.weights_backbone, config.dropout) == (0.5, {"num_codes": 8},
                                                                                               None, 0.3)
    assert config.channels_last and config.dataset_options == {"train_samples": 64}
    train = _parser()._subparsers._group_actions[0].choices["train"]
    flags = {action.dest for action in train._actions}
    assert {field.name for field in dataclasses.fields(TrainConfig)} <= flags
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--preset", "synthetic", "--model-options", "[1]"])


@pytest.mark.parametrize("model", ["fcn", "encnet"])
def test_a_seed_draws_the_initial_weights_of_the_committed_runs(model):
    """The parts are built in the order the committed runs' models were: EncNet's head first, FCN's backbone.

    Built alone after the same seed, the first part has the model's weights; the
    other order would give the second part those random numbers instead.
    """
    from encnet.models.backbones import STAGE_CHANNELS, dilated_resnet

    torch.manual_seed(0)
    whole = build_model(model, "small", num_classes=5, aux=False)
    torch.manual_seed(0)
    if model == "encnet":
        first = get_model("encnet").head(STAGE_CHANNELS["small"], 5)
        expected = whole.head
    else:
        first = dilated_resnet("small")
        expected = whole.backbone
    for (name, value), (_, built) in zip(first.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(value, built), name
