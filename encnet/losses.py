r"""Losses of EncNet: per-pixel cross-entropy plus the Semantic Encoding Loss.

The total loss of a segmentation network with an auxiliary head and the SE branch:

.. math::

    L = \mathrm{CE}(\text{out}, y) + \lambda_{aux}\, \mathrm{CE}(\text{aux}, y)
        + \alpha\, \mathrm{BCE}(\sigma(\text{se}), t),

where :math:`t_c = 1` when class :math:`c` appears anywhere in the image's
ground truth :math:`y` (pixels labelled ``ignore_index`` count as no class).
Reference defaults: :math:`\alpha = 0.2` (``se_weight``), :math:`\lambda_{aux} = 0.2`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def se_target(mask: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Which classes each image contains: (B, H, W) labels -> (B, num_classes) 0/1 floats.

    Raises ValueError for a label outside ``[0, num_classes)`` that is not ``ignore_index``.
    """
    if mask.dim() < 2:
        raise ValueError(f"se_target expects a (B, H, W) mask, got shape {tuple(mask.shape)}")
    labels = mask.flatten(1).long()  # (B, HW)
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(
            f"mask holds label {labels[bad][0].item()}, outside [0, {num_classes}) and not the "
            f"ignore index {ignore_index}; check num_classes or the dataset's label mapping"
        )
    # Scatter into one extra column that collects the ignored pixels, then drop it.
    present = torch.zeros(labels.size(0), num_classes + 1, device=mask.device)
    present.scatter_(1, torch.where(valid, labels, num_classes), 1.0)
    return present[:, :num_classes]


class EncNetLoss(nn.Module):
    """``CE(out) + aux_weight * CE(aux) + se_weight * BCE(se)`` from a model's output dict.

    ``loss(outputs, mask)`` takes the dict a segmentation model returns (``"out"``
    (B, K, H, W); optional ``"aux"`` (B, K, H, W) and ``"se"`` (B, K) logits) and the
    (B, H, W) int64 mask, and returns ``(total, parts)``: ``parts`` maps each term
    present ("out", "aux", "se") to its unweighted value, detached.
    """

    def __init__(self, se_weight: float = 0.2, aux_weight: float = 0.2, ignore_index: int = 255) -> None:
        super().__init__()
        self.se_weight, self.aux_weight, self.ignore_index = se_weight, aux_weight, ignore_index

    def forward(self, outputs: dict[str, Tensor], mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if "out" not in outputs:
            raise KeyError(f"EncNetLoss needs the model's 'out' logits, got keys {sorted(outputs)}")
        parts = {"out": F.cross_entropy(outputs["out"], mask, ignore_index=self.ignore_index)}
        total = parts["out"]
        if "aux" in outputs:
            parts["aux"] = F.cross_entropy(outputs["aux"], mask, ignore_index=self.ignore_index)
            total = total + self.aux_weight * parts["aux"]
        if "se" in outputs:
            target = se_target(mask, outputs["se"].size(1), self.ignore_index)
            parts["se"] = F.binary_cross_entropy_with_logits(outputs["se"], target.to(outputs["se"].dtype))
            total = total + self.se_weight * parts["se"]
        return total, {name: value.detach() for name, value in parts.items()}
