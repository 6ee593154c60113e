r"""The Encoding Layer as functions: ``(x, codewords, smoothing) -> E`` (Zhang et al., CVPR 2018, Sec. 3.1).

With descriptors :math:`x_i` (``x``: B x C x N), codewords :math:`d_k` (K x C) and
smoothing factors :math:`s_k` (K), the layer (:class:`encnet.nn.Encoding`) computes

.. math::

    e_k = \sum_{i=1}^{N} a_{ik} (x_i - d_k), \qquad
    a_{ik} = \frac{\exp(-s_k \lVert x_i - d_k \rVert^2)}
                  {\sum_{j=1}^{K} \exp(-s_j \lVert x_i - d_j \rVert^2)}.

- :func:`encoding`: the memory-efficient form (two matrix products, a hand-derived backward);
- :func:`encoding_direct`: the formula taken literally, for teaching and as the test oracle;
- :func:`soft_assignment`: the assignments :math:`a_{ik}` alone;
- :func:`squared_distances`: :math:`\lVert x_i - d_k \rVert^2` from one matrix product.

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

import torch
from torch import Tensor

__all__ = ["encoding", "encoding_autograd", "encoding_direct", "soft_assignment", "squared_distances"]


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


def squared_distances(X: Tensor, codewords: Tensor) -> Tensor:
    """``||x_i - d_k||^2`` as ``||x_i||^2 - 2 x_i.d_k + ||d_k||^2``, clamped at 0.

    X (B, C, N), codewords (K, C) -> (B, K, N): one matrix product, no residuals.
    """
    x_sq = torch.linalg.vector_norm(X, dim=1, keepdim=True).square()  # ||x_i||^2: (B, 1, N)
    d_sq = codewords.square().sum(1, keepdim=True)  # ||d_k||^2: (K, 1)
    return (x_sq - 2 * torch.matmul(codewords, X) + d_sq).clamp_min(0)


def _aggregate(A: Tensor, X: Tensor, codewords: Tensor) -> Tensor:
    """``E = A X^T - (sum_i a_ik) d_k``: A (B, K, N), X (B, C, N), codewords (K, C) -> (B, K, C)."""
    return torch.matmul(A, X.transpose(1, 2)) - A.sum(2, keepdim=True) * codewords


def soft_assignment(x: Tensor, codewords: Tensor, smoothing: Tensor) -> Tensor:
    """The soft assignments ``a_ik = softmax_k(-s_k ||x_i - d_k||^2)`` as a (B, K, N) tensor."""
    X = _as_descriptors(x, codewords.size(1))
    return torch.softmax(-smoothing.unsqueeze(1) * squared_distances(X, codewords), dim=1)


class _Encoding(torch.autograd.Function):
    r"""Forward and a hand-derived backward of the memory-efficient form.

    Autograd would also differentiate :func:`soft_assignment` and the
    aggregation, but it makes several extra passes over the large (B, C, N)
    input; this backward needs three matrix products and one pass.

    Forward, with ``X`` (B, C, N), ``D`` (K, C), ``dist`` and ``A`` (B, K, N):
    ``dist = ||x||^2 - 2 D X + ||d||^2``, ``L = -s * dist``, ``A = softmax_k(L)``,
    ``E = A X^T - (sum_i a_ik) d_k``.

    Backward, given ``G = dLoss/dE`` (B, K, C):

    - through ``E``: ``dA = G X - (G . D)_k`` (the second term from ``-sum_i a_ik d_k``),
      ``dX = G^T A`` and ``dD = -sum_b (sum_i a_ik) G_k``;
    - through the softmax: ``dL = A * (dA - sum_k A dA)``;
    - through ``L = -s dist``: ``ds_k = -sum_{b,i} dL_ik dist_ik``, ``d(dist) = -s dL``
      (zero where the clamp at 0 was active);
    - through ``dist``: ``dX += 2 X sum_k d(dist)_k - 2 D^T d(dist)`` and
      ``dD += 2 d_k sum_{b,i} d(dist)_ik - 2 sum_b d(dist) X^T``.

    The two products that reach ``dX`` are fused into one:
    ``G^T A - 2 D^T d(dist) = [G; -2D]^T [A; d(dist)]``.
    """

    @staticmethod
    def forward(ctx, X: Tensor, codewords: Tensor, smoothing: Tensor) -> Tensor:
        dist = squared_distances(X, codewords)  # (B, K, N)
        A = torch.softmax(-smoothing.unsqueeze(1) * dist, dim=1)  # (B, K, N)
        ctx.save_for_backward(X, codewords, smoothing, dist, A)
        return _aggregate(A, X, codewords)  # (B, K, C)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G: Tensor):
        X, D, s, dist, A = ctx.saved_tensors
        dA = torch.matmul(G, X) - (G * D).sum(2, keepdim=True)  # (B, K, N)
        dL = A * (dA - (A * dA).sum(1, keepdim=True))  # (B, K, N)
        d_dist = torch.where(dist > 0, -s.unsqueeze(1) * dL, 0)  # (B, K, N)
        d_smoothing = -(dL * dist).sum((0, 2))  # (K,)
        d_X = d_codewords = None
        if ctx.needs_input_grad[1]:
            d_codewords = (
                2 * d_dist.sum((0, 2)).unsqueeze(1) * D
                - 2 * torch.matmul(d_dist, X.transpose(1, 2)).sum(0)
                - (A.sum(2, keepdim=True) * G).sum(0)
            )  # (K, C)
        if ctx.needs_input_grad[0]:
            left = torch.cat([G, (-2 * D).expand_as(G)], dim=1)  # [G; -2D]: (B, 2K, C)
            right = torch.cat([A, d_dist], dim=1)  # [A; d(dist)]: (B, 2K, N)
            d_X = torch.matmul(left.transpose(1, 2), right)  # (B, C, N)
            d_X.addcmul_(X, 2 * d_dist.sum(1, keepdim=True))
        return d_X, d_codewords, d_smoothing


def encoding(x: Tensor, codewords: Tensor, smoothing: Tensor) -> Tensor:
    """The Encoding Layer from two matrix products, never building (B, N, K, C).

    ``e_k = (A^T X)_k - (sum_i a_ik) d_k``. Shapes: x (B, C, H, W) or (B, C, N),
    codewords (K, C), smoothing (K,) -> (B, K, C). Under autocast it runs in
    float32: the expanded distance subtracts large, nearly equal numbers, which
    half precision cannot do.

    Two paths, the same operations and numbers: a call that autograd will
    differentiate (gradients enabled and an input that requires them) goes through
    the autograd Function :class:`_Encoding` and its hand-derived backward; any
    other call (``torch.no_grad()``, inference, ``torch.onnx.export``) runs them as
    plain tensor operations (:func:`encoding_autograd`), which tracers and
    exporters see through (a custom Function is opaque to them) and which, with
    nothing to differentiate, keep nothing for a backward either.
    """
    X = _as_descriptors(x, codewords.size(1))  # (B, C, N)
    differentiated = torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export() and any(
        tensor.requires_grad for tensor in (X, codewords, smoothing))
    compute = _Encoding.apply if differentiated else encoding_autograd
    if torch.is_autocast_enabled(X.device.type):
        with torch.autocast(device_type=X.device.type, enabled=False):
            return compute(X.float(), codewords.float(), smoothing.float())
    return compute(X, codewords, smoothing)


def encoding_autograd(x: Tensor, codewords: Tensor, smoothing: Tensor) -> Tensor:
    """:func:`encoding`'s very operations, differentiated by autograd instead of the hand-derived backward.

    The reference its backward is checked against (notebook 01, the tests), and the
    measure of what that backward saves: autograd keeps every intermediate. Shapes
    as :func:`encoding`.
    """
    X = _as_descriptors(x, codewords.size(1))  # (B, C, N)
    return _aggregate(soft_assignment(X, codewords, smoothing), X, codewords)
