"""SyncBatchNorm against torch.nn.BatchNorm on the concatenated batch, over gloo ranks.

Launching processes costs seconds, so one spawn of 3 ranks runs every check
once (a module-scoped fixture, see ``all_checks``) and returns the measured
differences and collective counts; the test functions below assert on them.
The 2-rank cases run in the process group of ranks {0, 1}, a subset of the 3
ranks, which tests a ``process_group`` argument at the same time.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from encnet.distributed import spawn
from encnet.nn import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

CHANNELS = 3
STEPS = 2  # training steps per case: running statistics are checked after more than one update
TAILS = {2: (), 3: (5,), 4: (4, 3), 5: (2, 3, 2)}  # input (B, C, *tail) of each number of dims
REFERENCE = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_to_all",
    "all_to_all_single", "broadcast", "broadcast_object_list", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "gather", "scatter", "barrier",
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


@contextlib.contextmanager
def counting_collectives() -> Iterator[list[str]]:
    """Record the name of every torch.distributed collective called inside the block."""
    calls: list[str] = []
    originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

    def counted(name: str, collective: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return collective(*args, **kwargs)

        return call

    for name, collective in originals.items():
        setattr(dist, name, counted(name, collective))
    try:
        yield calls
    finally:
        for name, collective in originals.items():
            setattr(dist, name, collective)


def compare_with_batchnorm(
    sizes: tuple[int, ...],
    group: Any,
    *,
    sync: str = "once",
    dims: int = 4,
    dtype: torch.dtype = torch.float64,
    affine: bool = True,
    momentum: float | None = 0.1,
    track_running_stats: bool = True,
    input_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """SyncBatchNorm on this rank's slice of a batch vs BatchNorm on the whole batch.

    With ``input_dtype`` the activations (and upstream gradients) come in that
    precision, as under autocast, while the layer's parameters stay in ``dtype``.

    ``sizes[i]`` is the batch of the group's rank ``i``. Every rank draws the
    same whole batches and upstream gradients, so it can run the reference
    itself. Returns the largest absolute differences and the collectives
    called in each forward, backward and evaluation pass.
    """
    rank = dist.get_rank(group)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    options = {"momentum": momentum, "affine": affine, "track_running_stats": track_running_stats}
    sync_bn = SyncBatchNorm(CHANNELS, process_group=group, sync=sync, **options).to(dtype)
    reference = REFERENCE[dims](CHANNELS, **options).to(dtype)
    generator = torch.Generator().manual_seed(2018)
    if affine:
        with torch.no_grad():
            for layer in (sync_bn, reference):
                layer.weight.copy_(torch.linspace(0.5, 2.0, CHANNELS))
                layer.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS))
    errors = dict.fromkeys(("out", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var", "eval"), 0.0)
    calls: dict[str, list[list[str]]] = {"forward": [], "backward": [], "eval": []}

    def record(name: str, difference: torch.Tensor) -> None:
        if difference.numel():
            errors[name] = max(errors[name], difference.abs().max().item())

    for _ in range(STEPS):
        whole = (torch.randn(sum(sizes), CHANNELS, *TAILS[dims], generator=generator, dtype=dtype) * 2 + 3)
        upstream = torch.randn(whole.shape, generator=generator, dtype=dtype)
        if input_dtype is not None:  # the reference sees the same rounded values, in full precision
            whole, upstream = (t.to(input_dtype).to(dtype) for t in (whole, upstream))
        x = whole[start:stop].to(input_dtype or dtype).requires_grad_()
        whole.requires_grad_()
        with counting_collectives() as forward_calls:
            y = sync_bn(x)
        with counting_collectives() as backward_calls:
            y.backward(upstream[start:stop].to(y.dtype))
        calls["forward"].append(forward_calls)
        calls["backward"].append(backward_calls)
        expected = reference(whole)
        expected.backward(upstream)
        record("out", y.detach() - expected.detach()[start:stop])
        record("grad_input", x.grad - whole.grad[start:stop])
        if affine:  # each rank holds the gradient of its share: their sum is the whole batch's
            for name in ("weight", "bias"):
                grad = getattr(sync_bn, name).grad.clone()
                dist.all_reduce(grad, group=group)
                record(f"grad_{name}", grad - getattr(reference, name).grad)
            sync_bn.zero_grad()
            reference.zero_grad()
    if track_running_stats:
        record("running_mean", sync_bn.running_mean - reference.running_mean)
        record("running_var", sync_bn.running_var - reference.running_var)
        errors["batches_tracked"] = int(sync_bn.num_batches_tracked) - int(reference.num_batches_tracked)
    sync_bn.eval()
    reference.eval()
    # Evaluation normalises each sample on its own (running statistics, or this
    # rank's batch without them): compare on this rank's slice alone.
    local = torch.randn(sum(sizes), CHANNELS, *TAILS[dims], generator=generator, dtype=dtype)[start:stop]
    with counting_collectives() as eval_calls, torch.no_grad():
        record("eval", sync_bn(local) - reference(local))
    calls["eval"].append(eval_calls)
    return {"errors": errors, "calls": calls, "tolerance": TOLERANCE[input_dtype or dtype], "sync": sync}


def ddp_matches_one_process(group: Any, steps: int = 3) -> dict[str, float]:
    """Train a conv + SyncBN model with DDP over ``group`` (2 ranks) on unequal shares of a batch.

    Returns the largest difference of any parameter or buffer from one process
    trained on the whole batch after ``steps`` SGD steps: with SyncBatchNorm,
    and, as a control, with plain BatchNorm.
    """
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    sizes = (2, 4)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    torch.manual_seed(0)
    one_process = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)
    ).double()
    replicas = {
        "sync": convert_sync_batchnorm(copy.deepcopy(one_process), process_group=group),
        "control": copy.deepcopy(one_process),
    }
    replicas = {name: DistributedDataParallel(model, process_group=group) for name, model in replicas.items()}
    models = {"one_process": one_process, **replicas}
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) for name, model in models.items()}
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        images = torch.randn(sum(sizes), 3, 6, 6, generator=generator, dtype=torch.float64)
        targets = torch.randn(sum(sizes), 2, 6, 6, generator=generator, dtype=torch.float64)
        total = targets.numel()
        # The whole batch's loss is sum / total over all values. A rank's share of
        # it is its local sum / total (total = the global count, not its own), and
        # the gradient of the whole loss is the sum of the shares' gradients. DDP
        # *averages* gradients over the world_size ranks, so each rank's loss is
        # its share times world_size: the average is then exactly that sum.
        losses = {
            "one_process": F.mse_loss(one_process(images), targets, reduction="sum") / total,
            **{
                name: F.mse_loss(model(images[start:stop]), targets[start:stop], reduction="sum") / total * world_size
                for name, model in replicas.items()
            },
        }
        for name, loss in losses.items():
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
    expected = one_process.state_dict()
    return {
        name: max((model.module.state_dict()[key].double() - value.double()).abs().max().item() for key, value in expected.items())
        for name, model in replicas.items()
    }


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
        results["single"] = {name: compare_with_batchnorm((4,), single, **case) for name, case in TWO_RANK_CASES.items()}
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
