import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import Conv2dNormActivation

from encnet.errors import UserError
from encnet.losses import EncNetLoss
from encnet.models import (
    FCN,
    EncNet,
    SegmentationModel,
    SlimBottleneck,
    build_model,
    dilated_resnet,
    encnet_resnet50,
    encnet_resnet101,
    encnet_small,
    fcn_resnet50,
    fcn_resnet101,
    fcn_small,
    from_checkpoint,
)
from encnet.nn import ContextEncoding

NUM_CLASSES = 5


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "builder, kwargs, keys",
    [
        (fcn_small, {}, {"out", "aux"}),
        (fcn_small, {"aux": False}, {"out"}),
        (encnet_small, {}, {"out", "aux", "se"}),
        (encnet_small, {"aux": False, "se_loss": False}, {"out"}),
        (encnet_small, {"lateral": True}, {"out", "aux", "se"}),
    ],
)
def test_small_models_output_shapes(builder, kwargs, keys, training):
    model = builder(num_classes=NUM_CLASSES, **kwargs).train(training)
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 48))
    assert set(outputs) == keys
    for key in keys - {"se"}:
        assert outputs[key].shape == (2, NUM_CLASSES, 64, 48)
    if "se" in keys:
        assert outputs["se"].shape == (2, NUM_CLASSES)


def test_encnet_resnet50_output_shapes_in_eval_mode():
    model = encnet_resnet50(num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert {key: tuple(value.shape) for key, value in outputs.items()} == {
        "out": (1, NUM_CLASSES, 64, 64),
        "aux": (1, NUM_CLASSES, 64, 64),
        "se": (1, NUM_CLASSES),
    }
    assert model.head.enc_module.gamma.shape == (1, 512)


def test_gradients_reach_codewords_smoothing_and_backbone():
    torch.manual_seed(0)
    model = encnet_small(num_classes=NUM_CLASSES).train()
    mask = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    total, parts = EncNetLoss()(model(torch.randn(2, 3, 64, 64)), mask)
    assert set(parts) == {"out", "aux", "se"}
    total.backward()
    encoding = model.head.enc_module.encoding
    for name, param in [
        ("codewords", encoding.codewords),
        ("smoothing", encoding.smoothing),
        ("backbone conv1", model.backbone.conv1.weight),
    ]:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_context_module_wiring_and_parameter_count_resnet50():
    """Head of EncNet-R50 as in the reference: 2048 -> 512, K = 32, SE branch 512 -> classes."""
    num_classes, C, K = 150, 512, 32
    model = encnet_resnet50(num_classes=num_classes)
    assert isinstance(model.head.enc_module, ContextEncoding)
    expected = (
        C * C + 2 * C  # 1x1 conv + BN
        + K * C + K  # codewords, smoothing
        + 2 * K  # BN over the codes
        + C * C + C  # attention: Linear(C -> C)
        + C * num_classes + num_classes  # SE branch
    )
    assert _count(model.head.enc_module) == expected


@pytest.mark.parametrize(
    "builder, torchvision_builder",
    [(fcn_resnet50, torchvision.models.resnet50), (encnet_resnet101, torchvision.models.resnet101)],
)
def test_backbone_is_torchvision_resnet_without_classifier(builder, torchvision_builder):
    reference = torchvision_builder()
    backbone = builder(num_classes=NUM_CLASSES).backbone
    assert _count(backbone) == _count(reference) - _count(reference.fc)
    assert backbone.layer4[0].conv2.dilation == (2, 2) and backbone.layer4[1].conv2.dilation == (4, 4)


def test_small_backbone_receptive_field_is_75_pixels():
    """The documented receptive field: the input pixels one c4 pixel depends on."""
    torch.manual_seed(0)
    backbone = dilated_resnet("small").eval()
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    c4 = backbone(x)["c4"]
    assert c4.shape == (1, 512, 20, 20)
    c4[0, :, 10, 10].sum().backward()
    reached = x.grad.abs().sum((0, 1)) > 0  # (H, W)
    rows, cols = reached.any(1).nonzero().flatten(), reached.any(0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 75
    assert cols.max() - cols.min() + 1 == 75


def test_same_seed_same_output():
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = encnet_small(num_classes=NUM_CLASSES).train()
        outputs.append(model(torch.randn(2, 3, 32, 32)))
    for key in outputs[0]:
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=0, atol=0)


def test_build_model_dispatches_and_rejects_unknown_names():
    assert isinstance(build_model("fcn", "small", num_classes=3), FCN)
    model = build_model("encnet", "small", num_classes=3, se_loss=False, num_codes=8)
    assert isinstance(model, EncNet) and model.head.enc_module.encoding.num_codes == 8
    with pytest.raises(ValueError, match="valid models: fcn, encnet"):
        build_model("pspnet", "resnet50", num_classes=3)
    valid = "resnet50, resnet101, resnet50s, resnet101s, resnet50_v1c, resnet101_v1c, small"
    with pytest.raises(ValueError, match=f"valid backbones: {valid}"):
        build_model("encnet", "resnet18", num_classes=3)


def test_bad_num_classes_is_explained():
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        encnet_small(num_classes=0)


def test_builders_are_keyword_only():
    with pytest.raises(TypeError):
        fcn_small(3)


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", torchvision.models.ResNet50_Weights.IMAGENET1K_V1])
def test_offline_pretrained_weights_error_says_where_to_put_the_file(offline_hub, weights):
    hub_dir, attempts = offline_hub
    with pytest.raises(UserError) as error:
        fcn_resnet50(num_classes=NUM_CLASSES, weights_backbone=weights)
    cached = hub_dir / "checkpoints" / "resnet50-0676ba61.pth"
    message = str(error.value)
    assert str(cached) in message
    assert "weights_backbone='/path/to/resnet.pth'" in message
    assert attempts == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url]  # stopped by the fixture


def test_file_placed_in_the_hub_cache_is_loaded_without_download(offline_hub):
    hub_dir, attempts = offline_hub
    reference = torchvision.models.resnet50()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), hub_dir / "checkpoints" / "resnet50-11ad3fa6.pth")
    model = encnet_resnet50(num_classes=NUM_CLASSES, weights_backbone="ResNet50_Weights.IMAGENET1K_V2")
    assert attempts == []
    torch.testing.assert_close(model.backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)


def test_local_state_dict_is_loaded_and_its_classifier_dropped(tmp_path):
    classifier = torchvision.models.ResNet(
        SlimBottleneck, [1, 1, 1, 1], width_per_group=16, replace_stride_with_dilation=[False, True, True]
    )
    path = tmp_path / "small.pth"
    torch.save(classifier.state_dict(), path)  # includes "fc.weight", "fc.bias"
    model = fcn_small(num_classes=NUM_CLASSES, weights_backbone=path)
    for name, param in model.backbone.state_dict().items():
        torch.testing.assert_close(param, classifier.state_dict()[name], msg=name)


def test_bad_weights_are_explained(tmp_path):
    with pytest.raises(ValueError, match="has no ImageNet weights"):
        fcn_small(num_classes=NUM_CLASSES, weights_backbone="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="valid names: ResNet50_Weights.IMAGENET1K_V1"):
        fcn_resnet50(num_classes=NUM_CLASSES, weights_backbone="IMAGENET")
    with pytest.raises(UserError, match="not a weight of backbone 'resnet101'"):
        fcn_resnet101(num_classes=NUM_CLASSES, weights_backbone=torchvision.models.ResNet50_Weights.DEFAULT)
    with pytest.raises(UserError, match="is not a file"):
        fcn_small(num_classes=NUM_CLASSES, weights_backbone=tmp_path / "missing.pth")
    torch.save(fcn_small(num_classes=NUM_CLASSES).state_dict(), tmp_path / "whole_model.pth")
    with pytest.raises(ValueError, match="do not fit the 'small' backbone"):
        fcn_small(num_classes=NUM_CLASSES, weights_backbone=tmp_path / "whole_model.pth")


def _batch_norms(model: nn.Module) -> dict[str, nn.Module]:
    from encnet.nn import SyncBatchNorm

    kinds = (nn.modules.batchnorm._BatchNorm, SyncBatchNorm)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def test_norm_layer_reaches_every_2d_batch_norm():
    from encnet.nn import SyncBatchNorm

    model = encnet_small(num_classes=NUM_CLASSES, lateral=True, norm_layer=SyncBatchNorm)
    others = [name for name, m in _batch_norms(model).items() if not isinstance(m, SyncBatchNorm)]
    assert others == ["head.enc_module.codes_norm"]  # the BatchNorm1d over the codes


def test_every_batch_norm_converts_to_sync_and_back():
    from encnet.nn import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

    torch.manual_seed(0)
    model = encnet_small(num_classes=NUM_CLASSES, lateral=True).eval()
    original = _batch_norms(model)
    assert {type(m) for m in original.values()} == {nn.BatchNorm2d, nn.BatchNorm1d}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)

    synced_model = convert_sync_batchnorm(model)
    synced = _batch_norms(synced_model)
    assert synced.keys() == original.keys()
    for name, norm in synced.items():
        assert type(norm) is SyncBatchNorm, name
        assert norm.weight is original[name].weight and norm.bias is original[name].bias, name

    reverted_model = revert_sync_batchnorm(synced_model).eval()
    reverted = _batch_norms(reverted_model)
    assert reverted.keys() == original.keys()
    for name, norm in reverted.items():
        assert type(norm) is type(original[name]), name
        assert norm.weight is original[name].weight, name
    with torch.no_grad():
        outputs = reverted_model(x)
    for key in expected:
        torch.testing.assert_close(outputs[key], expected[key])


def test_state_dicts_with_the_earlier_names_still_load():
    """encnet's checkpoints before 0.1 named the Context Encoding Module ``head.encoding``."""
    torch.manual_seed(0)
    model = encnet_small(num_classes=NUM_CLASSES).eval()
    old = {key.replace("head.enc_module.", "head.encoding."): value for key, value in model.state_dict().items()}
    assert "head.encoding.encoding.codewords" in old
    loaded = from_checkpoint(old)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["out"], model(x)["out"], rtol=0, atol=0)


def test_one_base_class_for_backbone_head_and_aux():
    fcn, encnet = fcn_small(num_classes=NUM_CLASSES), encnet_small(num_classes=NUM_CLASSES, aux=False)
    assert isinstance(fcn, SegmentationModel) and isinstance(encnet, SegmentationModel)
    assert type(fcn).forward is type(encnet).forward is SegmentationModel.forward
    assert fcn.aux_head.stage == "c3" and encnet.aux_head is None
    assert isinstance(encnet.head.enc_module, ContextEncoding) and isinstance(fcn.head[0], Conv2dNormActivation)
