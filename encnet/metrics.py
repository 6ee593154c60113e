r"""Segmentation metrics accumulated over a whole dataset.

A ``K x K`` confusion matrix ``M`` counts labelled pixels: ``M[t, p]`` pixels of
true class ``t`` predicted as ``p`` (pixels labelled ``ignore_index`` are not
counted). From it, over the whole dataset (not averaged per image):

- pixAcc = sum_c M[c, c] / sum M  (correct labelled pixels / labelled pixels);
- IoU_c  = TP_c / (TP_c + FP_c + FN_c), with TP_c = M[c, c], FP_c the rest of
  column c, FN_c the rest of row c; NaN for a class absent from both the
  ground truth and the predictions;
- mIoU   = mean of IoU_c over the classes that appear (NaN-mean, as mmsegmentation);
- mIoU_all = mean over all K classes, a never-seen class counting 0 (as the
  reference implementation). On a full validation set the two agree; on a few
  images they do not.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UserError


def labelled_pixels(mask: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Which pixels are labelled: ``mask != ignore_index``, a bool tensor of ``mask``'s shape.

    A label outside ``[0, num_classes)`` that is not ``ignore_index`` is a :class:`UserError`
    (a dataset whose label mapping does not match the model); the loss and the metric both check.
    """
    valid = mask != ignore_index
    bad = valid & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        raise UserError(
            f"mask holds label {mask[bad][0].item()}, outside [0, {num_classes}) and not the "
            f"ignore index {ignore_index}; check num_classes or the dataset's label mapping"
        )
    return valid


class SegmentationMetric:
    """Confusion-matrix based pixAcc / mIoU, accumulated with :meth:`update`."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion: Tensor | None = None  # (K, K) int64 on the inputs' device

    def reset(self) -> None:
        self.confusion = None

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` labels (B, H, W) or logits (B, K, H, W); ``target`` (B, H, W)."""
        if pred.dim() == target.dim() + 1:
            if pred.size(1) != self.num_classes:
                raise ValueError(
                    f"logits have {pred.size(1)} classes but the metric counts {self.num_classes}"
                )
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}; "
                "upsample the logits to the mask size first"
            )
        K = self.num_classes
        target, pred = target.long(), pred.long()
        valid = labelled_pixels(target, K, self.ignore_index)
        if ((pred < 0) | (pred >= K)).any():
            raise ValueError(f"predicted labels must lie in [0, {K})")
        counts = torch.bincount(target[valid] * K + pred[valid], minlength=K * K).view(K, K)
        self.confusion = counts if self.confusion is None else self.confusion + counts.to(self.confusion.device)

    def all_reduce(self, group=None) -> None:
        """Sum the confusion matrices of all ranks (call on every rank before :meth:`compute`)."""
        if self.confusion is None:
            raise RuntimeError("all_reduce before any update: every rank must see at least one batch")
        dist.all_reduce(self.confusion, group=group)

    def compute(self) -> dict:
        """``{"pixAcc", "mIoU", "mIoU_all"}`` as floats in [0, 1] and ``"IoU"``, a list of K floats."""
        if self.confusion is None:
            raise RuntimeError("compute before any update: call update(pred, target) first")
        M = self.confusion.double()
        tp = M.diag()
        union = M.sum(0) + M.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
        labelled = M.sum()
        return {
            "pixAcc": (tp.sum() / labelled).item() if labelled > 0 else math.nan,
            "mIoU": iou.nanmean().item(),
            "mIoU_all": iou.nan_to_num(0.0).mean().item(),
            "IoU": iou.tolist(),
        }
