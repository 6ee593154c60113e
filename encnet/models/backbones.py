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

===============  =================  ==========  =====================
backbone         (C2, C3, C4)       parameters  receptive field of c4
===============  =================  ==========  =====================
``"resnet50"``   (512, 1024, 2048)  23.5M       427 px
``"resnet101"``  (512, 1024, 2048)  42.5M       971 px
``"small"``      (128, 256, 512)    0.51M       75 px
===============  =================  ==========  =====================

The receptive field is the theoretical one (the input pixels a c4 pixel can
depend on); the heads' 3x3 convs add 16 px. ``"small"`` keeps the features
at 1/8 with dilation only in stage 4 (its stage 3 has a single block, which
torchvision gives the previous dilation, 1).

``"small"`` is for CPU experiments on small synthetic images: torchvision's
ResNet with one :class:`SlimBottleneck` per stage and ``width_per_group=16``,
i.e. ResNet-50's design at a quarter of its channels (the 64-channel stem
excepted) and a single block per stage. Its 75-pixel receptive field is what
lets a synthetic scene put context out of a small FCN's reach. It has no
ImageNet weights.

Pretrained weights go through torchvision's weights API (``ResNet50_Weights``,
by enum or by name) and its torch hub cache; a local ``.pth`` state dict works
too, which is the way to go on a machine without internet access.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet, ResNet50_Weights, ResNet101_Weights, WeightsEnum
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck

NormLayer = Callable[[int], nn.Module]
WeightsBackbone = Union[WeightsEnum, str, os.PathLike, None]

STAGE_CHANNELS: dict[str, dict[str, int]] = {
    "resnet50": {"c2": 512, "c3": 1024, "c4": 2048},
    "resnet101": {"c2": 512, "c3": 1024, "c4": 2048},
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
    blocks = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}[name]
    return ResNet(Bottleneck, blocks, replace_stride_with_dilation=dilated, norm_layer=norm_layer)


def _is_local_file(weights: WeightsBackbone) -> bool:
    """A path-like, or a string that looks like a file name rather than an enum name."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (os.sep in weights or weights.endswith((".pth", ".pt")))


def _imagenet_weights(name: str, weights: WeightsEnum | str) -> WeightsEnum:
    """Resolve ``weights`` (an enum, or a name like "IMAGENET1K_V2" or "DEFAULT") for backbone ``name``."""
    if name not in _IMAGENET_WEIGHTS:
        raise ValueError(
            f"the {name!r} backbone has no ImageNet weights, got weights_backbone={weights!r}; "
            "pass weights_backbone=None, or the path of a .pth state dict of this backbone"
        )
    enum = _IMAGENET_WEIGHTS[name]
    valid = [f"{enum.__name__}.{member.name}" for member in enum] + [f"{enum.__name__}.DEFAULT"]
    if isinstance(weights, str):
        member = weights.removeprefix(enum.__name__ + ".")
        if member not in enum.__members__:
            raise ValueError(
                f"unknown weights {weights!r} for backbone {name!r}; valid names: {', '.join(valid)} "
                "(with or without the class prefix), or the path of a local .pth file"
            )
        return enum[member]
    if not isinstance(weights, enum):
        raise TypeError(
            f"weights_backbone={weights!r} is not a weight of backbone {name!r}; "
            f"expected one of {', '.join(valid)}"
        )
    return weights


def _download(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """The state dict of ``weights`` from the torch hub cache, downloading it if it is not there."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as error:
        raise RuntimeError(
            f"could not download the backbone weights {weights} from {weights.url} ({error}). "
            f"Without internet access, either copy that file to {cached} (the torch hub cache; "
            "set TORCH_HOME to move it), or pass the path of a local state dict of the same "
            "torchvision ResNet as weights_backbone='/path/to/resnet.pth'"
        ) from error


def _load_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights_backbone={str(path)!r} is not a file; pass the path of a .pth state dict, "
            "an ImageNet weights enum or name (e.g. 'IMAGENET1K_V1'), or None"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def dilated_resnet(
    name: str, *, weights: WeightsBackbone = None, norm_layer: NormLayer = nn.BatchNorm2d
) -> IntermediateLayerGetter:
    """A dilated ResNet returning ``{"c2", "c3", "c4"}`` at 1/8 of the input size.

    Args:
        name: ``"resnet50"``, ``"resnet101"`` or ``"small"`` (see :data:`STAGE_CHANNELS`).
        weights: None (random init); an ImageNet weights enum of torchvision
            (``ResNet50_Weights.IMAGENET1K_V2``) or its name (``"IMAGENET1K_V2"``,
            ``"ResNet50_Weights.IMAGENET1K_V2"``, ``"DEFAULT"``), loaded through the
            torch hub cache; or the path of a local ``.pth`` state dict of the
            same ResNet (its ``fc`` classifier, if present, is dropped).
        norm_layer: the normalisation of every conv (``nn.BatchNorm2d``,
            ``encnet.nn.SyncBatchNorm``, ...), called with the channel count.
    """
    if name not in STAGE_CHANNELS:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(STAGE_CHANNELS)}")
    backbone = IntermediateLayerGetter(
        _resnet(name, norm_layer), return_layers={"layer2": "c2", "layer3": "c3", "layer4": "c4"}
    )
    if weights is None:
        return backbone
    if _is_local_file(weights):
        state_dict = _load_file(weights)
    else:
        state_dict = _download(_imagenet_weights(name, weights))
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
    try:
        backbone.load_state_dict(state_dict)
    except RuntimeError as error:
        raise RuntimeError(
            f"the weights {weights!r} do not fit the {name!r} backbone: {error}. Expected a state "
            f"dict of torchvision's {name} ResNet (keys like 'conv1.weight', 'layer4.0.conv2.weight')"
        ) from error
    return backbone
