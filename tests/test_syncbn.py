"""SyncBatchNorm against torch.nn.BatchNorm on the concatenated batch, over gloo ranks.

Launching processes costs seconds, so one spawn of 3 ranks runs every check
once (a module-scoped fixture, see ``all_checks``) and returns the measured
differences and collective counts; the test functions below assert on them.
The 2-rank cases run in the process group of ranks {0, 1}, a subset of the 3
ranks, which tests a ``process_group`` argument at the same time. The
comparisons themselves live in :mod:`encnet.teaching.syncbn` (notebook 04 runs them too).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from encnet.nn import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm
from encnet.teaching.processes import spawn
from encnet.teaching.syncbn import (
    CHANNELS,
    REFERENCE,
    STEPS,
    TAILS,
    compare_ddp_with_one_process,
    compare_with_batchnorm,
)

# Cases run on a group of 2 ranks holding 3 and 5 samples (and on a group of 1 rank).
TWO_RANK_CASES: dict[str, dict[str, Any]] = {
    **{f"{sync}-{dims}d": {"sync": sync, "dims": dims} for sync in ("once", "twice") for dims in TAILS},
    "once-float32": {"dtype": torch.float32},
    "once-bfloat16-activations": {"dtype": torch.float32, "input_dtype": torch.bfloat16},  # autocast
    "once-no-affine-cumulative-average": {"affine": False, "momentum": None},
    "once-no-running-stats": {"track_running_stats": False},
}
# Cases run on 3 ranks: unequal batches, and an empty batch on one rank.
THREE_RANK_CASES = ("once-unequal", "twice-unequal", "once-empty-rank", "twice-empty-rank")


def ddp_matches_one_process(group: Any, steps: int = 3) -> dict[str, float]:
    """Train a conv + BN model with DDP over ``group`` (2 ranks) on unequal shares (2 and 4) of a batch.

    Returns the largest difference of any parameter or buffer from one process
    trained on the whole batch after ``steps`` SGD steps: with SyncBatchNorm,
    and, as a control, with plain BatchNorm.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)
    ).double()
    generator = torch.Generator().manual_seed(7)
    batches = [
        (torch.randn(6, 3, 6, 6, generator=generator, dtype=torch.float64),
         torch.randn(6, 2, 6, 6, generator=generator, dtype=torch.float64))
        for _ in range(steps)
    ]
    return compare_ddp_with_one_process(model, batches, F.mse_loss, (2, 4), group, lr=0.1, momentum=0.9)["difference"]


def all_checks(rank: int, world_size: int) -> dict[str, Any]:
    """Every multi-process check, in one launch of 3 ranks.

    "world": the 3-rank cases. Then ranks {0, 1} form a 2-rank group (holding 3
    and 5 samples) for the 2-rank cases and DDP, while rank 2 runs the same
    cases alone in a 1-rank group, where the layer must be plain BatchNorm.
    """
    results: dict[str, Any] = {"world": {
        "once-unequal": compare_with_batchnorm((2, 5, 1), None, sync="once"),
        "twice-unequal": compare_with_batchnorm((2, 5, 1), None, sync="twice"),
        "once-empty-rank": compare_with_batchnorm((4, 0, 3), None, sync="once"),
        "twice-empty-rank": compare_with_batchnorm((4, 0, 3), None, sync="twice"),
    }}
    pair, single = dist.new_group([0, 1]), dist.new_group([2])  # every rank creates every group, in order
    if rank < 2:
        results["pair"] = {name: compare_with_batchnorm((3, 5), pair, **case) for name, case in TWO_RANK_CASES.items()}
        results["ddp"] = ddp_matches_one_process(pair)
    else:
        results["single"] = {name: compare_with_batchnorm((4,), single, **case)
                             for name, case in TWO_RANK_CASES.items()}
        try:  # rank 2 is not in the pair: using the pair's layer must fail, not hang
            SyncBatchNorm(CHANNELS, process_group=pair)(torch.randn(2, CHANNELS))
        except RuntimeError as error:
            results["non_member_error"] = str(error)
    return results


def fail_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ArithmeticError("deliberate failure on rank one")
    return rank


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    return spawn(all_checks, 3, timeout=120)


def assert_matches_batchnorm(results: list[dict[str, Any]], case: str) -> None:
    for rank, result in enumerate(results):
        outcome = result[case]
        assert outcome["errors"].get("batches_tracked", 0) == 0, (case, rank)
        worst = {name: value for name, value in outcome["errors"].items() if value > outcome["tolerance"]}
        assert not worst, f"{case}, rank {rank}: differences above {outcome['tolerance']}: {worst}"


def assert_collectives(results: list[dict[str, Any]], case: str, *, synchronised: bool = True) -> None:
    for rank, result in enumerate(results):
        calls = result[case]["calls"]
        forward = ["all_reduce"] * (1 if result[case]["sync"] == "once" else 2) if synchronised else []
        backward = ["all_reduce"] if synchronised else []
        assert calls["forward"] == [forward] * STEPS, (case, rank, calls)
        assert calls["backward"] == [backward] * STEPS, (case, rank, calls)
        assert calls["eval"] == [[]], (case, rank, calls)


@pytest.mark.parametrize("case", THREE_RANK_CASES)
def test_three_ranks_match_batchnorm_on_whole_batch(ranks: list[dict[str, Any]], case: str) -> None:
    assert_matches_batchnorm([result["world"] for result in ranks], case)


@pytest.mark.parametrize("case", THREE_RANK_CASES)
def test_three_ranks_collectives_per_pass(ranks: list[dict[str, Any]], case: str) -> None:
    assert_collectives([result["world"] for result in ranks], case)


@pytest.mark.parametrize("case", list(TWO_RANK_CASES))
def test_two_ranks_match_batchnorm_on_whole_batch(ranks: list[dict[str, Any]], case: str) -> None:
    assert_matches_batchnorm([result["pair"] for result in ranks[:2]], case)


@pytest.mark.parametrize("case", list(TWO_RANK_CASES))
def test_two_ranks_collectives_per_pass(ranks: list[dict[str, Any]], case: str) -> None:
    assert_collectives([result["pair"] for result in ranks[:2]], case)


@pytest.mark.parametrize("case", list(TWO_RANK_CASES))
def test_group_of_one_rank_is_batchnorm_without_collectives(ranks: list[dict[str, Any]], case: str) -> None:
    assert_matches_batchnorm([ranks[2]["single"]], case)
    assert_collectives([ranks[2]["single"]], case, synchronised=False)


def test_rank_outside_the_process_group_gets_a_clear_error(ranks: list[dict[str, Any]]) -> None:
    assert "not a member" in ranks[2].get("non_member_error", "no error raised")


def test_ddp_with_sync_bn_matches_one_process(ranks: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(ranks[:2]):
        assert result["ddp"]["sync"] < 1e-10, (rank, result["ddp"])
        # Control: without synchronisation each rank normalises its own share
        # differently, and the same comparison fails by a wide margin.
        assert result["ddp"]["control"] > 1e-3, (rank, result["ddp"])


@pytest.mark.parametrize("dims", list(TAILS))
@pytest.mark.parametrize(
    "options",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}],
    ids=["default", "cumulative-average", "no-affine", "no-running-stats"],
)
def test_without_process_group_is_exactly_batchnorm(dims: int, options: dict[str, Any]) -> None:
    assert not dist.is_initialized()
    torch.manual_seed(0)
    sync_bn, reference = SyncBatchNorm(CHANNELS, **options), REFERENCE[dims](CHANNELS, **options)
    reference.load_state_dict(sync_bn.state_dict())
    for step in range(3):
        for layer in (sync_bn, reference):
            layer.train(step < 2)
        x = torch.randn(4, CHANNELS, *TAILS[dims]) * 3 + 1
        inputs = [x.clone().requires_grad_() for _ in range(2)]
        outputs = [layer(x_) for layer, x_ in zip((sync_bn, reference), inputs)]
        assert torch.equal(outputs[0], outputs[1])
        outputs[0].sum().backward()
        outputs[1].sum().backward()
        assert torch.equal(inputs[0].grad, inputs[1].grad)
    for (name, mine), (_, theirs) in zip(sync_bn.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(mine, theirs), name
    if options.get("affine", True):
        assert torch.equal(sync_bn.weight.grad, reference.weight.grad)


def test_convert_and_revert_share_parameters_and_buffers() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3),
        nn.Sequential(nn.Flatten(2), nn.BatchNorm1d(4, affine=False)),
        nn.Unflatten(2, (1, 2, 8)), nn.BatchNorm3d(4, track_running_stats=False),
    )
    model[1].eval()
    original = {name: tensor for name, tensor in model.state_dict(keep_vars=True).items()}
    converted = convert_sync_batchnorm(model, sync="twice")
    layers = [converted[1], converted[2][1], converted[4]]
    assert all(type(layer) is SyncBatchNorm and layer.sync == "twice" for layer in layers)
    assert [layer.momentum for layer in layers] == [0.3, 0.1, 0.1]
    assert not layers[0].training and layers[1].training
    assert layers[1].weight is None and layers[2].running_mean is None
    for name, tensor in converted.state_dict(keep_vars=True).items():
        assert tensor is original[name], name
    x = torch.randn(2, 3, 6, 6)
    converted.eval()
    expected = converted(x)
    reverted = revert_sync_batchnorm(converted)
    assert [type(layer) for layer in (reverted[1], reverted[2][1], reverted[4])] == [
        nn.BatchNorm2d, nn.BatchNorm1d, nn.BatchNorm3d
    ]
    for name, tensor in reverted.state_dict(keep_vars=True).items():
        assert tensor is original[name], name
    assert torch.equal(reverted(x), expected)
    bare = convert_sync_batchnorm(nn.BatchNorm1d(5))
    assert type(bare) is SyncBatchNorm and type(revert_sync_batchnorm(bare)) is nn.BatchNorm1d
    assert type(revert_sync_batchnorm(SyncBatchNorm(5))) is nn.BatchNorm2d


def test_bad_input_gives_clear_errors() -> None:
    layer = SyncBatchNorm(CHANNELS)
    with pytest.raises(ValueError, match="2 to 5 dimensions"):
        layer(torch.randn(CHANNELS))
    with pytest.raises(ValueError, match="2 to 5 dimensions"):
        layer(torch.randn(2, CHANNELS, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="num_features=4"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="sync must be one of"):
        SyncBatchNorm(CHANNELS, sync="thrice")
    with pytest.raises(ValueError, match="module-level function"):
        spawn(lambda rank, world_size: rank, 2)
    with pytest.raises(ValueError, match="positive int"):
        spawn(fail_on_rank_one, 0)


def test_spawn_reports_the_failed_rank_with_its_traceback() -> None:
    with pytest.raises(RuntimeError, match="rank 1 of 2 failed") as failure:
        spawn(fail_on_rank_one, 2, timeout=60)
    assert "ArithmeticError: deliberate failure on rank one" in str(failure.value)
    assert "fail_on_rank_one" in str(failure.value)  # the traceback names the function
