r"""Segmentation networks: the dilated FCN baseline and EncNet (Zhang et al., CVPR 2018).

Both read the stages of a dilated ResNet (:mod:`encnet.models.backbones`, all at
1/8 of the input size) and return a dict of logits upsampled bilinearly to the
input size::

    FCN:    c4 -> FCNHead                                            -> "out"
    EncNet: c4 -> 3x3 conv + BN + ReLU [-> fuse with c2, c3 (lateral)]
               -> ContextEncoding -> Y = relu(X + X * gamma) -> Dropout -> 1x1 conv -> "out"
                                  \-> se_logits                                     -> "se"
    both:   c3 -> FCNHead (auxiliary, trained with a smaller loss weight)          -> "aux"

EncNet is the FCN plus the Context Encoding Module
(:class:`encnet.nn.ContextEncoding`) and the SE-loss branch, at a small extra
cost: one 1x1 conv, the Encoding Layer and two fully connected layers on a
``C``-vector. On ResNet-50 with 150 classes that is +1.7% parameters and
+0.8% FLOPs per training step at 256x256 (``benchmarks/models.py``). The head
width is a quarter of its input (2048 -> 512 on ResNets, 512 -> 128 on the small
backbone).

Both are a :class:`SegmentationModel`: backbone + head + optional auxiliary
head, the head mapping the stages to ``{"out", "se"?}``. ``model.backbone`` is
the part that can start from ImageNet weights; everything else is the head,
trained at 10x the backbone's learning rate. Each model's own options
(:data:`MODEL_OPTIONS`: EncNet's ``lateral`` and ``num_codes``) are what
``TrainConfig.model_options`` may set.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from ..errors import UserError
from ..nn import ContextEncoding
from .backbones import STAGE_CHANNELS, NormLayer, WeightsBackbone, dilated_resnet


class FCNHead(nn.Sequential):
    """FCN head: stage ``stage`` (B, C, h, w) of the backbone -> ``{"out": (B, num_classes, h, w)}``.

    3x3 conv C -> C/4 + BN + ReLU + Dropout(0.1) + 1x1 conv C/4 -> num_classes.
    FCN's head reads "c4"; the auxiliary head of both models reads "c3".
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, stage: str = "c4", norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        channels = in_channels // 4
        super().__init__(
            Conv2dNormActivation(in_channels, channels, 3, norm_layer=norm_layer),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.stage = stage

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"out": super().forward(features[self.stage])}


class EncHead(nn.Module):
    """EncNet head: stages {"c2", "c3", "c4"} -> ``{"out": (B, classes, h, w), "se"?: (B, classes)}``.

    3x3 conv C4 -> C4/4 + BN + ReLU; with ``lateral``, 1x1 convs bring c2 and c3
    to C4/4 channels each, and a 3x3 conv fuses the three (3 C4/4 -> C4/4).
    Then the Context Encoding Module (``self.enc_module``) rescales the channels,
    ``Y = relu(X + X * gamma)``, and Dropout(0.1) + a 1x1 conv classify each pixel;
    ``"se"`` (the SE branch's logits) is there when ``se_loss``.
    """

    def __init__(
        self,
        channels: dict[str, int],
        num_classes: int,
        *,
        num_codes: int = 32,
        se_loss: bool = True,
        lateral: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = channels["c4"] // 4
        self.conv = Conv2dNormActivation(channels["c4"], width, 3, norm_layer=norm_layer)
        self.lateral = nn.ModuleDict(
            {stage: Conv2dNormActivation(channels[stage], width, 1, norm_layer=norm_layer) for stage in ("c2", "c3")}
        ) if lateral else None
        self.fusion = Conv2dNormActivation(3 * width, width, 3, norm_layer=norm_layer) if lateral else None
        self.enc_module = ContextEncoding(width, num_codes, num_classes if se_loss else None, norm_layer=norm_layer)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(width, num_classes, 1))

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.conv(features["c4"])  # (B, C, h, w)
        if self.lateral is not None:
            laterals = [conv(features[stage]) for stage, conv in self.lateral.items()]
            x = self.fusion(torch.cat([x, *laterals], dim=1))  # (B, 3C, h, w) -> (B, C, h, w)
        y, se_logits = self.enc_module(x)  # (B, C, h, w), (B, classes) or None
        outputs = {"out": self.classifier(y)}
        if se_logits is not None:
            outputs["se"] = se_logits
        return outputs


class SegmentationModel(nn.Module):
    """Backbone + head + optional auxiliary head: image (B, 3, H, W) -> ``{"out", "aux"?, "se"?}``.

    The backbone gives the stages ``{"c2", "c3", "c4"}`` (B, C_i, H/8, W/8); the
    head maps them to ``{"out": logits, ...}`` (EncNet's adds ``"se"``, (B, classes)),
    the auxiliary head to its own logits, ``"aux"``. ``"out"`` and ``"aux"`` are
    upsampled bilinearly to the input size, with ``align_corners`` False
    (torchvision, mmsegmentation) or True (PyTorch-Encoding's weights).
    ``model.backbone`` is what ImageNet weights initialise; the rest is the head.
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, aux_head: FCNHead | None = None, *, align_corners: bool = False
    ) -> None:
        super().__init__()
        self.backbone, self.head, self.aux_head = backbone, head, aux_head
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.backbone(x)  # {"c2", "c3", "c4"}: (B, C_i, H/8, W/8)
        head = self.head(features)  # {"out": (B, classes, H/8, W/8), "se"?: (B, classes)}
        outputs = {"out": self._upsample(head.pop("out"), x)}
        if self.aux_head is not None:
            outputs["aux"] = self._upsample(self.aux_head(features)["out"], x)
        return {**outputs, **head}

    def _upsample(self, logits: Tensor, x: Tensor) -> Tensor:
        """Bilinear upsampling of (B, classes, h, w) logits to the size of ``x``."""
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


class FCN(SegmentationModel):
    """Dilated FCN: an :class:`FCNHead` on c4 (``"out"``), another on c3 (``"aux"``)."""


class EncNet(SegmentationModel):
    """EncNet: an :class:`EncHead` (``"out"``, ``"se"``), an auxiliary :class:`FCNHead` on c3 (``"aux"``).

    The Context Encoding Module is ``self.head.enc_module``, its Encoding Layer
    ``self.head.enc_module.encoding``; its last attention ``gamma`` (B, C) is
    ``self.head.enc_module.gamma``.
    """


def _channels(backbone: str, num_classes: int) -> dict[str, int]:
    """The stage channels of ``backbone``, after checking ``num_classes``."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(
            f"num_classes must be a positive int, got {num_classes!r}; "
            "use the dataset's num_classes (e.g. 150 for ADE20K, 59 for PASCAL-Context)"
        )
    return STAGE_CHANNELS[backbone]


def _fcn(
    backbone: str,
    *,
    num_classes: int,
    weights_backbone: WeightsBackbone = None,
    aux: bool = True,
    norm_layer: NormLayer = nn.BatchNorm2d,
    align_corners: bool = False,
) -> FCN:
    channels = _channels(backbone, num_classes)
    return FCN(
        dilated_resnet(backbone, weights=weights_backbone, norm_layer=norm_layer),
        FCNHead(channels["c4"], num_classes, norm_layer=norm_layer),
        FCNHead(channels["c3"], num_classes, stage="c3", norm_layer=norm_layer) if aux else None,
        align_corners=align_corners,
    )


def _encnet(
    backbone: str,
    *,
    num_classes: int,
    weights_backbone: WeightsBackbone = None,
    aux: bool = True,
    se_loss: bool = True,
    lateral: bool = False,
    num_codes: int = 32,
    norm_layer: NormLayer = nn.BatchNorm2d,
    align_corners: bool = False,
) -> EncNet:
    channels = _channels(backbone, num_classes)
    head = EncHead(
        channels, num_classes, num_codes=num_codes, se_loss=se_loss, lateral=lateral, norm_layer=norm_layer
    )
    return EncNet(
        dilated_resnet(backbone, weights=weights_backbone, norm_layer=norm_layer),
        head,
        FCNHead(channels["c3"], num_classes, stage="c3", norm_layer=norm_layer) if aux else None,
        align_corners=align_corners,
    )


def fcn_resnet50(**kwargs) -> FCN:
    """Dilated FCN on ResNet-50 (output stride 8), the paper's baseline.

    Keyword arguments (the same for every FCN builder):
        num_classes: classes per pixel (required).
        weights_backbone: None, ImageNet weights of the backbone (for ResNet-50 a
            torchvision enum or name, e.g. ``"IMAGENET1K_V1"``; for the deep-stem
            backbones the publisher's name, e.g. ``"resnet50s"``) or a local file.
        aux: add the auxiliary FCN head on stage 3 (output ``"aux"``); default True.
        norm_layer: every BatchNorm2d of the model (``encnet.nn.SyncBatchNorm`` for multi-GPU).
        align_corners: of the final bilinear upsampling; default False.
    """
    return _fcn("resnet50", **kwargs)


def fcn_resnet101(**kwargs) -> FCN:
    """Dilated FCN on ResNet-101 (output stride 8). Arguments as :func:`fcn_resnet50`."""
    return _fcn("resnet101", **kwargs)


def fcn_small(**kwargs) -> FCN:
    """Dilated FCN on the small CPU backbone (1.3M parameters in all for 17 to 150 classes).

    The receptive field of an output pixel is 91 px: 75 px of the backbone plus
    the head's 3x3 conv at stride 8.

    Arguments as :func:`fcn_resnet50`; there are no ImageNet weights for this
    backbone, only a local state dict.
    """
    return _fcn("small", **kwargs)


def encnet_resnet50(**kwargs) -> EncNet:
    """EncNet on a dilated ResNet-50 (output stride 8).

    Keyword arguments (the same for every EncNet builder): those of
    :func:`fcn_resnet50`, and
        se_loss: add the SE branch (output ``"se"``, one logit per class); default True.
        lateral: fuse stages 2 and 3 into the head (used on PASCAL datasets); default False.
        num_codes: codewords ``K`` of the Encoding Layer; default 32.
    (``lateral`` and ``num_codes`` are the head options of :data:`MODEL_OPTIONS`.)
    The BatchNorm1d over the codes is converted by ``encnet.nn.convert_sync_batchnorm``.
    """
    return _encnet("resnet50", **kwargs)


def encnet_resnet101(**kwargs) -> EncNet:
    """EncNet on a dilated ResNet-101 (output stride 8). Arguments as :func:`encnet_resnet50`."""
    return _encnet("resnet101", **kwargs)


def encnet_small(**kwargs) -> EncNet:
    """EncNet on the small CPU backbone (head width 128, 1.3M parameters in all for 17 to 150 classes).

    Each pixel sees 91 px through its convolutions, and the whole image through
    the Context Encoding Module.

    Arguments as :func:`encnet_resnet50`; there are no ImageNet weights for this
    backbone, only a local state dict.
    """
    return _encnet("small", **kwargs)


def fcn_resnet50s(**kwargs) -> FCN:
    """Dilated FCN on ResNet-50s, the reference's deep-stem backbone (the paper's).

    Arguments as :func:`fcn_resnet50`.
    """
    return _fcn("resnet50s", **kwargs)


def fcn_resnet101s(**kwargs) -> FCN:
    """Dilated FCN on ResNet-101s (deep stem). Arguments as :func:`fcn_resnet50`."""
    return _fcn("resnet101s", **kwargs)


def fcn_resnet50_v1c(**kwargs) -> FCN:
    """Dilated FCN on mmsegmentation's ResNetV1c-50 (stem 3->32->32->64). Arguments as :func:`fcn_resnet50`."""
    return _fcn("resnet50_v1c", **kwargs)


def fcn_resnet101_v1c(**kwargs) -> FCN:
    """Dilated FCN on mmsegmentation's ResNetV1c-101. Arguments as :func:`fcn_resnet50`."""
    return _fcn("resnet101_v1c", **kwargs)


def encnet_resnet50s(**kwargs) -> EncNet:
    """EncNet on ResNet-50s, the reference's deep-stem backbone (the paper's). Arguments as :func:`encnet_resnet50`."""
    return _encnet("resnet50s", **kwargs)


def encnet_resnet101s(**kwargs) -> EncNet:
    """EncNet on ResNet-101s (deep stem). Arguments as :func:`encnet_resnet50`."""
    return _encnet("resnet101s", **kwargs)


def encnet_resnet50_v1c(**kwargs) -> EncNet:
    """EncNet on mmsegmentation's ResNetV1c-50 (stem 3->32->32->64). Arguments as :func:`encnet_resnet50`."""
    return _encnet("resnet50_v1c", **kwargs)


def encnet_resnet101_v1c(**kwargs) -> EncNet:
    """EncNet on mmsegmentation's ResNetV1c-101. Arguments as :func:`encnet_resnet50`."""
    return _encnet("resnet101_v1c", **kwargs)


_BUILDERS: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "fcn": {
        "resnet50": fcn_resnet50, "resnet101": fcn_resnet101, "resnet50s": fcn_resnet50s,
        "resnet101s": fcn_resnet101s, "resnet50_v1c": fcn_resnet50_v1c,
        "resnet101_v1c": fcn_resnet101_v1c, "small": fcn_small,
    },
    "encnet": {
        "resnet50": encnet_resnet50, "resnet101": encnet_resnet101, "resnet50s": encnet_resnet50s,
        "resnet101s": encnet_resnet101s, "resnet50_v1c": encnet_resnet50_v1c,
        "resnet101_v1c": encnet_resnet101_v1c, "small": encnet_small,
    },
}
MODELS = tuple(_BUILDERS)
"""The model names :func:`build_model` accepts."""


def _defaults(builder: Callable[..., nn.Module], names: tuple[str, ...]) -> dict[str, Any]:
    parameters = inspect.signature(builder).parameters
    return {name: parameters[name].default for name in names}


MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "fcn": {},
    "encnet": _defaults(_encnet, ("lateral", "num_codes")),
}
"""Each model's head options and their defaults: what ``TrainConfig.model_options`` may set.

A new head adds its builders to ``_BUILDERS``, its options here and, if it has
an SE branch (it takes ``se_loss`` and is trained with the SE-loss), its name to
:data:`SE_BRANCH`; training, the config and the command line read these.
"""

SE_BRANCH: frozenset[str] = frozenset({"encnet"})
"""The models with an SE branch: built with ``se_loss=se_weight > 0``."""


def check_model_options(model: str, options: dict[str, Any]) -> None:
    """Raise :class:`UserError` unless ``options`` are head options of ``model`` with valid values.

    A flag (default True or False) must be a bool, a count (default an int) a positive int.
    """
    valid = MODEL_OPTIONS[model]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(
            f"model_options {unknown} are not options of the {model} model (its options: "
            f"{', '.join(valid) or 'none'}); they may come with a preset of another model: start from a "
            f"preset of {model}, or leave them out"
        )
    for name, value in options.items():
        flag = isinstance(valid[name], bool)
        if flag and not isinstance(value, bool):
            raise UserError(f"model_options {name!r} of {model} must be true or false, got {value!r}")
        if not flag and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"model_options {name!r} of {model} must be a positive integer, got {value!r}")


def build_model(model: str, backbone: str, **kwargs) -> SegmentationModel:
    """``build_model("encnet", "resnet50", num_classes=150)`` = ``encnet_resnet50(num_classes=150)``.

    ``model`` is one of :data:`MODELS` ("fcn", "encnet"), ``backbone`` one of
    :data:`encnet.models.STAGE_CHANNELS` ("resnet50", "resnet50s", "resnet50_v1c",
    their 101-layer versions, "small"); ``kwargs`` go to the builder.
    """
    if model not in _BUILDERS:
        raise UserError(f"unknown model {model!r}; valid models: {', '.join(_BUILDERS)}")
    if backbone not in _BUILDERS[model]:
        raise UserError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(_BUILDERS[model])}")
    return _BUILDERS[model][backbone](**kwargs)
