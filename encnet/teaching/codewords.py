r"""Inside a trained Encoding Layer: each pixel's soft assignments to the codewords (notebook 02).

The Encoding Layer of a trained EncNet sees the feature map that the Context
Encoding Module's 1x1 conv gives it, ``N = h w`` descriptors of ``C`` channels,
and assigns each descriptor ``x_i`` softly to its ``K`` codewords,
``a_ik = softmax_k(-s_k ||x_i - d_k||^2)`` (:func:`encnet.nn.functional.soft_assignment`,
the function the layer itself uses). :func:`layer_input` catches the descriptors
the trained layer sees, :func:`assignments` returns the ``a_ik`` for a batch of
images as maps over the feature grid, and :func:`mean_assignments` the share of
the assignment mass each codeword gets, per scene of
:class:`encnet.data.SyntheticScenes`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..data import SyntheticScenes
from ..nn.functional import soft_assignment


def layer_input(model: nn.Module, images: Tensor) -> Tensor:
    """The descriptors the model's Encoding Layer sees for ``images`` (B, 3, H, W): (B, C, h, w).

    Caught with a forward hook during one forward pass of ``model`` (an EncNet, in eval mode): the
    output of the Context Encoding Module's 1x1 conv + BN + ReLU, exactly what the trained layer reads.
    """
    seen: dict[str, Tensor] = {}
    handle = model.head.enc_module.encoding.register_forward_hook(
        lambda module, inputs, output: seen.update(x=inputs[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen["x"]


def assignments(model: nn.Module, images: Tensor) -> Tensor:
    """``a_ik`` of the model's Encoding Layer for ``images`` (B, 3, H, W): a (B, K, h, w) tensor.

    Computed from :func:`layer_input` with the layer's own function and parameters; each map sums
    to 1 over ``k`` at every position.
    """
    layer = model.head.enc_module.encoding
    x = layer_input(model, images)
    with torch.no_grad():
        weights = soft_assignment(x, layer.codewords, layer.smoothing)  # (B, K, h w)
    return weights.view(x.shape[0], -1, *x.shape[2:])


def mean_assignments(model: nn.Module, dataset: SyntheticScenes, count: int, batch_size: int = 25) -> np.ndarray:
    """(scenes, K): per scene, the mean of ``a_ik`` over the feature-map positions of its images.

    Over the first ``count`` images of ``dataset``; each row sums to 1 (the share of the assignment
    mass each codeword gets in that scene).
    """
    sums = np.zeros((len(dataset.scenes), model.head.enc_module.encoding.num_codes))
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        weights = assignments(model, torch.stack([dataset[i][0] for i in indices])).mean((2, 3))  # (B, K)
        for index, row in zip(indices, weights.numpy()):
            sums[dataset.scene_of(index)] += row
    return sums / sums.sum(1, keepdims=True)
