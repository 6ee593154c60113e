"""Dilated ResNet backbones with output stride 8, built from torchvision.

EncNet (like the dilated FCN it extends) keeps the feature maps of stages 3 and 4
at 1/8 of the input size: torchvision's ResNet with
``replace_stride_with_dilation=[False, True, True]`` replaces their strides by
dilations 2 and 4. :class:`~torchvision.models._utils.IntermediateLayerGetter`
then returns the stages the heads read, all at 1/8 of the input size::

    image (B, 3, H, W)
      -> "c2" = layer2 (B, C2, H/8, W/8)   lateral path of EncNet
      -> "c3" = layer3 (B, C3, H/8, W/8)   auxiliary FCN head
      -> "c4" = layer4 (B, C4, H/8, W/8)   main head

===================  =================  ==========  ====================================
backbone             (C2, C3, C4)       parameters  stem
===================  =================  ==========  ====================================
``"resnet50"``       (512, 1024, 2048)  23.5M       7x7 conv 3->64 (torchvision)
``"resnet101"``      (512, 1024, 2048)  42.5M       7x7 conv 3->64 (torchvision)
``"resnet50s"``      (512, 1024, 2048)  23.6M       3x3 convs 3->64->64->128 (PyTorch-Encoding)
``"resnet101s"``     (512, 1024, 2048)  42.6M       3x3 convs 3->64->64->128 (PyTorch-Encoding)
``"resnet50_v1c"``   (512, 1024, 2048)  23.5M       3x3 convs 3->32->32->64 (mmsegmentation)
``"resnet101_v1c"``  (512, 1024, 2048)  42.5M       3x3 convs 3->32->32->64 (mmsegmentation)
``"small"``          (128, 256, 512)    0.51M       7x7 conv 3->64, one slim block a stage
===================  =================  ==========  ====================================

The theoretical receptive field of a c4 pixel is 427 px on ResNet-50, 971 px
on ResNet-101 (the deep stems add 4 px) and 75 px on ``"small"``; the heads'
3x3 convs add 16 px.

Deep stems. The paper's backbones are the reference implementation's
``resnet50s`` / ``resnet101s`` (PyTorch-Encoding): the 7x7 stem conv is
replaced by three 3x3 convs, 3->64 (stride 2) -> 64 -> 128, each followed by
BN + ReLU, so layer1 takes 128 channels. mmsegmentation's ResNetV1c
(``resnet50_v1c``, ``resnet101_v1c``) has the same three convs at half the
width, 3->32->32->64. Both are torchvision's ResNet with ``conv1`` replaced
by the three convs (``conv1.0``, ``conv1.3``, ``conv1.6``, with their BNs at
``conv1.1`` and ``conv1.4``; the last BN is the ResNet's own ``bn1``) and, for
the 128-channel stem, ``layer1`` rebuilt for its input width; the stages and
their dilations are untouched, so the output stride is 8 as for the others.

``"small"`` keeps the features
at 1/8 with dilation only in stage 4 (its stage 3 has a single block, which
torchvision gives the previous dilation, 1).

``"small"`` is for CPU experiments on small synthetic images: torchvision's
ResNet with one :class:`SlimBottleneck` per stage and ``width_per_group=16``,
i.e. ResNet-50's design at a quarter of its channels (the 64-channel stem
excepted) and a single block per stage. Its 75-pixel receptive field is what
lets the synthetic scenes (128 x 64) put context out of a small FCN's reach. It has no
ImageNet weights.

Pretrained weights: torchvision's weights API for ``resnet50`` / ``resnet101``
(``ResNet50_Weights``, by enum or by name); the publishers' ImageNet files for
the deep-stem backbones, by name (``"resnet50s"``, ``"resnet50_v1c"``, ...: see
:mod:`encnet.models.zoo`); all through the torch hub cache. A local file works
too, in torchvision's key layout or in the publisher's (PyTorch-Encoding's
``conv1.0.weight``..., mmsegmentation's ``stem.0.weight``..., with or without a
``state_dict`` wrapper): :func:`backbone_state_dict` converts it. That is the
way to go on a machine without internet access.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet, ResNet50_Weights, ResNet101_Weights, WeightsEnum
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck
from torchvision.ops import Conv2dNormActivation

from ..checkpoint import load_model_state, read_torch_file
from ..errors import UserError
from .zoo import published_backbone

NormLayer = Callable[[int], nn.Module]
WeightsBackbone = WeightsEnum | str | os.PathLike | None

_DEPTHS = {"50": [3, 4, 6, 3], "101": [3, 4, 23, 3]}
_STEM_WIDTHS = {"": None, "s": (64, 128), "_v1c": (32, 64)}
"""Deep stems: (width of the first two 3x3 convs, output width); None keeps torchvision's 7x7 conv."""

STAGE_CHANNELS: dict[str, dict[str, int]] = {
    **{f"resnet{depth}{variant}": {"c2": 512, "c3": 1024, "c4": 2048} for variant in _STEM_WIDTHS for depth in _DEPTHS},
    "small": {"c2": 128, "c3": 256, "c4": 512},
}
"""Channels of the stages each backbone returns."""

_IMAGENET_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "resnet50": ResNet50_Weights,
    "resnet101": ResNet101_Weights,
}


class SlimBottleneck(Bottleneck):
    """torchvision's Bottleneck without the 4x channel expansion.

    With ``width_per_group=16`` a block maps ``in -> planes/4 -> planes/4 ->
    planes`` (1x1, 3x3, 1x1 convs), where ResNet-50's maps ``in -> planes ->
    planes -> 4 planes``: the same shape at a quarter of the width.
    """

    expansion = 1


def deep_stem(width: int, out_channels: int, norm_layer: NormLayer) -> nn.Sequential:
    """Three 3x3 convs ``3 -> width (stride 2) -> width -> out_channels``, BN + ReLU between them.

    It takes the place of ResNet's 7x7 ``conv1``; the ResNet's own ``bn1`` and
    ReLU follow the last conv, as in the reference's ``resnet50s``.
    """
    return nn.Sequential(  # flat, so that the keys are the publishers' conv1.0, conv1.1, conv1.3, conv1.4, conv1.6
        *Conv2dNormActivation(3, width, 3, stride=2, norm_layer=norm_layer),
        *Conv2dNormActivation(width, width, 3, norm_layer=norm_layer),
        nn.Conv2d(width, out_channels, 3, padding=1, bias=False),
    )


def _with_deep_stem(resnet: ResNet, width: int, out_channels: int, norm_layer: NormLayer) -> ResNet:
    """Replace ``resnet``'s stem by :func:`deep_stem`; rebuild ``layer1`` if the stem's width is not 64."""
    resnet.conv1 = deep_stem(width, out_channels, norm_layer)
    resnet.bn1 = norm_layer(out_channels)
    if out_channels != resnet.layer1[0].conv1.in_channels:
        resnet.inplanes, resnet.dilation = out_channels, 1  # the state _make_layer starts layer1 from
        resnet.layer1 = resnet._make_layer(Bottleneck, 64, len(resnet.layer1))
    for module in [*resnet.conv1, resnet.bn1, *resnet.layer1.modules()]:  # torchvision's initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return resnet


def _resnet(name: str, norm_layer: NormLayer) -> ResNet:
    """A randomly initialised ResNet with strides 2 of stages 3 and 4 turned into dilations."""
    dilated = [False, True, True]
    if name == "small":
        return ResNet(
            SlimBottleneck,
            [1, 1, 1, 1],
            width_per_group=16,
            replace_stride_with_dilation=dilated,
            norm_layer=norm_layer,
        )
    depth, variant = re.fullmatch(r"resnet(50|101)(s|_v1c)?", name).groups(default="")
    resnet = ResNet(Bottleneck, _DEPTHS[depth], replace_stride_with_dilation=dilated, norm_layer=norm_layer)
    if _STEM_WIDTHS[variant] is None:
        return resnet
    return _with_deep_stem(resnet, *_STEM_WIDTHS[variant], norm_layer)


def _is_local_file(weights: WeightsBackbone) -> bool:
    """A path-like, or a string that looks like a file name rather than an enum name."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (os.sep in weights or weights.endswith((".pth", ".pt")))


def _imagenet_weights(name: str, weights: WeightsEnum | str) -> WeightsEnum:
    """Resolve ``weights`` (an enum, or a name like "IMAGENET1K_V2" or "DEFAULT") with torchvision's ``verify``."""
    if name not in _IMAGENET_WEIGHTS:
        raise UserError(
            f"the {name!r} backbone has no ImageNet weights, got weights_backbone={weights!r}; "
            "pass weights_backbone=None, or the path of a .pth state dict of this backbone"
        )
    enum = _IMAGENET_WEIGHTS[name]
    valid = ", ".join(f"{enum.__name__}.{member}" for member in enum.__members__)
    try:
        return enum.verify(weights)
    except KeyError:
        raise UserError(
            f"unknown weights {weights!r} for backbone {name!r}; valid names: {valid} (with or without "
            "the class prefix), or the path of a local .pth file"
        ) from None
    except TypeError:
        raise UserError(
            f"weights_backbone={weights!r} is not a weight of backbone {name!r}; expected one of {valid}"
        ) from None


def _download(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """The state dict of ``weights`` from the torch hub cache, downloading it if it is not there."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as error:
        raise UserError(
            f"could not download the backbone weights {weights} from {weights.url} ({error}). "
            f"Without internet access, either copy that file to {cached} (the torch hub cache; "
            "set TORCH_HOME to move it), or pass the path of a local state dict of the same "
            "torchvision ResNet as weights_backbone='/path/to/resnet.pth'"
        ) from error


def backbone_state_dict(checkpoint: dict, name: str) -> dict[str, torch.Tensor]:
    """A backbone file's tensors under torchvision's names, for :func:`dilated_resnet` ``name``.

    Reads torchvision's layout, PyTorch-Encoding's (the same names; deep stem
    ``conv1.0`` ... ``conv1.6``) and mmsegmentation's ResNetV1c (``stem.0`` ...
    ``stem.7``, the last BN being ``bn1``), with or without a ``"state_dict"``
    wrapper and a ``"backbone."`` / ``"module."`` prefix. The ImageNet classifier
    ``fc.*`` is dropped.
    """
    state = checkpoint.get("state_dict", checkpoint)
    renamed = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if key.startswith("fc."):
            continue
        if key.startswith("stem."):  # mmsegmentation: stem.{0,1,3,4,6} = conv1.*, stem.7 = bn1
            key = "bn1." + key[len("stem.7."):] if key.startswith("stem.7.") else "conv1." + key[len("stem."):]
        renamed[key] = value
    return renamed


def dilated_resnet(
    name: str, *, weights: WeightsBackbone = None, norm_layer: NormLayer = nn.BatchNorm2d
) -> IntermediateLayerGetter:
    """A dilated ResNet returning ``{"c2", "c3", "c4"}`` at 1/8 of the input size.

    Args:
        name: a key of :data:`STAGE_CHANNELS` (``"resnet50"``, ``"resnet50s"``,
            ``"resnet50_v1c"``, their 101-layer versions, ``"small"``).
        weights: None (random init); for ``resnet50`` / ``resnet101`` an ImageNet
            weights enum of torchvision (``ResNet50_Weights.IMAGENET1K_V2``) or its
            name (``"IMAGENET1K_V2"``, ``"ResNet50_Weights.IMAGENET1K_V2"``,
            ``"DEFAULT"``); for the deep-stem backbones the publisher's ImageNet
            weights by name (``"resnet50s"``, ``"resnet50_v1c"``, see
            :mod:`encnet.models.zoo`); both through the torch hub cache. Or the path
            of a local file of the same ResNet in any layout
            :func:`backbone_state_dict` reads (its ``fc`` classifier is dropped).
        norm_layer: the normalisation of every conv (``nn.BatchNorm2d``,
            ``encnet.nn.SyncBatchNorm``, ...), called with the channel count.
    """
    if name not in STAGE_CHANNELS:
        raise UserError(f"unknown backbone {name!r}; valid backbones: {', '.join(STAGE_CHANNELS)}")
    backbone = IntermediateLayerGetter(
        _resnet(name, norm_layer), return_layers={"layer2": "c2", "layer3": "c3", "layer4": "c4"}
    )
    if weights is None:
        return backbone
    if _is_local_file(weights):
        if not os.path.isfile(weights):
            raise UserError(
                f"weights_backbone={str(weights)!r} is not a file; pass the path of a .pth state dict, "
                "an ImageNet weights name (e.g. 'IMAGENET1K_V1', or 'resnet50s' for the deep-stem backbones), or None"
            )
        state_dict = read_torch_file(weights)
    elif name in _IMAGENET_WEIGHTS or name == "small":  # torchvision's enums (the small one has none)
        state_dict = _download(_imagenet_weights(name, weights))
    else:
        state_dict = published_backbone(name, weights)
    state_dict = backbone_state_dict(state_dict, name)
    load_model_state(backbone, state_dict, what=f"the weights {str(weights)!r}",
                     target=f"the {name!r} backbone", counters_optional=True,
                     hint="expected the ImageNet weights of this ResNet in torchvision's, PyTorch-Encoding's or "
                          "mmsegmentation's layout (keys like 'conv1.0.weight' or 'stem.0.weight', "
                          "'layer4.0.conv2.weight')")
    return backbone
