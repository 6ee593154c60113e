r"""Synchronized batch norm at work across processes: what notebook 04 runs, and its tests.

The functions whose first two parameters are ``(rank, world_size)`` are meant
for :func:`encnet.teaching.processes.spawn`, which runs them in ``world_size``
processes joined by a gloo process group and returns each rank's value::

    from encnet.teaching.processes import spawn
    from encnet.teaching.syncbn import check_against_batchnorm
    per_rank = spawn(check_against_batchnorm, 2, {"once": {"sizes": (3, 5), "sync": "once"}})

* :func:`statistics_per_rank`: the per-channel mean and variance each rank's
  plain ``BatchNorm2d`` normalises with (its own shard), against those of
  :class:`~encnet.nn.SyncBatchNorm` (the whole batch, ``sync="once"`` and ``"twice"``);
* :func:`check_against_batchnorm`: :func:`compare_with_batchnorm` for several
  cases: SyncBatchNorm on each rank's share of a batch against
  ``torch.nn.BatchNorm`` on the whole batch (outputs, gradients, running statistics);
* :func:`count_and_time_collectives`: which collectives each pass issues, how
  many numbers they carry, and how long they and the passes take;
* :func:`train_with_ddp`: :func:`compare_ddp_with_one_process`, DistributedDataParallel
  training with SyncBatchNorm against one process on the whole batch;
* :func:`run_each`: several of the above in one launch (starting processes costs seconds).

:func:`recording_collectives` records every ``torch.distributed`` collective
called inside a ``with`` block; the comparisons use it to count communication.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..nn import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "Collective",
    "recording_collectives",
    "compare_with_batchnorm",
    "compare_ddp_with_one_process",
    "statistics_per_rank",
    "check_against_batchnorm",
    "count_and_time_collectives",
    "train_with_ddp",
    "run_each",
]

COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_to_all",
    "all_to_all_single", "broadcast", "broadcast_object_list", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "gather", "scatter", "barrier",
)
CHANNELS = 3  # channels of the inputs of compare_with_batchnorm
STEPS = 2  # training steps per comparison: running statistics are checked after more than one update
TAILS = {2: (), 3: (5,), 4: (4, 3), 5: (2, 3, 2)}  # input (B, C, *tail) for each number of dims
REFERENCE = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}


class Collective(NamedTuple):
    """One call of a ``torch.distributed`` collective, as :func:`recording_collectives` saw it."""

    name: str  # e.g. "all_reduce"
    numel: int  # elements of the tensor it was given (0 when its first argument is not a tensor)
    seconds: float  # wall time of the call (gloo returns when the collective is done)


@contextlib.contextmanager
def recording_collectives() -> Iterator[list[Collective]]:
    """Record every ``torch.distributed`` collective called inside the block, in order.

    Wraps the functions of :data:`COLLECTIVES` in ``torch.distributed`` for the
    duration of the block, so it sees the calls made through that module (as
    :class:`~encnet.nn.SyncBatchNorm` makes them), not those DistributedDataParallel
    makes from C++.
    """
    calls: list[Collective] = []
    originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

    def recorded(name: str, collective: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            numel = args[0].numel() if args and isinstance(args[0], Tensor) else 0
            start = time.perf_counter()
            result = collective(*args, **kwargs)
            calls.append(Collective(name, numel, time.perf_counter() - start))
            return result

        return call

    for name, collective in originals.items():
        setattr(dist, name, recorded(name, collective))
    try:
        yield calls
    finally:
        for name, collective in originals.items():
            setattr(dist, name, collective)


def _share(sizes: Sequence[int], group: Any) -> slice:
    """This rank's slice of a batch whose rank ``i`` (in ``group``) holds ``sizes[i]`` samples."""
    world_size = dist.get_world_size(group)
    if len(sizes) != world_size:
        raise ValueError(
            f"sizes must give one batch size per rank of the group ({world_size} ranks), got {tuple(sizes)}."
        )
    rank = dist.get_rank(group)
    return slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))


def compare_with_batchnorm(
    sizes: Sequence[int],
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
    """SyncBatchNorm on this rank's slice of a batch vs torch.nn.BatchNorm on the whole batch.

    ``sizes[i]`` is the batch of the group's rank ``i`` (``group=None``: the
    default group). Every rank draws the same whole batches ``(sum(sizes),
    CHANNELS, *TAILS[dims])`` and upstream gradients, so it can run the
    reference itself; :data:`STEPS` training steps, then one evaluation pass.
    With ``input_dtype`` the activations (and upstream gradients) come in that
    precision, as under autocast, while the layer's parameters stay in ``dtype``.

    Returns ``{"errors": ..., "calls": ..., "tolerance": ..., "sync": ...}``:
    the largest absolute differences ("out", "grad_input", "grad_weight",
    "grad_bias", "running_mean", "running_var", "eval"; and "batches_tracked",
    the difference of the counters), the names of the collectives called in
    each forward, backward and evaluation pass, and the tolerance for ``dtype``.
    """
    share = _share(sizes, group)
    options = {"momentum": momentum, "affine": affine, "track_running_stats": track_running_stats}
    sync_bn, reference = _paired_layers(dims, dtype, options, process_group=group, sync=sync)
    generator = torch.Generator().manual_seed(2018)
    names = ("out", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var", "eval")
    errors = dict.fromkeys(names, 0.0)
    calls: dict[str, list[list[str]]] = {"forward": [], "backward": [], "eval": []}

    def record(name: str, difference: Tensor) -> None:
        if difference.numel():
            errors[name] = max(errors[name], difference.abs().max().item())

    for _ in range(STEPS):
        whole = torch.randn(sum(sizes), CHANNELS, *TAILS[dims], generator=generator, dtype=dtype) * 2 + 3
        upstream = torch.randn(whole.shape, generator=generator, dtype=dtype)
        if input_dtype is not None:  # the reference sees the same rounded values, in full precision
            whole, upstream = (t.to(input_dtype).to(dtype) for t in (whole, upstream))
        _training_pass(sync_bn, reference, whole, upstream, share, group, input_dtype or dtype, record, calls)
    if track_running_stats:
        record("running_mean", sync_bn.running_mean - reference.running_mean)
        record("running_var", sync_bn.running_var - reference.running_var)
        errors["batches_tracked"] = int(sync_bn.num_batches_tracked) - int(reference.num_batches_tracked)
    sync_bn.eval()
    reference.eval()
    # Evaluation normalises each sample on its own (running statistics, or this
    # rank's batch without them): compare on this rank's slice alone.
    local = torch.randn(sum(sizes), CHANNELS, *TAILS[dims], generator=generator, dtype=dtype)[share]
    with recording_collectives() as eval_calls, torch.no_grad():
        record("eval", sync_bn(local) - reference(local))
    calls["eval"].append([call.name for call in eval_calls])
    return {"errors": errors, "calls": calls, "tolerance": TOLERANCE[input_dtype or dtype], "sync": sync}


def _paired_layers(
    dims: int, dtype: torch.dtype, options: dict[str, Any], **sync_options: Any
) -> tuple[nn.Module, nn.Module]:
    """A SyncBatchNorm and the torch BatchNorm for ``dims``-dimensional inputs, with the same weights."""
    sync_bn = SyncBatchNorm(CHANNELS, **sync_options, **options).to(dtype)
    reference = REFERENCE[dims](CHANNELS, **options).to(dtype)
    if options["affine"]:
        with torch.no_grad():
            for layer in (sync_bn, reference):
                layer.weight.copy_(torch.linspace(0.5, 2.0, CHANNELS))
                layer.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS))
    return sync_bn, reference


def _training_pass(
    sync_bn: nn.Module,
    reference: nn.Module,
    whole: Tensor,
    upstream: Tensor,
    share: slice,
    group: Any,
    input_dtype: torch.dtype,
    record: Callable[[str, Tensor], None],
    calls: dict[str, list[list[str]]],
) -> None:
    """Forward + backward of ``sync_bn`` on this rank's ``share`` of ``whole``, of ``reference`` on all of it."""
    x = whole[share].to(input_dtype).requires_grad_()
    whole.requires_grad_()
    with recording_collectives() as forward_calls:
        y = sync_bn(x)
    with recording_collectives() as backward_calls:
        y.backward(upstream[share].to(y.dtype))
    calls["forward"].append([call.name for call in forward_calls])
    calls["backward"].append([call.name for call in backward_calls])
    expected = reference(whole)
    expected.backward(upstream)
    record("out", y.detach() - expected.detach()[share])
    record("grad_input", x.grad - whole.grad[share])
    if sync_bn.affine:  # each rank holds the gradient of its share: their sum is the whole batch's
        for name in ("weight", "bias"):
            grad = getattr(sync_bn, name).grad.clone()
            dist.all_reduce(grad, group=group)
            record(f"grad_{name}", grad - getattr(reference, name).grad)
        sync_bn.zero_grad()
        reference.zero_grad()


def _loss_value(criterion: Callable[..., Any], outputs: Any, targets: Tensor) -> Tensor:
    """``criterion(outputs, targets)``; of a ``(loss, parts)`` pair (as EncNetLoss returns) the loss."""
    loss = criterion(outputs, targets)
    return loss[0] if isinstance(loss, tuple) else loss


def compare_ddp_with_one_process(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    criterion: Callable[..., Any],
    sizes: Sequence[int],
    group: Any = None,
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
) -> dict[str, Any]:
    r"""Train copies of ``model`` with DistributedDataParallel over ``group`` and in one process.

    Three copies start from the same weights and take one SGD step per
    ``(inputs, targets)`` of ``batches`` (each a whole batch of ``sum(sizes)``
    samples, the same on every rank):

    * ``"one_process"``: the whole batch, in this process alone;
    * ``"sync"``: batch norm layers converted to SyncBatchNorm, wrapped in DDP,
      rank ``r`` (in ``group``) on its share of ``sizes[r]`` samples;
    * ``"control"``: the same with plain batch norm, each rank normalising its share alone.

    ``criterion(outputs, targets)`` must be a mean over samples that weighs
    every sample equally (MSE; cross-entropy when no pixel is ignored; EncNetLoss
    then too). The whole batch's loss is then :math:`\sum_r (n_r / N) L_r`, with
    :math:`L_r` the loss of rank :math:`r`'s :math:`n_r` samples; DDP *averages*
    gradients over the :math:`R` ranks, so each rank back-propagates
    :math:`R (n_r / N) L_r`, and the average is the whole batch's gradient, even
    for unequal shares.

    Returns ``{"difference": {"sync": ..., "control": ...}, "losses": {...}}``:
    the largest absolute difference of any parameter or buffer from the
    one-process copy after the last step, and each copy's whole-batch loss at
    every step.
    """
    share, world_size, total = _share(sizes, group), dist.get_world_size(group), sum(sizes)
    weight = (share.stop - share.start) / total  # n_r / N
    one_process = copy.deepcopy(model)
    replicas = {
        "sync": DistributedDataParallel(
            convert_sync_batchnorm(copy.deepcopy(model), process_group=group), process_group=group
        ),
        "control": DistributedDataParallel(copy.deepcopy(model), process_group=group),
    }
    models = {"one_process": one_process, **replicas}
    optimizers = {name: torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum) for name, net in models.items()}
    losses: dict[str, list[float]] = {name: [] for name in models}
    for inputs, targets in batches:
        if len(inputs) != total:
            raise ValueError(f"each batch must hold sum(sizes) = {total} samples, got {len(inputs)}.")
        for name, net in models.items():
            shard = None if name == "one_process" else (share, weight, world_size, group)
            losses[name].append(_sgd_step(net, optimizers[name], criterion, inputs, targets, shard))
    expected = one_process.state_dict()
    return {"difference": {name: _largest_difference(net.module, expected) for name, net in replicas.items()},
            "losses": losses}


def _sgd_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[..., Any],
    inputs: Tensor,
    targets: Tensor,
    shard: tuple[slice, float, int, Any] | None,
) -> float:
    """One SGD step of ``net``; returns the whole batch's loss.

    ``shard``: None for the whole batch in this process, else ``(share, n_r / N,
    R, group)``: this rank's share, back-propagating :math:`R (n_r / N) L_r`.
    """
    if shard is None:
        loss = _loss_value(criterion, net(inputs), targets)
        whole = loss.detach()
    else:
        share, weight, world_size, group = shard
        weighted = _loss_value(criterion, net(inputs[share]), targets[share]) * weight
        loss = weighted * world_size
        whole = weighted.detach().clone()
        dist.all_reduce(whole, group=group)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return whole.item()


def _largest_difference(model: nn.Module, expected: dict[str, Tensor]) -> float:
    """The largest absolute difference of a parameter or buffer of ``model`` from ``expected``."""
    state = model.state_dict()
    return max((state[key].double() - value.double()).abs().max().item() for key, value in expected.items())


def statistics_per_rank(
    rank: int, world_size: int, cases: dict[str, tuple[Tensor, Sequence[int]]]
) -> dict[str, dict[str, Any]]:
    """Per-channel statistics each layer normalises this rank's shard with, for every case.

    ``cases`` maps a name to ``(batch (B, C, H, W), sizes)``: rank ``r`` takes
    its ``sizes[r]`` samples of the batch and runs one training forward pass of
    a plain ``BatchNorm2d`` ("local": its shard alone) and of SyncBatchNorm
    ("once", "twice": the whole batch). With ``momentum=1`` a layer's running
    buffers hold exactly the statistics of that pass: the mean and the
    *unbiased* variance. Returns, per case, ``{"values": values per channel on
    this rank, layer: (mean, var)}``, each a list of C floats.
    """
    results = {}
    for name, (batch, sizes) in cases.items():
        x = batch[_share(sizes, None)]
        channels = x.shape[1]
        layers = {
            "local": nn.BatchNorm2d(channels, momentum=1.0, affine=False),
            "once": SyncBatchNorm(channels, momentum=1.0, affine=False, sync="once"),
            "twice": SyncBatchNorm(channels, momentum=1.0, affine=False, sync="twice"),
        }
        results[name] = {"values": x.numel() // channels}
        for layer_name, layer in layers.items():
            layer.to(x.dtype)(x)
            # Plain lists: tensors returned through spawn's pipe would be shared by file
            # descriptor, from a process that may have exited before they are read.
            results[name][layer_name] = (layer.running_mean.tolist(), layer.running_var.tolist())
    return results


def check_against_batchnorm(rank: int, world_size: int, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{name: compare_with_batchnorm(**kwargs)}`` in the default group, for each ``name: kwargs`` of ``cases``."""
    return {name: compare_with_batchnorm(group=None, **case) for name, case in cases.items()}


def count_and_time_collectives(
    rank: int, world_size: int, shapes: Sequence[tuple[int, int, int, int]], rounds: int, warmup: int = 2
) -> dict[tuple[int, ...], dict[str, Any]]:
    """Collectives of one training step of BatchNorm2d, sync once and sync twice, and their times.

    For each per-rank input shape ``(B, C, H, W)``, every round runs one
    forward and one backward pass of each layer (after a barrier, in an order
    rotated from round to round), recording the collectives of each pass
    (:func:`recording_collectives`) and timing it; ``warmup`` rounds first are
    not kept. Returns, per shape and layer, the collectives of the last round's
    ``"forward"`` and ``"backward"`` as ``(name, numel)`` pairs, and per round
    the seconds of the forward pass, the backward pass and the collectives.
    """
    results = {}
    for shape in shapes:
        channels = shape[1]
        layers = {
            "BatchNorm2d": nn.BatchNorm2d(channels),
            "sync once": SyncBatchNorm(channels, sync="once"),
            "sync twice": SyncBatchNorm(channels, sync="twice"),
        }
        generator = torch.Generator().manual_seed(rank)
        x = (torch.randn(shape, generator=generator) * 2 + 1).requires_grad_()
        upstream = torch.randn(shape, generator=generator)
        timing = {name: {"forward": [], "backward": [], "collectives": []} for name in layers}
        calls: dict[str, dict[str, list[tuple[str, int]]]] = {}
        names = list(layers)
        for round_index in range(warmup + rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                x.grad = None
                dist.barrier()
                with recording_collectives() as forward_calls:
                    start = time.perf_counter()
                    y = layers[name](x)
                    middle = time.perf_counter()
                with recording_collectives() as backward_calls:
                    y.backward(upstream)
                    stop = time.perf_counter()
                calls[name] = {
                    "forward": [(call.name, call.numel) for call in forward_calls],
                    "backward": [(call.name, call.numel) for call in backward_calls],
                }
                if round_index >= warmup:
                    timing[name]["forward"].append(middle - start)
                    timing[name]["backward"].append(stop - middle)
                    timing[name]["collectives"].append(sum(call.seconds for call in forward_calls + backward_calls))
        results[tuple(shape)] = {name: {**calls[name], "seconds": timing[name]} for name in layers}
    return results


def train_with_ddp(
    rank: int,
    world_size: int,
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    criterion: Callable[..., Any],
    sizes: Sequence[int],
    lr: float = 0.1,
    momentum: float = 0.9,
) -> dict[str, Any]:
    """:func:`compare_ddp_with_one_process` over the default group.

    ``model``, ``batches`` and ``criterion`` travel pickled.
    """
    return compare_ddp_with_one_process(model, batches, criterion, sizes, lr=lr, momentum=momentum)


def run_each(rank: int, world_size: int, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    """``[fn(rank, world_size, *args) for fn, args in calls]``: several experiments in one launch.

    Each process of :func:`encnet.teaching.processes.spawn` starts a Python
    interpreter and imports torch, seconds on a laptop; this runs several
    functions in the same processes, one after the other. Like the function
    given to ``spawn``, each ``fn`` must be a module-level function of an
    importable module.
    """
    return [fn(rank, world_size, *args) for fn, args in calls]
