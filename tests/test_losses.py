import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from encnet.errors import UserError
from encnet.losses import EncNetLoss, global_labelled, se_target
from encnet.teaching.processes import spawn


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


def test_a_batch_without_labelled_pixels_contributes_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    mask = torch.full((2, 4, 4), 255)
    assert torch.isnan(F.cross_entropy(logits, mask, ignore_index=255))  # the reference's mean: 0 / 0
    total, parts = EncNetLoss()({"out": logits, "aux": logits * 2, "se": logits.mean((2, 3))}, mask)
    assert parts["out"] == 0 and parts["aux"] == 0 and torch.isfinite(total)
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_labelled_count_is_the_divisor_of_the_sum():
    torch.manual_seed(1)
    logits, mask = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    mask[1] = 255
    summed = F.cross_entropy(logits, mask, ignore_index=255, reduction="sum")
    _, parts = EncNetLoss()({"out": logits}, mask, labelled=64)  # a global batch with 64 labelled pixels
    torch.testing.assert_close(parts["out"], summed / 64)
    _, parts = EncNetLoss()({"out": logits}, mask)  # None: this batch's own 16 labelled pixels
    torch.testing.assert_close(parts["out"], F.cross_entropy(logits, mask, ignore_index=255))


def test_out_of_range_labels_are_a_user_error_before_cross_entropy():
    with pytest.raises(UserError, match=r"label 3, outside \[0, 3\)"):
        EncNetLoss()({"out": torch.randn(1, 3, 2, 2)}, torch.tensor([[[0, 1], [2, 3]]]))


class TinySegmenter(nn.Module):
    """out, aux and se logits of 3 classes from (B, 2, H, W) inputs: enough to carry every term's gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.out, self.aux, self.se = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 3, 1), nn.Linear(2, 3)

    def forward(self, images):
        return {"out": self.out(images), "aux": self.aux(images), "se": self.se(images.mean((2, 3)))}


def whole_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model and a batch of 4 images; images 2 and 3 hold only ignored pixels."""
    torch.manual_seed(0)
    model = TinySegmenter().double()
    images = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    mask = torch.randint(0, 3, (4, 5, 5))
    mask[0, :2] = 255
    mask[2:] = 255
    return model, images, mask


def gradients(model: nn.Module) -> list[torch.Tensor]:
    return [parameter.grad.clone() for parameter in model.parameters()]


def ddp_rank_gradients(rank: int, world_size: int) -> dict:
    """Under DDP over 2 gloo ranks, rank 1 holding only ignored pixels: gradients global / per-rank mean."""
    model, images, mask = whole_batch()
    share = slice(2 * rank, 2 * rank + 2)
    criterion = EncNetLoss(se_weight=0.5, aux_weight=0.4)
    result = {"reference_loss": F.cross_entropy(model(images[share])["out"], mask[share], ignore_index=255).item()}
    for name, labelled in (("global", global_labelled(mask[share])), ("per_rank_mean", None)):
        net = DistributedDataParallel(model)
        model.zero_grad()
        loss, parts = criterion(net(images[share]), mask[share], labelled=labelled)
        loss.backward()
        values = torch.stack([loss.detach(), parts["out"]])
        dist.all_reduce(values)
        result[name] = {"gradients": gradients(model), "loss": (values / world_size).tolist()}
    return result


def test_ddp_gradient_equals_one_process_on_the_whole_batch():
    ranks = spawn(ddp_rank_gradients, 2, timeout=60)
    model, images, mask = whole_batch()
    loss, parts = EncNetLoss(se_weight=0.5, aux_weight=0.4)(model(images), mask)
    loss.backward()
    expected = gradients(model)
    assert math.isnan(ranks[1]["reference_loss"])  # torch's mean over no labelled pixel
    for rank in ranks:
        for got, want in zip(rank["global"]["gradients"], expected):
            torch.testing.assert_close(got, want)
        assert rank["global"]["loss"] == pytest.approx([loss.item(), parts["out"].item()])
    # The control: each rank's own mean (rank 1's is 0 here, not NaN) weighs rank 0's pixels by half.
    difference = max((got - want).abs().max().item()
                     for got, want in zip(ranks[0]["per_rank_mean"]["gradients"], expected))
    assert difference > 1e-3
