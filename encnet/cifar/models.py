r"""The CIFAR-10 family of the paper's recognition experiment (14 layers, 10 classes).

The paper shows that the Encoding Layer helps image classification too: a
14-layer ResNet whose blocks are gated by an Encoding Layer ("EncNet 16k64d",
3.5M parameters, 3.96% error) beats the same network with squeeze-excitation
gates ("SE-ResNet 64d", 2.8M, 4.65%) and without gates ("ResNet 64d", 2.7M,
4.93%).

Network (``w`` = width, 64 for "64d"), 13 3x3 convs and one linear layer::

    image (B, 3, 32, 32) -> 3x3 conv 3 -> w + BN + ReLU
      -> 2 blocks, w channels, 32x32 -> 2 blocks, 2w, 16x16 -> 2 blocks, 4w, 8x8
      -> BN + ReLU -> global (8x8) average pool -> Linear(4w -> 10) -> logits (B, 10)

Block: ``relu(gate(BN(conv3x3(relu(BN(conv3x3(x)))))) + shortcut(x))``, the
shortcut being a 1x1 conv + BN when the shape changes. The gate rescales the
channels, ``gate(X) = X \otimes \gamma``:

- ResNet: no gate;
- SE-ResNet: ``gamma = sigmoid(W_2 relu(W_1 avgpool(X)))``, reduction 4
  (torchvision's :class:`~torchvision.ops.SqueezeExcitation`);
- EncNet (:class:`EncodingGate`): ``gamma = sigmoid(W normalize(E))`` with ``E``
  the ``K x C/4`` encoding of the reduced feature map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation

from ..nn import Encoding, EncodingDrop

Gate = Callable[[int], nn.Module]


class EncodingGate(nn.Module):
    r"""Channel gate from an Encoding Layer: (B, C, H, W) -> X \otimes gamma, same shape.

    1x1 conv C -> C/4 + BN + ReLU -> Encoding (K codes of C/4) -> flatten to
    K C/4 -> L2 normalise -> Linear(K C/4 -> C) -> sigmoid = ``gamma`` (B, C).
    With ``dropout_encoding`` the Encoding Layer is :class:`encnet.nn.EncodingDrop`
    (smoothing re-drawn in training, fixed at the mean at test).
    """

    def __init__(self, channels: int, *, num_codes: int, dropout_encoding: bool = False) -> None:
        super().__init__()
        reduced = channels // 4
        self.reduce = Conv2dNormActivation(channels, reduced, 1)
        self.encoding = (EncodingDrop if dropout_encoding else Encoding)(reduced, num_codes)
        self.attention = nn.Linear(num_codes * reduced, channels)

    def forward(self, x: Tensor) -> Tensor:
        codes = self.encoding(self.reduce(x))  # E: (B, K, C/4)
        e = F.normalize(codes.flatten(1), dim=1)  # (B, K C/4), unit L2 norm
        gamma = self.attention(e).sigmoid()  # (B, C)
        return x * gamma[:, :, None, None]


class GatedBlock(nn.Module):
    """Basic residual block with a channel gate: (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, gate: Gate | None) -> None:
        super().__init__()
        self.residual = nn.Sequential(  # conv + BN + ReLU, conv + BN (flat: keys 0, 1, 3, 4)
            *Conv2dNormActivation(in_channels, out_channels, 3, stride=stride),
            *Conv2dNormActivation(out_channels, out_channels, 3, activation_layer=None),
        )
        self.gate = gate(out_channels) if gate is not None else nn.Identity()
        self.shortcut = (
            Conv2dNormActivation(in_channels, out_channels, 1, stride=stride, activation_layer=None)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.gate(self.residual(x)) + self.shortcut(x))


class CifarNet(nn.Module):
    """The 14-layer CIFAR-10 network: (B, 3, 32, 32) -> logits (B, 10)."""

    def __init__(self, *, width: int, gate: Gate | None) -> None:
        super().__init__()
        if not isinstance(width, int) or width < 4 or width % 4:
            raise ValueError(
                f"width must be a positive multiple of 4 (the gates reduce channels by 4), got {width!r}; "
                "the paper uses 64 ('64d') and 128 ('128d')"
            )
        widths = [width, 2 * width, 4 * width]
        self.stem = Conv2dNormActivation(3, width, 3)
        blocks = []
        for stage, (in_channels, out_channels) in enumerate(zip([width, *widths[:-1]], widths)):
            stride = 1 if stage == 0 else 2
            blocks.append(GatedBlock(in_channels, out_channels, stride=stride, gate=gate))
            blocks.append(GatedBlock(out_channels, out_channels, stride=1, gate=gate))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(widths[-1], 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))  # (B, 4w, 8, 8) for 32x32 images
        return self.classifier(self.head(x))  # (B, 10)


def cifar_resnet(*, width: int = 64) -> CifarNet:
    """ResNet baseline, no gate ("ResNet 64d": 2.7M parameters in the paper)."""
    return CifarNet(width=width, gate=None)


def cifar_se_resnet(*, width: int = 64) -> CifarNet:
    """SE-ResNet baseline, squeeze-excitation gates with reduction 4 ("Se-ResNet 64d": 2.8M)."""
    return CifarNet(width=width, gate=lambda channels: SqueezeExcitation(channels, channels // 4))


def cifar_encnet(*, num_codes: int = 16, width: int = 64, dropout_encoding: bool = False) -> CifarNet:
    """EncNet, Encoding Layer gates with ``num_codes`` codewords.

    "EncNet 16k64d" (``num_codes=16, width=64``): 3.5M parameters;
    "32k128d" (``num_codes=32, width=128``): 16.8M. The best model of the
    paper used ``dropout_encoding=True``.
    """
    if not isinstance(num_codes, int) or num_codes < 1:
        raise ValueError(f"num_codes must be a positive int, got {num_codes!r}; the paper uses 16 or 32")
    return CifarNet(
        width=width,
        gate=lambda channels: EncodingGate(channels, num_codes=num_codes, dropout_encoding=dropout_encoding),
    )
