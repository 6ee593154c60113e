"""Networks: FCN and EncNet on dilated ResNets, published checkpoints (CIFAR-10's: :mod:`encnet.cifar`).

Every model is registered once (:mod:`encnet.models.registry`) and built by
:func:`build_model`; ``encnet_resnet50s(num_classes=150)``, ``fcn_small(...)``
and every other ``<model>_<backbone>`` name (torchvision's style) is
``build_model`` with its first two arguments given, for every registered model
and backbone.
"""

from __future__ import annotations

from collections.abc import Callable

from . import receptive, zoo  # receptive: registers the "aspp" and "pool" heads
from .backbones import STAGE_CHANNELS, SlimBottleneck, backbone_state_dict, dilated_resnet
from .convert import from_checkpoint, load_trained, load_weights
from .registry import ModelSpec, check_model_options, get_model, list_models, register_model
from .segmentation import FCN, EncHead, EncNet, FCNHead, SegmentationModel, build_model

__all__ = [
    "FCN",
    "STAGE_CHANNELS",
    "EncHead",
    "EncNet",
    "FCNHead",
    "ModelSpec",
    "SegmentationModel",
    "SlimBottleneck",
    "backbone_state_dict",
    "build_model",
    "check_model_options",
    "dilated_resnet",
    "from_checkpoint",
    "get_model",
    "list_models",
    "load_trained",
    "load_weights",
    "receptive",
    "register_model",
    "zoo",
]


def _builder(model: str, backbone: str) -> Callable[..., SegmentationModel]:
    def builder(**kwargs) -> SegmentationModel:
        return build_model(model, backbone, **kwargs)

    builder.__name__ = builder.__qualname__ = f"{model}_{backbone}"
    builder.__doc__ = f"``build_model({model!r}, {backbone!r}, **kwargs)``: {get_model(model).summary}"
    return builder


def __getattr__(name: str) -> Callable[..., SegmentationModel]:
    """``<model>_<backbone>``, e.g. ``encnet_resnet50s``: :func:`build_model` with those two arguments given."""
    for model in list_models():
        backbone = name.removeprefix(f"{model}_")
        if backbone != name and backbone in STAGE_CHANNELS:
            return _builder(model, backbone)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *(f"{model}_{backbone}" for model in list_models() for backbone in STAGE_CHANNELS)])
