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

The layer's computation is in :mod:`encnet.nn.functional` (:func:`~encnet.nn.functional.encoding`,
the memory-efficient form this module calls, and :func:`~encnet.nn.functional.encoding_direct`,
the literal one); this module holds the layer's parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .functional import encoding

__all__ = ["Encoding", "EncodingDrop"]


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
