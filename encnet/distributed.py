r"""What the training engine needs of a process group, on 1 process or on N.

Multi-GPU training runs one process per GPU (``torchrun`` starts them); the
processes exchange tensors through *collectives* (``all_reduce`` and friends)
of a process group. Each helper here is the identity, or a no-op, without a
group, so the engine reads the same on 1 process or on N:

- :func:`setup_process`: (rank, world size, device) of this process; joins the
  group ``torchrun`` describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``.
- :func:`all_reduce_sum`: :math:`\sum_r x_r` over the ranks.
- :func:`gather_objects`: ``[value of rank 0, value of rank 1, ...]``.
- :func:`show_progress`: whether this rank shows progress bars (rank 0 only).
- :func:`on_rank_zero`: run a function on rank 0 only (the one that owns the
  files), and give its value, or raise its error, on every rank, so that no
  rank is left waiting in a collective.
- :func:`sync_bn_kind`, :func:`sync_batch_norms`, :func:`plain_batch_norms`:
  which synchronised batch norm a run uses (``TrainConfig.sync_bn``: torch's
  on CUDA with NCCL, the package's own elsewhere), converting to it and back.

To run such code on several CPU processes of one machine (a notebook, a test),
see :func:`encnet.teaching.processes.spawn`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import UserError
from .nn import convert_sync_batchnorm, revert_sync_batchnorm

__all__ = ["all_reduce_sum", "gather_objects", "on_rank_zero", "plain_batch_norms", "setup_process", "show_progress",
           "sync_batch_norms", "sync_bn_kind"]


def show_progress(progress: bool | None, rank: int) -> bool:
    """Whether rank ``rank`` shows progress bars: only rank 0, when asked, or (None) when stderr is a terminal."""
    return rank == 0 and (sys.stderr.isatty() if progress is None else progress)


def setup_process(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the torchrun process group if there is one.

    ``device``: "auto" (this rank's GPU, ``LOCAL_RANK`` modulo the GPU count, if
    CUDA is available, else the CPU), "cpu", "cuda" or "cuda:N". The group's
    backend is NCCL on GPUs and gloo on CPUs.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; pass auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {str(device)!r} is a {device.type} device, which encnet does not train or run "
                        "on; pass auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {str(device)!r} asks for a GPU, but CUDA is not available here; "
                        "pass --device cpu (or auto)")
    if device.type == "cuda":
        if device.index is None:  # "cuda": this rank's GPU, as "auto" picks it
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def all_reduce_sum(values: Tensor) -> Tensor:
    r""":math:`\sum_r` ``values`` of rank r, on every rank (a new tensor; ``values`` itself without a group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def gather_objects(value: Any) -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (``[value]`` without a group)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def on_rank_zero(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only; its value on rank 0 (None elsewhere), its exception raised on every rank.

    For the steps only rank 0 takes (it owns the files) but whose failure must
    stop every rank: the others would otherwise wait for ever in the next
    collective. The other ranks raise the same exception class with the same
    message.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    value, failure = None, [None]
    if dist.get_rank() == 0:
        try:
            value = fn()
        except Exception as error:
            failure = [(type(error), str(error))]
            dist.broadcast_object_list(failure, src=0)
            raise
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        kind, message = failure[0]
        raise kind(message)
    return value


def sync_bn_kind(choice: str, device_type: str, backend: str) -> str:
    """The synchronised batch norm ``TrainConfig.sync_bn`` = ``choice`` gives on ``device_type`` under ``backend``.

    Returns "torch" (``torch.nn.SyncBatchNorm``), "encnet" (:class:`encnet.nn.SyncBatchNorm`)
    or "off" (each process normalises its own share of the batch). "auto" is
    torch's on CUDA with NCCL (its fused kernels), the package's own elsewhere
    (gloo on CPUs, where torch's does not run); the other choices are taken as
    they are.

    Raises:
        UserError: "torch" off CUDA or NCCL (torch's SyncBatchNorm trains only on CUDA tensors over NCCL).
    """
    if choice == "auto":
        return "torch" if device_type == "cuda" and backend == "nccl" else "encnet"
    if choice == "torch" and not (device_type == "cuda" and backend == "nccl"):
        raise UserError(f"--sync-bn torch needs CUDA and the NCCL backend (torch.nn.SyncBatchNorm trains only on "
                        f"GPUs), but this run is on {device_type} with {backend}; pass --sync-bn encnet (or auto)")
    return choice


def sync_batch_norms(model: nn.Module, choice: str, device: torch.device) -> nn.Module:
    """``model`` with its batch norms synchronised over the default process group, as :func:`sync_bn_kind` says.

    Without a group of two or more processes ``model`` is returned as it is. The
    new layers share the old ones' parameters and buffers; :func:`plain_batch_norms`
    turns either kind back into the classes it replaced.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    kind = sync_bn_kind(choice, device.type, dist.get_backend())
    if kind == "encnet":
        return convert_sync_batchnorm(model)
    if kind == "torch":
        classes = {name: type(module) for name, module in model.named_modules() if isinstance(module, _BatchNorm)}
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        for name, module in model.named_modules():
            if isinstance(module, nn.SyncBatchNorm):
                module.reverts_to = classes[name]  # what plain_batch_norms restores (torch keeps no record)
    return model


def plain_batch_norms(module: nn.Module) -> nn.Module:
    """The inverse of :func:`sync_batch_norms`: every synchronised batch norm back to the class it replaced."""
    return revert_sync_batchnorm(_revert_torch_sync_bn(module))


def _revert_torch_sync_bn(module: nn.Module) -> nn.Module:
    """Every ``torch.nn.SyncBatchNorm`` of ``module`` back to its ``reverts_to`` class, sharing its tensors."""
    if isinstance(module, nn.SyncBatchNorm):
        plain = getattr(module, "reverts_to", nn.BatchNorm2d)(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        plain.weight, plain.bias = module.weight, module.bias
        plain.running_mean, plain.running_var = module.running_mean, module.running_var
        plain.num_batches_tracked = module.num_batches_tracked
        return plain.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _revert_torch_sync_bn(child))
    return module
