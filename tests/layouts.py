"""Checkpoints in the publishers' real key layouts, made from the committed fixtures.

``tests/fixtures/layouts/*.json`` record the key names and shapes of
PyTorch-Encoding's and mmsegmentation's own modules (written by the scripts in
``tests/peers/`` from the publishers' code); the tests fill them with random
tensors.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"


def read_layout(name: str) -> dict:
    """The fixture ``name`` (without ``.json``): publisher, source, kind, num_classes, state_dict shapes."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> OrderedDict[str, Tensor]:
    """Random tensors of the recorded shapes that a network can run on without overflowing.

    Conv and linear weights ~ N(0, 1 / fan_in); BN scales and variances in
    [0.5, 1.5), means and biases ~ N(0, 0.1^2); counters int64; Encoding scales
    negative (smoothing in [0.5, 1.5)).
    """
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith((".scale", "running_var")) or (len(shape) == 1 and key.endswith(".weight")):
            sign = -1 if key.endswith(".scale") else 1
            state[key] = sign * (torch.rand(shape, generator=generator) + 0.5)
        elif len(shape) >= 2 and not key.endswith("codewords"):
            fan_in = torch.Size(shape[1:]).numel()
            state[key] = torch.randn(shape, generator=generator) / fan_in**0.5
        else:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state
