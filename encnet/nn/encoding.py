r"""The Encoding Layer (Zhang et al., CVPR 2018, Sec. 3.1; Deep TEN, CVPR 2017).

A feature map of ``C`` channels is seen as a set of ``N = H * W`` descriptors
:math:`x_i \in \mathbb{R}^C`. The layer learns a codebook of ``K`` codewords
:math:`d_k \in \mathbb{R}^C` and one smoothing factor :math:`s_k > 0` per codeword,
and returns one aggregated residual per codeword:

.. math::

    r_{ik} = x_i - d_k, \qquad
    a_{ik} = \frac{\exp(-s_k \lVert r_{ik} \rVert^2)}
                  {\sum_{j=1}^{K} \exp(-s_j \lVert r_{ij} \rVert^2)}, \qquad
    e_k = \sum_{i=1}^{N} a_{ik} \, r_{ik}.

``a`` is a soft assignment of each descriptor to the codewords (a softmax over
``k``); ``s_k`` acts as an inverse temperature. ``E = (e_1 .. e_K)`` is
``B x K x C``, whatever the spatial size of the input.

Two ways to compute it
----------------------
:func:`encoding_direct` follows the formula literally: it builds every residual
``r_ik``, a ``B x N x K x C`` tensor (about 0.9 GB in float32 for EncNet's
``B=4, N=60*60, K=32, C=512``), and autograd keeps several of them for the
backward pass. It is here for teaching and as the test oracle.

:func:`encoding` gives the same result from two matrix products and never
builds that tensor:

.. math::

    \lVert x_i - d_k \rVert^2 = \lVert x_i \rVert^2 - 2\, x_i \cdot d_k
                                + \lVert d_k \rVert^2, \qquad
    e_k = \sum_i a_{ik} x_i - \Big(\sum_i a_{ik}\Big) d_k
        = (A^\top X)_k - \Big(\sum_i a_{ik}\Big) d_k.

Its largest intermediate is ``B x K x N``; its cost is that of the two products
``D X^T`` and ``A^T X`` (and their gradients). The expanded distance can come out
slightly negative by rounding, so it is clamped at 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _as_descriptors(x: Tensor, channels: int) -> Tensor:
    """(B, C, H, W) or (B, C, N) -> (B, C, N), checking the channel count."""
    if x.dim() not in (3, 4):
        raise ValueError(
            f"Encoding expects a (B, C, H, W) or (B, C, N) tensor, got shape {tuple(x.shape)}"
        )
    if x.size(1) != channels:
        raise ValueError(
            f"Encoding was built for {channels} channels but the input has {x.size(1)} "
            f"channels (shape {tuple(x.shape)}); build it with channels={x.size(1)} "
            f"or feed a {channels}-channel feature map"
        )
    return x.flatten(2)


def encoding_direct(x: Tensor, codewords: Tensor, smoothing: Tensor) -> Tensor:
    """The Encoding Layer computed literally from its definition (for teaching).

    Builds the ``(B, N, K, C)`` residuals ``r_ik = x_i - d_k``; use it only on small
    inputs. Shapes: x (B, C, H, W) or (B, C, N), codewords (K, C), smoothing (K,)
    -> (B, K, C).
    """
    X = _as_descriptors(x, codewords.size(1)).transpose(1, 2)  # (B, N, C)
    residuals = X.unsqueeze(2) - codewords  # r_ik: (B, N, K, C)
    distances = residuals.pow(2).sum(-1)  # ||r_ik||^2: (B, N, K)
    assignment = torch.softmax(-smoothing * distances, dim=2)  # a_ik: (B, N, K)
    return (assignment.unsqueeze(-1) * residuals).sum(1)  # e_k: (B, K, C)


def soft_assignment(x: Tensor, codewords: Tensor, smoothing: Tensor) -> Tensor:
    """The soft assignments ``a_ik`` as a (B, K, N) tensor, without residuals.

    ``||x_i - d_k||^2`` is expanded as ``||x_i||^2 - 2 x_i.d_k + ||d_k||^2`` and
    clamped at 0. Under autocast it is computed in float32: the expansion
    subtracts large, nearly equal numbers, which half precision cannot do.
    """
    X = _as_descriptors(x, codewords.size(1))  # (B, C, N)
    with torch.autocast(device_type=X.device.type, enabled=False):
        dtype = torch.promote_types(X.dtype, torch.float32)
        X, D, s = X.to(dtype), codewords.to(dtype), smoothing.to(dtype)
        x_sq = X.pow(2).sum(1, keepdim=True)  # ||x_i||^2: (B, 1, N)
        d_sq = D.pow(2).sum(1).unsqueeze(1)  # ||d_k||^2: (K, 1)
        distances = (x_sq - 2 * torch.matmul(D, X) + d_sq).clamp_min(0)  # (B, K, N)
        return torch.softmax(-s.unsqueeze(1) * distances, dim=1)  # a_ik: (B, K, N)


def encoding(x: Tensor, codewords: Tensor, smoothing: Tensor) -> Tensor:
    """The Encoding Layer from two matrix products, never building (B, N, K, C).

    ``e_k = (A^T X)_k - (sum_i a_ik) d_k``. Shapes: x (B, C, H, W) or (B, C, N),
    codewords (K, C), smoothing (K,) -> (B, K, C).
    """
    X = _as_descriptors(x, codewords.size(1))  # (B, C, N)
    A = soft_assignment(X, codewords, smoothing)  # (B, K, N)
    aggregated = torch.matmul(A.to(X.dtype), X.transpose(1, 2))  # (A^T X)_k: (B, K, C)
    return aggregated - A.sum(2, keepdim=True) * codewords  # e_k: (B, K, C)


class Encoding(nn.Module):
    r"""Encoding Layer: ``(B, C, H, W)`` or ``(B, C, N)`` -> ``(B, K, C)``.

    ``e_k = sum_i a_ik (x_i - d_k)`` with ``a_ik = softmax_k(-s_k ||x_i - d_k||^2)``,
    computed by :func:`encoding` (memory-efficient, plain PyTorch, any device).

    Parameters: ``codewords`` ``D`` (K, C), initialised uniform in
    :math:`\pm 1/\sqrt{KC}`, and ``smoothing`` ``s`` (K,), initialised uniform in
    (0, 1), as in the reference implementation (which stores ``-s`` as "scale").
    """

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        self.channels, self.num_codes = channels, num_codes
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))
        self.smoothing = nn.Parameter(torch.empty(num_codes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.num_codes * self.channels)
        nn.init.uniform_(self.codewords, -bound, bound)
        nn.init.uniform_(self.smoothing, 0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return encoding(x, self.codewords, self.smoothing)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_codes={self.num_codes}"


class EncodingDrop(Encoding):
    """Encoding Layer with "dropout-like" smoothing, used for the best CIFAR-10 model.

    The smoothing factors are not learned: in training every forward pass draws
    ``s_k ~ U(0, 1)`` afresh (a regulariser, like dropout's random mask); at test
    time they are fixed at the mean of that distribution, ``s_k = 0.5``.
    ``smoothing`` is therefore a buffer, not a parameter.
    """

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__(channels, num_codes)
        del self.smoothing
        self.register_buffer("smoothing", torch.full((num_codes,), 0.5))

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.num_codes * self.channels)
        nn.init.uniform_(self.codewords, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        smoothing = torch.rand_like(self.smoothing) if self.training else self.smoothing
        return encoding(x, self.codewords, smoothing)
