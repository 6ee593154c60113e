"""One registry of segmentation models: each head is registered once, and everything else reads it.

A model of this package is a dilated ResNet (:mod:`encnet.models.backbones`), a
*head* on its stages and an optional auxiliary FCN head
(:class:`encnet.models.segmentation.SegmentationModel`). What differs between
FCN, EncNet and any other model is the head alone, so a model is registered by
its head::

    @register_model("pool")
    class ImagePoolingHead(nn.Module):
        def __init__(self, channels, num_classes, *, norm_layer=nn.BatchNorm2d, width=64):
            ...
        def forward(self, features):            # {"c2", "c3", "c4"} -> {"out", "se"?}
            ...

The head (a class, or a function returning a module) takes the stages'
channels (``{"c2": C2, "c3": C3, "c4": C4}``), the class count and, as
keyword arguments with defaults, its own *options*. ``norm_layer`` is the
model's batch norm and ``se_loss`` (when present) switches an SE branch, whose
logits the head returns as ``"se"``; every other keyword argument is an option
that ``TrainConfig.model_options`` and ``build_model(..., width=32)`` may set,
read off the signature (a bool, an int or a float, by its default's type).

Everything else reads the registry: :func:`encnet.models.build_model`,
:func:`list_models` (the command line's ``--model`` choices), the options'
checks, training (``se_loss`` from ``se_weight``) and
:func:`encnet.models.from_checkpoint`, which rebuilds a checkpoint of this
package from its saved config, for any registered head.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UserError

# Keyword arguments of a head that are not its options: the builder passes them.
_GIVEN = ("channels", "num_classes", "norm_layer", "se_loss")
_OPTION_TYPES = (bool, int, float)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its name, its head and what is read off the head's signature.

    Attributes:
        name: what ``build_model``, ``--model`` and ``TrainConfig.model`` call it.
        head: ``head(channels, num_classes, *, norm_layer, [se_loss,] **options) -> nn.Module``.
        model_class: the :class:`~encnet.models.segmentation.SegmentationModel` subclass built around it.
        options: the head's own options and their defaults.
        se_branch: the head takes ``se_loss`` (an SE branch, output ``"se"``, trained with the SE-loss).
        summary: the first line of the head's docstring.
        head_first: build the head before the backbone. The order decides which random
            numbers each part's initial weights draw; EncNet keeps the order its
            committed runs (notebooks/results/) were trained with, so that a seed
            still gives those runs' initial weights.
    """

    name: str
    head: Callable[..., nn.Module]
    model_class: type[nn.Module]
    options: dict[str, Any]
    se_branch: bool
    summary: str
    head_first: bool = False


_REGISTRY: dict[str, ModelSpec] = {}


def _options_of(name: str, head: Callable[..., nn.Module]) -> tuple[dict[str, Any], bool]:
    """(options with their defaults, takes se_loss) from the signature of ``head``."""
    parameters = list(inspect.signature(head).parameters.values())
    if [p.name for p in parameters[:2]] != ["channels", "num_classes"]:
        raise TypeError(f"the head of model {name!r} must take (channels, num_classes, *, ...) first, "
                        f"got ({', '.join(p.name for p in parameters[:2])})")
    options = {}
    for parameter in parameters[2:]:
        if parameter.name in _GIVEN:
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD or not isinstance(parameter.default, _OPTION_TYPES):
            raise TypeError(f"option {parameter.name!r} of model {name!r} needs a default that is a bool, an int "
                            f"or a float (it goes into TrainConfig.model_options), got {parameter.default!r}")
        options[parameter.name] = parameter.default
    return options, any(p.name == "se_loss" for p in parameters)


def register_model(name: str, *, model_class: type[nn.Module] | None = None, head_first: bool = False) -> Callable:
    """Register the decorated head as model ``name``; ``model_class`` defaults to ``SegmentationModel``.

    ``head_first`` builds the head before the backbone (see :class:`ModelSpec`).
    """

    def register(head: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is registered already (by {_REGISTRY[name].head.__qualname__})")
        from .segmentation import SegmentationModel  # the registry is imported by segmentation.py

        options, se_branch = _options_of(name, head)
        summary = (inspect.getdoc(head) or name).splitlines()[0]
        _REGISTRY[name] = ModelSpec(
            name, head, model_class or SegmentationModel, options, se_branch, summary, head_first
        )
        return head

    return register


def list_models() -> tuple[str, ...]:
    """The registered model names, in the order of registration ("fcn", "encnet", ...)."""
    return tuple(_REGISTRY)


def get_model(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; an unknown name is an error listing the valid ones."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def check_model_options(model: str, options: dict[str, Any]) -> None:
    """Raise :class:`UserError` unless ``options`` are head options of ``model`` with valid values.

    A flag (default True or False) must be a bool; a count (default an int) a
    positive int; a number (default a float) a finite number >= 0.
    """
    valid = get_model(model).options
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(
            f"model_options {unknown} are not options of the {model} model (its options: "
            f"{', '.join(sorted(valid)) or 'none'}); they may come with a preset of another model: start from a "
            f"preset of {model}, or leave them out"
        )
    for name, value in options.items():
        default = valid[name]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"model_options {name!r} of {model} must be true or false, got {value!r}")
            continue
        count = isinstance(default, int)
        number = isinstance(value, int if count else (int, float)) and not isinstance(value, bool)
        if not number or not (value > 0 if count else 0 <= value < math.inf):
            what = "a positive integer" if count else "a finite number >= 0"
            raise UserError(f"model_options {name!r} of {model} must be {what}, got {value!r}")
