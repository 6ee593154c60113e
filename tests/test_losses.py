import pytest
import torch
import torch.nn.functional as F

from encnet.losses import EncNetLoss, se_target


def test_se_target_ignores_ignore_pixels():
    mask = torch.tensor([[[0, 0], [2, 255]], [[255, 255], [255, 255]], [[1, 3], [3, 3]]])
    expected = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(se_target(mask, 4), expected)


def test_se_target_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"label 7.*\[0, 4\)"):
        se_target(torch.tensor([[[0, 7]]]), 4)


def test_encnet_loss_total_and_parts():
    torch.manual_seed(0)
    mask = torch.randint(0, 3, (2, 4, 4))
    mask[0, 0, 0] = 255
    outputs = {"out": torch.randn(2, 3, 4, 4), "aux": torch.randn(2, 3, 4, 4), "se": torch.randn(2, 3)}
    total, parts = EncNetLoss(se_weight=0.5, aux_weight=0.4)(outputs, mask)
    ce = F.cross_entropy(outputs["out"], mask, ignore_index=255)
    aux = F.cross_entropy(outputs["aux"], mask, ignore_index=255)
    se = F.binary_cross_entropy_with_logits(outputs["se"], se_target(mask, 3))
    torch.testing.assert_close(total, ce + 0.4 * aux + 0.5 * se)
    assert set(parts) == {"out", "aux", "se"}
    torch.testing.assert_close(parts["se"], se)
    total_fcn, parts_fcn = EncNetLoss()({"out": outputs["out"]}, mask)
    torch.testing.assert_close(total_fcn, ce)
    assert set(parts_fcn) == {"out"}
