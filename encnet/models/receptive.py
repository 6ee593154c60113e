r"""Context by receptive field: two FCN heads that see the whole image without an Encoding Layer.

The paper asks (arXiv:1803.08904, talk slide "Is capturing contextual
information the same as increasing the receptive-field size?") whether the
Context Encoding Module does more than enlarge what each pixel sees. These two
heads are the usual ways of enlarging it, built on the same backbone and
trained with the same recipe as FCN and EncNet, so that the question can be put
as an experiment:

- ``"aspp"``: atrous spatial pyramid pooling without its image-pooling branch
  (DeepLabv3, arXiv:1706.05587): a 1x1 conv and three 3x3 convs of dilation
  ``rate``, ``2 rate`` and ``3 rate`` on c4 in parallel, concatenated and fused
  by a 1x1 conv. At output stride 8 the widest branch reaches ``3 rate x 8``
  pixels to each side (DeepLabv3's rates at output stride 8 are 12, 24, 36:
  ``rate=12``; on a 64-pixel image, ``rate=3`` reaches every pixel from every
  pixel).
- ``"pool"``: image pooling (ParseNet, arXiv:1506.04579; PSPNet's coarsest
  bin): the global average of c4, brought to the head's width by a 1x1 conv,
  is concatenated to every pixel's features, and a 3x3 conv fuses the two. Every
  pixel sees the whole image through one vector, as in EncNet, but the vector
  is an average instead of the Encoding Layer's learned dictionary, and it is
  concatenated instead of gating the channels.

Both are registered models (:mod:`encnet.models.registry`):
``build_model("aspp", "small", num_classes=17, rate=3)``, ``encnet train --model
pool``. Their width is a quarter of c4's channels, like the FCN and EncNet heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from .backbones import NormLayer
from .registry import register_model


@register_model("aspp")
class ASPPHead(nn.Module):
    """Dilated FCN with an ASPP head: 1x1 conv and 3x3 convs of dilation rate, 2 rate, 3 rate on c4."""

    def __init__(
        self, channels: dict[str, int], num_classes: int, *, norm_layer: NormLayer = nn.BatchNorm2d, rate: int = 12
    ) -> None:
        super().__init__()
        width = channels["c4"] // 4
        self.branches = nn.ModuleList(
            [Conv2dNormActivation(channels["c4"], width, 1, norm_layer=norm_layer)]
            + [Conv2dNormActivation(channels["c4"], width, 3, padding=d, dilation=d, norm_layer=norm_layer)
               for d in (rate, 2 * rate, 3 * rate)]
        )
        self.fusion = Conv2dNormActivation(4 * width, width, 1, norm_layer=norm_layer)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(width, num_classes, 1))

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        x = features["c4"]  # (B, C4, h, w)
        fused = self.fusion(torch.cat([branch(x) for branch in self.branches], dim=1))  # (B, 4C, h, w) -> (B, C, h, w)
        return {"out": self.classifier(fused)}


@register_model("pool")
class ImagePoolingHead(nn.Module):
    """Dilated FCN with image pooling: every pixel's features concatenated with the image's average feature."""

    def __init__(self, channels: dict[str, int], num_classes: int, *, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        width = channels["c4"] // 4
        self.conv = Conv2dNormActivation(channels["c4"], width, 3, norm_layer=norm_layer)
        self.image = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels["c4"], width, 1), nn.ReLU())
        self.fusion = Conv2dNormActivation(2 * width, width, 3, norm_layer=norm_layer)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(width, num_classes, 1))

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.conv(features["c4"])  # (B, C, h, w)
        image = self.image(features["c4"]).expand_as(x)  # (B, C, 1, 1) -> (B, C, h, w): the same at every pixel
        return {"out": self.classifier(self.fusion(torch.cat([x, image], dim=1)))}
