r"""The Context Encoding Module (Zhang et al., CVPR 2018, Sec. 3.2).

The module captures the global context of a scene in one vector and uses it in
two ways:

1. **Featuremap attention.** The Encoding Layer summarises the ``C``-channel
   feature map ``X`` into ``K`` residual encodings; batch norm over the codes,
   ReLU and a mean over ``k`` give the encoded semantics ``e`` (``C`` numbers).
   A fully connected layer with a sigmoid predicts one scaling factor per
   channel, :math:`\gamma = \sigma(W e)`, and the paper rescales the features
   channel-wise, :math:`Y = X \otimes \gamma`: channels of classes that are
   likely in this scene are emphasised, the others de-emphasised.

   The reference implementation returns :math:`\mathrm{ReLU}(X + X \otimes
   \gamma)` instead, a residual form: since :math:`\gamma \in (0, 1)` the
   features are scaled by :math:`1 + \gamma \in (1, 2)`, about 1.5 at
   initialisation (the attention's logits start near 0, so :math:`\gamma` near
   0.5), and no channel can be switched off entirely. This module follows the
   reference.

2. **Semantic Encoding Loss (SE-loss).** A second fully connected layer on the
   same ``e`` predicts which classes are present in the image (``se_logits``,
   one logit per class), trained with binary cross-entropy (see
   :mod:`encnet.losses`). It forces ``e`` to carry the scene's classes at a cost
   independent of object size, so small objects count as much as large ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from .encoding import Encoding


class ContextEncoding(nn.Module):
    """Context Encoding Module: ``(B, C, H, W)`` -> ``(Y, se_logits)``.

    Wiring (reference implementation):
    1x1 conv + BN + ReLU -> :class:`Encoding` (K codes) -> BatchNorm1d over the K
    codes + ReLU -> mean over K = ``e`` (B, C); ``gamma = sigmoid(Linear(e))``
    (B, C); ``Y = relu(x + x * gamma)`` (B, C, H, W); ``se_logits = Linear(e)``
    (B, num_classes), or ``None`` when ``num_classes`` is None.

    After each forward the attention ``gamma`` of that batch is kept, detached,
    in ``self.gamma`` for visualisation.
    """

    def __init__(
        self,
        channels: int,
        num_codes: int = 32,
        num_classes: int | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.reduce = Conv2dNormActivation(channels, channels, 1, norm_layer=norm_layer)
        self.encoding = Encoding(channels, num_codes)
        self.codes_norm = nn.BatchNorm1d(num_codes)
        self.attention = nn.Linear(channels, channels)
        self.se_classifier = nn.Linear(channels, num_classes) if num_classes else None
        self.gamma: Tensor | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        codes = self.encoding(self.reduce(x))  # E: (B, K, C)
        e = torch.relu(self.codes_norm(codes)).mean(1)  # encoded semantics: (B, C)
        gamma = torch.sigmoid(self.attention(e))  # (B, C)
        self.gamma = gamma.detach()
        y = torch.relu(x + x * gamma[:, :, None, None])  # (B, C, H, W)
        se_logits = self.se_classifier(e) if self.se_classifier is not None else None
        return y, se_logits
