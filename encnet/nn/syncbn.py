r"""Synchronized batch norm: statistics of the whole batch, across processes.

Semantic segmentation trains on large crops, so each GPU holds only a few
images, and batch norm statistics of 2 images are too noisy. EncNet computes
them over the whole batch, the union of the per-GPU batches, at the cost of
communication (Zhang et al., CVPR 2018, talk slides "Cross-GPU Batch Norm").

**The statistics.** For one channel let rank :math:`r` hold :math:`n_r` values
(batch x spatial positions), :math:`N = \sum_r n_r`, and

.. math::  S_1 = \sum_i x_i, \quad S_2 = \sum_i x_i^2 \quad \text{(over all ranks)},
           \qquad \mu = S_1 / N, \quad \sigma^2 = S_2 / N - \mu^2.

* ``sync="once"``: every rank sums its ``[S_1, S_2, n]`` locally and *one*
  all-reduce (a sum across ranks, ``2C + 1`` numbers) gives every rank the
  global sums. This is the paper's "sync once".
* ``sync="twice"``: all-reduce ``[S_1, n]`` for :math:`\mu`, then all-reduce
  :math:`\sum_i (x_i - \mu)^2` for :math:`\sigma^2`. Two round trips, kept for
  teaching: it is the textbook two-pass variance, distributed, as in the
  "sync twice" implementations the paper cites (MegDet, PANet).

Counting values instead of dividing by the number of ranks keeps the result
exact when ranks hold batches of different sizes (even empty ones); the
reference package's distributed version divides by the world size instead.
Then :math:`\hat x_i = (x_i - \mu)\, \rho` with :math:`\rho = (\sigma^2 +
\epsilon)^{-1/2}` and :math:`y_i = w \hat x_i + b`, as in batch norm.

Caveat of "once": :math:`S_2/N - \mu^2` subtracts two large numbers when
:math:`|\mu| \gg \sigma`; in float32 the variance loses digits there (a
negative result is clamped to 0). After a convolution :math:`|\mu|` and
:math:`\sigma` are of the same order and the error is at float32 rounding.

**The backward pass**, derived. :math:`x_i` enters the loss :math:`L`
directly and through the two global sums (it is one of their terms):

.. math::  \frac{\partial L}{\partial x_i} = w \rho\, g_i
           + \frac{\partial L}{\partial S_1} + 2 x_i \frac{\partial L}{\partial S_2},
           \qquad g_i = \frac{\partial L}{\partial y_i}.

Through :math:`y_j = w (x_j - \mu) \rho + b`, with :math:`G = \sum_j g_j` and
:math:`H = \sum_j g_j \hat x_j` summed over *all* ranks' outputs:

.. math::  \frac{\partial L}{\partial \mu}\Big|_{\sigma^2} = -w \rho\, G, \qquad
           \frac{\partial L}{\partial \sigma^2} = -\tfrac12 w \rho^3 \sum_j g_j (x_j - \mu)
           = -\tfrac12 w \rho^2 H,

and since :math:`\mu = S_1/N`, :math:`\sigma^2 = S_2/N - S_1^2/N^2`:

.. math::  \frac{\partial L}{\partial S_2} = \frac1N \frac{\partial L}{\partial \sigma^2},
           \qquad \frac{\partial L}{\partial S_1} = \frac1N \Big(\frac{\partial L}{\partial \mu}\Big|_{\sigma^2}
           - 2 \mu \frac{\partial L}{\partial \sigma^2}\Big).

The gradients with respect to the sums are linear in :math:`(G, H)`, so *one*
all-reduce of the per-rank ``[G_r, H_r]`` (``2C`` numbers) is all the
backward pass communicates, whichever ``sync`` the forward used (both compute
the same function of ``x``). Substituting,

.. math::  \frac{\partial L}{\partial x_i} = w \rho \Big(g_i - \frac{G}{N} - \hat x_i \frac{H}{N}\Big),

the batch-norm gradient with global :math:`G, H, N`. The parameter gradients
stay per rank: rank :math:`r` holds its share :math:`H_r` (for :math:`w`) and
:math:`G_r` (for :math:`b`), and DistributedDataParallel reduces them with all
other parameters' gradients.

The running statistics are updated as torch.nn.BatchNorm updates them, with
the global mean and the unbiased global variance :math:`\sigma^2 N / (N - 1)`.
Reading :math:`N` on the host (to check :math:`N > 1` and for that factor)
waits for the all-reduce; on a GPU that is one host synchronisation per layer,
as torch.nn.SyncBatchNorm also makes (outside CUDA-graph capture).

All ranks of the group must run the layer together (an empty batch still
joins, counting 0 values), in training mode, and run its backward whenever
the input needs a gradient; a rank that skips a collective leaves the others
waiting. Evaluation uses the running statistics and communicates nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "revert_sync_batchnorm"]

SYNC_MODES = ("once", "twice")


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics span every rank of ``process_group``.

    Input ``(B, C)``, ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, D, H, W)``;
    output of the same shape. Statistics are per channel ``C`` over all other
    axes of all ranks' batches (see the module docstring for the equations and
    the backward pass). ``process_group=None`` means the default group, if one
    is initialised. In training with a group of two or more ranks, ``sync``
    chooses one all-reduce (``"once"``) or two (``"twice"``) in the forward
    pass; the backward pass issues one. Otherwise (evaluation, no group, one
    rank) the layer is exactly torch.nn.BatchNorm1d, 2d or 3d (whichever
    matches the input), with the same parameters, buffers and running-statistics
    updates.

    :func:`revert_sync_batchnorm` turns the layer back into ``reverts_to``:
    the class :func:`convert_sync_batchnorm` replaced, else ``nn.BatchNorm2d``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        sync: str = "once",
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(
                f"sync must be one of {SYNC_MODES} (one all-reduce in the forward pass, or two), got {sync!r}."
            )
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group
        self.sync = sync
        self.reverts_to: type[_BatchNorm] = nn.BatchNorm2d

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sync={self.sync!r}"

    def _check_input_dim(self, x: Tensor) -> None:
        if not 2 <= x.dim() <= 5:
            raise ValueError(
                f"SyncBatchNorm expects an input (B, C, *) of 2 to 5 dimensions, got shape {tuple(x.shape)}: "
                "put the batch first and the channels second (fold any extra axes into the spatial ones)."
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm was built for {self.num_features} channels, got an input of shape "
                f"{tuple(x.shape)} with {x.shape[1]} channels (axis 1): build it with "
                f"num_features={x.shape[1]} or check the layer before it."
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        average_factor = self._average_factor()
        group = self._sync_group() if self.training else None
        if group is None:
            use_batch_statistics = self.training or self.running_mean is None
            keep_running = not self.training or self.track_running_stats
            return F.batch_norm(
                x,
                self.running_mean if keep_running else None,
                self.running_var if keep_running else None,
                self.weight,
                self.bias,
                use_batch_statistics,
                average_factor,
                self.eps,
            )
        # Half-precision activations (autocast) are normalised with float32 statistics.
        low_precision = x.dtype in (torch.float16, torch.bfloat16)
        y = _SyncBatchNormFunction.apply(
            x.float() if low_precision else x, self.weight, self.bias, self.running_mean, self.running_var,
            average_factor, self.eps, group, self.sync,
        )
        return y.to(x.dtype) if low_precision else y

    def _average_factor(self) -> float:
        """Weight of this batch in the running statistics, as torch.nn.BatchNorm updates them.

        ``momentum`` is the weight of the new batch; ``momentum=None`` means the
        cumulative average, weight ``1 / (number of batches seen)``.
        """
        if not (self.training and self.track_running_stats):
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _sync_group(self) -> Any:
        """The process group to synchronise over, or None when there is nothing to synchronise."""
        if not (dist.is_available() and dist.is_initialized()):
            if self.process_group is not None:
                raise RuntimeError(
                    "SyncBatchNorm was given a process_group but torch.distributed is not initialised "
                    "(anymore): call torch.distributed.init_process_group first."
                )
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        if dist.get_rank(group) < 0:
            raise RuntimeError(
                f"this process (global rank {dist.get_rank()}) is not a member of the SyncBatchNorm's "
                "process_group: give each rank a group it belongs to (e.g. torch.distributed.new_subgroups)."
            )
        return group if dist.get_world_size(group) > 1 else None


class _SyncBatchNormFunction(torch.autograd.Function):
    """Forward: one (or two) all-reduce(s) of the statistics; backward: one all-reduce of ``[G, H]``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        average_factor: float,
        eps: float,
        group: Any,
        sync: str,
    ) -> Tensor:
        axes = [0, *range(2, x.dim())]  # every axis but the channels
        if sync == "once":
            mean, var, count = _statistics_once(x, axes, group)
        else:
            mean, var, count = _statistics_twice(x, axes, group)
        values = int(count.item())
        if values < 2:
            raise ValueError(
                f"SyncBatchNorm needs more than one value per channel in training, the whole batch over "
                f"all ranks has {values} (input shape on this rank: {tuple(x.shape)}): use a larger batch."
            )
        if running_mean is not None and running_var is not None:
            running_mean.lerp_(mean, average_factor)
            running_var.lerp_(var * (values / (values - 1)), average_factor)  # unbiased, as BatchNorm
        ctx.save_for_backward(x, weight, mean, var)
        ctx.axes, ctx.values, ctx.eps, ctx.group = axes, values, eps, group
        # With the global statistics known, y = w (x - mu) rho + b is batch norm's
        # evaluation-mode formula with (mu, sigma^2) as the statistics to use.
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, var = ctx.saved_tensors
        x_hat = F.batch_norm(x, mean, var, None, None, False, 0.0, ctx.eps)  # (x - mu) rho, like x
        local_g = grad_y.sum(ctx.axes)  # G_r: (C,)
        local_h = (grad_y * x_hat).sum(ctx.axes)  # H_r: (C,)
        grad_x = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([local_g, local_h])
            dist.all_reduce(sums, group=ctx.group)
            g_mean, h_mean = (sums / ctx.values).chunk(2)  # G / N, H / N: (C,)
            scale = torch.rsqrt(var + ctx.eps)  # rho: (C,)
            if weight is not None:
                scale = scale * weight  # w rho
            # w rho (g - G/N - x_hat H/N), computed in place in x_hat's memory.
            grad_x = x_hat.mul_(_per_channel(-h_mean, x)).add_(grad_y)
            grad_x = grad_x.sub_(_per_channel(g_mean, x)).mul_(_per_channel(scale, x))
        grad_weight = local_h if ctx.needs_input_grad[1] else None
        grad_bias = local_g if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None


def _statistics_once(x: Tensor, axes: list[int], group: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Global ``(mean, var, N)`` from one all-reduce of ``[S_1 (C), S_2 (C), n (1)]``."""
    channels = x.shape[1]
    count = x.new_full((1,), x.numel() // channels)
    sums = torch.cat([x.sum(axes), (x * x).sum(axes), count])
    dist.all_reduce(sums, group=group)
    sum_x, sum_x2, count = sums.split([channels, channels, 1])
    mean = sum_x / count
    var = (sum_x2 / count - mean * mean).clamp_(min=0.0)
    return mean, var, count


def _statistics_twice(x: Tensor, axes: list[int], group: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Global ``(mean, var, N)`` from an all-reduce of ``[S_1, n]``, then one of ``sum (x - mean)^2``."""
    channels = x.shape[1]
    count = x.new_full((1,), x.numel() // channels)
    sums = torch.cat([x.sum(axes), count])
    dist.all_reduce(sums, group=group)
    sum_x, count = sums.split([channels, 1])
    mean = sum_x / count
    squares = (x - _per_channel(mean, x)).square_().sum(axes)
    dist.all_reduce(squares, group=group)
    return mean, squares / count, count


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    """View ``(C,)`` values as ``(1, C, 1, ...)`` to broadcast against ``like`` ``(B, C, *)``."""
    return values.view(1, -1, *([1] * (like.dim() - 2)))


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None, sync: str = "once") -> nn.Module:
    """Replace every batch norm layer in ``module`` by a :class:`SyncBatchNorm`.

    The new layers share the old ones' parameters and buffers (the same tensor
    objects, so an optimiser built before still updates them) and their
    training flag. Returns ``module`` with its layers replaced, or a new layer
    when ``module`` is itself a batch norm.
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        converted = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, process_group=process_group, sync=sync,
        )
        converted.reverts_to = type(module)
        _share_state(module, converted)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group, sync))
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every :class:`SyncBatchNorm` in ``module`` by its ``reverts_to`` class.

    The inverse of :func:`convert_sync_batchnorm`, sharing parameters and
    buffers the same way; useful to run or export a model trained with sync BN
    in a single process.
    """
    if isinstance(module, SyncBatchNorm):
        reverted = module.reverts_to(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        _share_state(module, reverted)
        return reverted
    for name, child in module.named_children():
        module.add_module(name, revert_sync_batchnorm(child))
    return module


def _share_state(source: _BatchNorm, target: _BatchNorm) -> None:
    """Make ``target`` use ``source``'s parameters, buffers and training flag."""
    target.weight, target.bias = source.weight, source.bias
    target.running_mean, target.running_var = source.running_mean, source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
