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
trained at 10x the backbone's learning rate. Each head is registered once
(:mod:`encnet.models.registry`); its keyword options (EncNet's ``lateral`` and
``num_codes``) are what ``TrainConfig.model_options`` may set, and
:func:`build_model` builds any registered model on any backbone.

On the small CPU backbone (1.3M parameters in all for 17 to 150 classes), the
receptive field of an FCN output pixel is 91 px: 75 px of the backbone plus the
head's 3x3 conv at stride 8 (the bilinear upsampling of the logits adds a few:
``encnet.teaching.receptive.row_reach`` measures up to 56 rows above a pixel);
EncNet's pixels see the same window through their convolutions, and the whole
image through the Context Encoding Module.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from ..errors import UserError
from ..nn import ContextEncoding
from .backbones import STAGE_CHANNELS, NormLayer, WeightsBackbone, dilated_resnet
from .registry import check_model_options, get_model, register_model


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


@register_model("fcn", model_class=FCN)
def fcn_head(channels: dict[str, int], num_classes: int, *, norm_layer: NormLayer = nn.BatchNorm2d) -> FCNHead:
    """Dilated FCN, the paper's baseline: an :class:`FCNHead` on c4."""
    return FCNHead(channels["c4"], num_classes, norm_layer=norm_layer)


register_model("encnet", model_class=EncNet, head_first=True)(EncHead)


def build_model(
    model: str,
    backbone: str,
    *,
    num_classes: int,
    weights_backbone: WeightsBackbone = None,
    aux: bool = True,
    norm_layer: NormLayer = nn.BatchNorm2d,
    align_corners: bool = False,
    **options: Any,
) -> SegmentationModel:
    """The registered ``model`` on a dilated ``backbone``: ``build_model("encnet", "resnet50s", num_classes=150)``.

    Args:
        model: a name of :func:`encnet.models.list_models` ("fcn", "encnet", ...).
        backbone: one of :data:`encnet.models.STAGE_CHANNELS` ("resnet50", "resnet50s",
            "resnet50_v1c", their 101-layer versions, "small").
        num_classes: classes per pixel.
        weights_backbone: None, ImageNet weights of the backbone (for ResNet-50/101 a
            torchvision enum or name, e.g. ``"IMAGENET1K_V1"``; for the deep-stem
            backbones the publisher's name, e.g. ``"resnet50s"``) or a local file.
        aux: add the auxiliary FCN head on stage 3 (output ``"aux"``).
        norm_layer: every BatchNorm2d of the model (``encnet.nn.SyncBatchNorm`` for multi-GPU).
        align_corners: of the final bilinear upsampling.
        options: the head's own options (``get_model(model).options``: EncNet's
            ``lateral`` and ``num_codes``), and ``se_loss`` for a head with an SE branch.

    ``encnet.models.encnet_resnet50s(num_classes=150)`` and the other
    ``<model>_<backbone>`` names, torchvision's style, are this function with its
    first two arguments given.
    """
    spec = get_model(model)
    if backbone not in STAGE_CHANNELS:
        raise UserError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(STAGE_CHANNELS)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(
            f"num_classes must be a positive int, got {num_classes!r}; "
            "use the dataset's num_classes (e.g. 150 for ADE20K, 59 for PASCAL-Context)"
        )
    if "se_loss" in options and not spec.se_branch:
        raise UserError(f"the {model} model has no SE branch, so no se_loss option; leave it out")
    check_model_options(model, {name: value for name, value in options.items() if name != "se_loss"})
    channels = STAGE_CHANNELS[backbone]
    make_head = functools.partial(spec.head, channels, num_classes, norm_layer=norm_layer, **options)
    make_backbone = functools.partial(dilated_resnet, backbone, weights=weights_backbone, norm_layer=norm_layer)
    # The order decides which random numbers each part's initial weights draw (ModelSpec.head_first).
    if spec.head_first:
        head = make_head()
        trunk = make_backbone()
    else:
        trunk = make_backbone()
        head = make_head()
    return spec.model_class(
        trunk,
        head,
        FCNHead(channels["c3"], num_classes, stage="c3", norm_layer=norm_layer) if aux else None,
        align_corners=align_corners,
    )
