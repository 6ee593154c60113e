import math

import pytest
import torch

from encnet.errors import UserError
from encnet.metrics import SegmentationMetric


def test_hand_computed_example_with_ignore_pixels_over_two_batches():
    # 4 classes; class 3 never appears in target or prediction.
    target1 = torch.tensor([[[0, 0, 1], [1, 255, 2]]])
    pred1 = torch.tensor([[[0, 1, 1], [1, 0, 2]]])  # the ignore pixel's prediction must not count
    target2 = torch.tensor([[[2, 2], [0, 255]]])
    pred2 = torch.tensor([[[2, 0], [0, 2]]])
    metric = SegmentationMetric(4)
    metric.update(pred1, target1)
    metric.update(pred2, target2)
    # labelled pixels: 5 + 3 = 8; correct: (0,1,1,2) + (2,0) = 6
    # class 0: TP 2, FP 1 (a 2 predicted 0), FN 1 (a 0 predicted 1) -> 2/4
    # class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: TP 2, FP 0, FN 1 -> 2/3; class 3: NaN
    result = metric.compute()
    assert result["pixAcc"] == pytest.approx(6 / 8)
    assert result["IoU"][:3] == pytest.approx([0.5, 2 / 3, 2 / 3])
    assert math.isnan(result["IoU"][3])
    assert result["mIoU"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert result["mIoU_all"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 4)


def test_logits_equal_labels_and_reset():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    a, b = SegmentationMetric(3), SegmentationMetric(3)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert a.compute() == b.compute()
    a.reset()
    with pytest.raises(RuntimeError, match="update"):
        a.compute()


def test_bad_target_label_and_shapes_raise():
    metric = SegmentationMetric(3)
    with pytest.raises(UserError, match=r"label 3.*\[0, 3\)"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 3], [1, 255]]]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
