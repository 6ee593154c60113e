r"""Losses of EncNet: per-pixel cross-entropy plus the Semantic Encoding Loss.

The total loss of a segmentation network with an auxiliary head and the SE branch:

.. math::

    L = \mathrm{CE}(\text{out}, y) + \lambda_{aux}\, \mathrm{CE}(\text{aux}, y)
        + \alpha\, \mathrm{BCE}(\sigma(\text{se}), t),

where :math:`t_c = 1` when class :math:`c` appears anywhere in the image's
ground truth :math:`y` (pixels labelled ``ignore_index`` count as no class).
Reference defaults: :math:`\alpha = 0.2` (``se_weight``), :math:`\lambda_{aux} = 0.2`.

The cross-entropy is the mean over the *labelled* pixels of the batch,

.. math::

    \mathrm{CE}(z, y) = \frac{1}{N} \sum_{i:\, y_i \ne \text{ignore}} -\log \mathrm{softmax}(z_i)_{y_i},
    \qquad N = |\{i : y_i \ne \text{ignore}\}|,

and a batch with no labelled pixel (:math:`N = 0`, an empty sum) contributes 0.
With several processes (DistributedDataParallel), :math:`N` counts the labelled
pixels of the *global* batch (:func:`global_labelled`), so the gradient is the
one a single process computes on the whole batch, however the ignored pixels
fall on the ranks. The SE term is the mean over images (and classes) of the
binary cross-entropy; every image has a target, labelled pixels or not.

How this differs from the two public implementations:

- The reference (PyTorch-Encoding) uses ``torch.nn.CrossEntropyLoss(ignore_index=...)``,
  the mean over each process's own labelled pixels: ``0 / 0 = NaN`` for a crop
  or a per-GPU batch with none (common on PASCAL-Context, whose background is
  ignored), and under DDP, which averages the ranks' gradients, a pixel on a
  rank with few labelled pixels weighs more than one on a rank with many.
- mmsegmentation's cross-entropy by default (``avg_non_ignore=False``) divides
  the sum by *all* pixels, ignored ones included: never NaN, but the loss, and
  so the effective learning rate, shrinks with the share of ignored pixels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import labelled_pixels


def se_target(mask: Tensor, num_classes: int, ignore_index: int = 255, *, check: bool = True) -> Tensor:
    """Which classes each image contains: (B, H, W) labels -> (B, num_classes) 0/1 floats.

    Raises UserError for a label outside ``[0, num_classes)`` that is not ``ignore_index`` (unless ``check`` is
    False: the caller has checked the labels).
    """
    if mask.dim() < 2:
        raise ValueError(f"se_target expects a (B, H, W) mask, got shape {tuple(mask.shape)}")
    labels = mask.flatten(1).long()  # (B, HW)
    valid = labelled_pixels(labels, num_classes, ignore_index) if check else labels != ignore_index
    # Scatter into one extra column that collects the ignored pixels, then drop it.
    present = torch.zeros(labels.size(0), num_classes + 1, device=mask.device)
    present.scatter_(1, torch.where(valid, labels, num_classes), 1.0)
    return present[:, :num_classes]


def global_labelled(mask: Tensor, ignore_index: int = 255) -> Tensor:
    """Labelled pixels of the global batch: this process's count, summed over the process group.

    An int64 scalar on ``mask``'s device; without a process group, this mask's
    own count. Every rank must call it (it is an all-reduce).
    """
    count = (mask != ignore_index).sum()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count)
    return count


LOSSES: dict[str, type[nn.Module]] = {}
"""The training losses by name: what ``TrainConfig.loss`` names. Add one with :func:`register_loss`."""


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register the decorated loss class as ``name`` in :data:`LOSSES`.

    A loss is called as ``loss(outputs, mask, labelled=...)`` with a model's
    output dict, and returns ``(total, parts)``: ``parts`` maps each term to its
    unweighted value, detached (the training log records them). Its constructor's
    arguments are filled from the ``TrainConfig`` fields of the same names
    (:func:`build_loss`), so a loss with new settings adds them to the config.
    """

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if name in LOSSES:
            raise ValueError(f"a loss named {name!r} is registered already ({LOSSES[name].__qualname__})")
        LOSSES[name] = cls
        return cls

    return register


def build_loss(name: str, settings: Any) -> nn.Module:
    """The loss ``name`` of :data:`LOSSES`, its constructor's arguments read from ``settings``' attributes.

    ``settings`` is a ``TrainConfig``; a constructor argument it lacks keeps its default.
    """
    cls = LOSSES[name]
    names = [p.name for p in inspect.signature(cls).parameters.values() if hasattr(settings, p.name)]
    return cls(**{name: getattr(settings, name) for name in names})


@register_loss("encnet")
class EncNetLoss(nn.Module):
    """``CE(out) + aux_weight * CE(aux) + se_weight * BCE(se)`` from a model's output dict.

    ``loss(outputs, mask)`` takes the dict a segmentation model returns (``"out"``
    (B, K, H, W); optional ``"aux"`` (B, K, H, W) and ``"se"`` (B, K) logits) and the
    (B, H, W) int64 mask, and returns ``(total, parts)``: ``parts`` maps each term
    present ("out", "aux", "se") to its unweighted value, detached.

    ``labelled``: the number of labelled pixels of the global batch,
    :func:`global_labelled` ``(mask)``, under DistributedDataParallel; None
    (a single process) counts this mask's own. With ``labelled`` and a process
    group of W ranks, each rank's CE is its sum over its pixels times
    ``W / labelled``: DDP averages the W ranks' gradients, so the result is the
    gradient of the global batch's CE, and the mean of the ranks' values is its
    value. The SE term is each rank's mean over its own images, which averages
    to the global mean because every rank holds the same number of images.

    ``check_labels`` (an attribute, True by default): refuse a mask label outside
    ``[0, K)`` that is not ``ignore_index``. On a GPU that check waits for the
    device; :mod:`encnet.engine` turns it off and checks each batch's masks on
    the CPU, before they are copied to the device.
    """

    def __init__(self, se_weight: float = 0.2, aux_weight: float = 0.2, ignore_index: int = 255) -> None:
        super().__init__()
        self.se_weight, self.aux_weight, self.ignore_index = se_weight, aux_weight, ignore_index
        self.check_labels = True

    def forward(
        self, outputs: dict[str, Tensor], mask: Tensor, labelled: Tensor | int | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if "out" not in outputs:
            raise KeyError(f"EncNetLoss needs the model's 'out' logits, got keys {sorted(outputs)}")
        valid = (labelled_pixels(mask, outputs["out"].size(1), self.ignore_index) if self.check_labels
                 else mask != self.ignore_index)
        world = dist.get_world_size() if labelled is not None and dist.is_initialized() else 1
        count = valid.sum() if labelled is None else torch.as_tensor(labelled, device=mask.device)
        scale = world / count.clamp(min=1).to(outputs["out"].dtype)  # a batch with no labelled pixel: 0, not NaN

        def cross_entropy(logits: Tensor) -> Tensor:
            return F.cross_entropy(logits, mask, ignore_index=self.ignore_index, reduction="sum") * scale

        parts = {"out": cross_entropy(outputs["out"])}
        total = parts["out"]
        if "aux" in outputs:
            parts["aux"] = cross_entropy(outputs["aux"])
            total = total + self.aux_weight * parts["aux"]
        if "se" in outputs:
            target = se_target(mask, outputs["se"].size(1), self.ignore_index, check=self.check_labels)
            parts["se"] = F.binary_cross_entropy_with_logits(outputs["se"], target.to(outputs["se"].dtype))
            total = total + self.se_weight * parts["se"]
        return total, {name: value.detach() for name, value in parts.items()}
