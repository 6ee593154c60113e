"""The experiments of encnet.teaching.syncbn that tests/test_syncbn.py does not run, in one launch of 2 ranks.

The comparison with BatchNorm and DDP on a plain loss are tested in
tests/test_syncbn.py; here: the per-rank statistics, the recorded collectives
with their sizes, DDP with a loss that returns ``(total, parts)`` (EncNetLoss)
on unequal shares, and :func:`run_each` itself.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from encnet.losses import EncNetLoss
from encnet.teaching.processes import spawn
from encnet.teaching.syncbn import count_and_time_collectives, run_each, statistics_per_rank, train_with_ddp

SIZES = (1, 2)  # unequal shares of a batch of 3
SHAPE = (1, 3, 2, 2)  # per-rank input of the timed steps: C = 3
ROUNDS = 2


class TinySegmenter(nn.Module):
    """1x1 conv + BN + ReLU + 1x1 conv classifier, returning ``{"out": logits}`` like the segmentation models."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 5, 1, bias=False), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, num_classes, 1)
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.layers(x)}


def _whole_batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
    return mean, var


@pytest.fixture(scope="module")
def launch() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(3, 2, 4, 5, generator=generator, dtype=torch.float64) * 3 + 1
    torch.manual_seed(0)
    model = TinySegmenter().double()
    batches = [
        (torch.randn(3, 3, 4, 4, generator=generator, dtype=torch.float64),
         torch.randint(0, 4, (3, 4, 4), generator=generator))
        for _ in range(3)
    ]
    per_rank = spawn(run_each, 2, [
        (statistics_per_rank, ({"1 + 2": (batch, SIZES)},)),
        (count_and_time_collectives, ([SHAPE], ROUNDS, 1)),
        (train_with_ddp, (model, batches, EncNetLoss(), SIZES, 0.1, 0.9)),
    ], timeout=120)
    return {"batch": batch, "ranks": per_rank}


def test_statistics_per_rank_local_against_synchronized(launch: dict[str, Any]) -> None:
    batch = launch["batch"]
    whole_mean, whole_var = _whole_batch_statistics(batch)
    for rank, (stats, _, _) in enumerate(launch["ranks"]):
        result = stats["1 + 2"]
        shard = batch[sum(SIZES[:rank]): sum(SIZES[: rank + 1])]
        assert result["values"] == SIZES[rank] * 4 * 5
        local_mean, local_var = _whole_batch_statistics(shard)
        torch.testing.assert_close(torch.tensor(result["local"][0], dtype=torch.float64), local_mean)
        torch.testing.assert_close(torch.tensor(result["local"][1], dtype=torch.float64), local_var)
        for sync in ("once", "twice"):
            torch.testing.assert_close(torch.tensor(result[sync][0], dtype=torch.float64), whole_mean)
            torch.testing.assert_close(torch.tensor(result[sync][1], dtype=torch.float64), whole_var)
        assert (torch.tensor(result["local"][0]) - whole_mean).abs().max() > 1e-3  # the shard alone is off


def test_collectives_are_counted_with_their_sizes_and_timed(launch: dict[str, Any]) -> None:
    channels = SHAPE[1]
    expected = {
        "BatchNorm2d": ([], []),
        "sync once": ([("all_reduce", 2 * channels + 1)], [("all_reduce", 2 * channels)]),
        "sync twice": ([("all_reduce", channels + 1), ("all_reduce", channels)], [("all_reduce", 2 * channels)]),
    }
    for _, timing, _ in launch["ranks"]:
        layers = timing[SHAPE]
        assert set(layers) == set(expected)
        for name, (forward, backward) in expected.items():
            assert layers[name]["forward"] == forward and layers[name]["backward"] == backward, name
            seconds = layers[name]["seconds"]
            assert all(len(seconds[key]) == ROUNDS for key in ("forward", "backward", "collectives")), name
            assert all(f > 0 and b > 0 for f, b in zip(seconds["forward"], seconds["backward"])), name
            # The collectives are issued inside the two passes: their time is a part of the passes' time.
            passes = [f + b for f, b in zip(seconds["forward"], seconds["backward"])]
            assert all(c <= p for c, p in zip(seconds["collectives"], passes)), (name, seconds)
        assert layers["BatchNorm2d"]["seconds"]["collectives"] == [0] * ROUNDS
        assert all(value > 0 for value in layers["sync once"]["seconds"]["collectives"])


def test_ddp_with_encnet_loss_on_unequal_shares_matches_one_process(launch: dict[str, Any]) -> None:
    for _, _, training in launch["ranks"]:
        assert training["difference"]["sync"] < 1e-10, training["difference"]
        assert training["difference"]["control"] > 1e-3, training["difference"]
        losses = training["losses"]
        assert len(losses["one_process"]) == 3
        assert max(abs(a - b) for a, b in zip(losses["sync"], losses["one_process"])) < 1e-12
        assert max(abs(a - b) for a, b in zip(losses["control"], losses["one_process"])) > 1e-6
