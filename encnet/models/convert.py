r"""Published checkpoints into encnet's models: key layouts, conversion, strict loading.

Three projects publish EncNet weights, each with its own names for the same tensors:

==================  =====================================  =======================================
layout              recognised by                          what it is
==================  =====================================  =======================================
encnet              ``{"format": "encnet-checkpoint-2"}``  a run of ``encnet train``
                    or keys ``backbone.*`` + ``head.*``     (or its bare ``state_dict``)
PyTorch-Encoding    keys ``pretrained.*`` + ``head.*``     the authors' ``EncNet`` / ``FCN`` modules
mmsegmentation      ``{"state_dict": {"backbone.*",        an ``EncoderDecoder``: ResNetV1c +
                    "decode_head.*", ...}}``               ``EncHead`` (+ ``FCNHead`` auxiliary)
==================  =====================================  =======================================

:func:`from_checkpoint` renames a publisher's keys to encnet's with the tables
:data:`REFERENCE_KEYS` and :data:`MMSEG_KEYS` (first matching prefix wins),
reads the architecture off the renamed tensors (backbone depth and stem,
classes, codewords, lateral path, SE branch, auxiliary head) and loads them
strictly: every key of the file is used, and every tensor of the model comes
from the file. The only value that changes is the Encoding's smoothing: both
publishers store a negative ``scale`` and compute ``softmax(scale_k ||r_ik||^2)``,
so :math:`s_k = -\mathrm{scale}_k`.

Two things are not weights and are dropped, said here so nothing is silent: the
ImageNet classifier ``pretrained.fc.*`` that some backbone files keep, and
nothing else. ``num_batches_tracked`` counters that a file lacks are set to 0
(they only matter to a BatchNorm built with ``momentum=None``).

Files are read with ``torch.load(weights_only=True)``: tensors and plain
containers only. A file that needs any other pickled object is refused with the
object's name; if it is a harmless plain type, allow it explicitly
(``from_checkpoint(path, allow=[thing])``, :func:`torch.serialization.safe_globals`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, check_checkpoint, load_checkpoint, load_model_state, read_torch_file
from ..data import DATASETS
from ..errors import UserError
from ..inference import Protocol
from . import zoo
from .segmentation import build_model
from .zoo import Published

StateDict = dict[str, Tensor]
Source = str | os.PathLike | dict

REFERENCE_KEYS: tuple[tuple[str, str], ...] = (
    ("pretrained.", "backbone."),
    ("head.conv5.", "head.conv."),
    ("head.connect.0.", "head.lateral.c2."),
    ("head.connect.1.", "head.lateral.c3."),
    ("head.fusion.", "head.fusion."),
    ("head.encmodule.encoding.0.", "head.enc_module.reduce.0."),  # 1x1 conv
    ("head.encmodule.encoding.1.", "head.enc_module.reduce.1."),  # its BN
    ("head.encmodule.encoding.3.", "head.enc_module.encoding."),  # Encoding: codewords, scale
    ("head.encmodule.encoding.4.", "head.enc_module.codes_norm."),  # BatchNorm1d over the K codes
    ("head.encmodule.fc.0.", "head.enc_module.attention."),
    ("head.encmodule.selayer.", "head.enc_module.se_classifier."),
    ("head.conv6.1.", "head.classifier.1."),  # conv6 = Dropout, 1x1 conv
    ("auxlayer.conv5.0.", "aux_head.0.0."),  # FCNHead: 3x3 conv, BN, ReLU, Dropout, 1x1 conv
    ("auxlayer.conv5.1.", "aux_head.0.1."),
    ("auxlayer.conv5.4.", "aux_head.2."),
)
"""PyTorch-Encoding's ``EncNet`` (``encoding/models/sseg/encnet.py``) -> encnet's, by key prefix."""

REFERENCE_FCN_KEYS: tuple[tuple[str, str], ...] = (
    ("pretrained.", "backbone."),
    ("head.conv5.0.", "head.0.0."),
    ("head.conv5.1.", "head.0.1."),
    ("head.conv5.4.", "head.2."),
    *REFERENCE_KEYS[-3:],
)
"""PyTorch-Encoding's ``FCN`` (its head is the same FCNHead as the auxiliary one) -> encnet's."""

MMSEG_KEYS: tuple[tuple[str, str], ...] = (
    ("backbone.stem.7.", "backbone.bn1."),  # ResNetV1c stem: conv, BN, ReLU (x3); the last BN is bn1
    ("backbone.stem.", "backbone.conv1."),
    ("backbone.layer", "backbone.layer"),
    ("decode_head.bottleneck.conv.", "head.conv.0."),
    ("decode_head.bottleneck.bn.", "head.conv.1."),
    ("decode_head.lateral_convs.0.conv.", "head.lateral.c2.0."),
    ("decode_head.lateral_convs.0.bn.", "head.lateral.c2.1."),
    ("decode_head.lateral_convs.1.conv.", "head.lateral.c3.0."),
    ("decode_head.lateral_convs.1.bn.", "head.lateral.c3.1."),
    ("decode_head.fusion.conv.", "head.fusion.0."),
    ("decode_head.fusion.bn.", "head.fusion.1."),
    ("decode_head.enc_module.encoding_project.conv.", "head.enc_module.reduce.0."),
    ("decode_head.enc_module.encoding_project.bn.", "head.enc_module.reduce.1."),
    ("decode_head.enc_module.encoding.0.", "head.enc_module.encoding."),  # Encoding: codewords, scale
    ("decode_head.enc_module.encoding.1.", "head.enc_module.codes_norm."),
    ("decode_head.enc_module.fc.0.", "head.enc_module.attention."),
    ("decode_head.se_layer.", "head.enc_module.se_classifier."),
    ("decode_head.conv_seg.", "head.classifier.1."),
    ("auxiliary_head.convs.0.conv.", "aux_head.0.0."),
    ("auxiliary_head.convs.0.bn.", "aux_head.0.1."),
    ("auxiliary_head.conv_seg.", "aux_head.2."),
)
"""mmsegmentation's ``EncoderDecoder`` (ResNetV1c, ``EncHead``, ``FCNHead``) -> encnet's, by key prefix."""

RENAMED_KEYS: tuple[tuple[str, str], ...] = (("head.encoding.", "head.enc_module."),)
"""encnet's own earlier names -> today's: the Context Encoding Module was ``head.encoding`` until 0.1."""

PUBLISHERS = {"encnet": "encnet", "reference": "PyTorch-Encoding", "mmseg": "mmsegmentation"}
"""Layout name -> who writes it."""

_DROPPED = ("pretrained.fc.",)


def _rename(state: StateDict, table: tuple[tuple[str, str], ...], dropped: tuple[str, ...] = ()) -> StateDict:
    """Rename every key by the first matching prefix of ``table``; a key no row matches is an error."""
    renamed, unknown = {}, []
    for key, value in state.items():
        if key.startswith(dropped):
            continue
        row = next(((old, new) for old, new in table if key.startswith(old)), None)
        if row is None:
            unknown.append(key)
            continue
        renamed[row[1] + key[len(row[0]):]] = value
    if unknown:
        raise CheckpointError(
            f"the checkpoint has {len(unknown)} keys that no supported EncNet/FCN part uses, e.g. "
            f"{unknown[:3]}; encnet converts the EncNet (EncHead) and FCN heads of PyTorch-Encoding and "
            "mmsegmentation with a one-conv auxiliary FCNHead, not this model"
        )
    for key in [key for key in renamed if key.endswith("enc_module.encoding.scale")]:
        renamed[key.removesuffix("scale") + "smoothing"] = -renamed.pop(key)  # s_k = -scale_k
    return renamed


def _key_layout(checkpoint: Any, source: str) -> tuple[str, StateDict]:
    """(key layout name, the file's tensors) of a loaded checkpoint."""
    if isinstance(checkpoint, dict) and "format" in checkpoint:  # written by encnet train: the same rule as train's
        return "encnet", check_checkpoint(checkpoint, source)["model"]
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        found = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"not a checkpoint encnet knows: expected a state dict (tensors by name) or a dict with 'state_dict' "
            f"or an encnet checkpoint, found {found}"
        )
    state = {key.removeprefix("module."): value for key, value in state.items()}  # saved from DataParallel
    prefixes = {key.split(".")[0] for key in state}
    if {"backbone", "decode_head"} <= prefixes:
        return "mmseg", state
    if {"pretrained", "head"} <= prefixes:
        return "reference", state
    if {"backbone", "head"} <= prefixes:
        return "encnet", state
    if any(key.startswith(("conv1.", "stem.", "layer1.")) for key in state):
        raise CheckpointError(
            "this is a backbone-only checkpoint (keys like 'conv1.*', 'layer1.*'), not a segmentation model; "
            "pass it as weights_backbone (or --weights-backbone) of a model to train"
        )
    raise CheckpointError(
        f"unknown checkpoint layout: top-level key prefixes {sorted(prefixes)[:8]}; encnet reads its own "
        "checkpoints ('backbone', 'head'), PyTorch-Encoding's ('pretrained', 'head', 'auxlayer') and "
        "mmsegmentation's ('backbone', 'decode_head', 'auxiliary_head' under 'state_dict')"
    )


def to_encnet_keys(layout: str, state: StateDict) -> StateDict:
    """The file's tensors under encnet's names (see the tables above)."""
    if layout == "mmseg":
        return _rename(state, MMSEG_KEYS)
    if layout == "reference":
        encnet = any(key.startswith("head.encmodule.") for key in state)
        return _rename(state, REFERENCE_KEYS if encnet else REFERENCE_FCN_KEYS, _DROPPED)
    return upgrade_keys(state)


def upgrade_keys(state: StateDict) -> StateDict:
    """An encnet state dict under today's names (:data:`RENAMED_KEYS`); today's keys are kept as they are."""
    renamed = {}
    for key, value in state.items():
        old, new = next(((old, new) for old, new in RENAMED_KEYS if key.startswith(old)), (None, None))
        renamed[key if old is None else new + key[len(old):]] = value
    return renamed


def _backbone_name(state: StateDict) -> str:
    """Depth and stem of the backbone whose tensors are ``state`` (encnet names)."""
    blocks = {int(key.split(".")[2]) for key in state if key.startswith("backbone.layer3.")}
    if "backbone.conv1.6.weight" in state:
        stem = {128: "s", 64: "_v1c"}.get(state["backbone.conv1.6.weight"].shape[0])
    else:
        stem = "" if "backbone.conv1.weight" in state else None
    depth = {6: "50", 23: "101"}.get(len(blocks))
    if state.get("backbone.layer4.0.conv3.weight", torch.empty(0)).shape[:1] == (512,) and len(blocks) == 1:
        return "small"
    if stem is None or depth is None:
        raise CheckpointError(
            f"unsupported backbone: {len(blocks)} blocks in stage 3 and a stem "
            f"{'of three convs' if 'backbone.conv1.6.weight' in state else 'encnet does not know'}; "
            "encnet builds ResNet-50/101 with torchvision's, PyTorch-Encoding's or mmsegmentation's stem"
        )
    return f"resnet{depth}{stem}"


def architecture(state: StateDict) -> dict[str, Any]:
    """``build_model`` arguments read off a state dict in encnet's names."""
    encnet = "head.enc_module.encoding.codewords" in state
    classifier = state.get("head.classifier.1.weight" if encnet else "head.2.weight")
    if classifier is None:
        raise CheckpointError("the checkpoint has no classifier ('head.classifier.1.weight' or 'head.2.weight')")
    options: dict[str, Any] = {
        "model": "encnet" if encnet else "fcn",
        "backbone": _backbone_name(state),
        "num_classes": classifier.shape[0],
        "aux": "aux_head.0.0.weight" in state,
    }
    if encnet:
        options.update(
            se_loss="head.enc_module.se_classifier.weight" in state,
            lateral="head.lateral.c2.0.weight" in state,
            num_codes=state["head.enc_module.encoding.codewords"].shape[0],
        )
    return options


def from_checkpoint(
    path_or_state: Source,
    *,
    num_classes: int | None = None,
    map_location: Any = "cpu",
    allow: Iterable[Any] = (),
) -> nn.Module:
    """The segmentation model of a checkpoint of encnet, PyTorch-Encoding or mmsegmentation, in eval mode.

    A ``checkpoint.pt`` of ``encnet train`` is rebuilt from its saved config (any
    registered model, :mod:`encnet.models.registry`); a bare state dict and the
    publishers' files, which carry no config, from their tensors (FCN or EncNet).

    Args:
        path_or_state: a file, or what ``torch.load`` returned for one.
        num_classes: if given, the class count the checkpoint must have (an error otherwise).
        map_location: where the tensors go (``torch.load``'s argument).
        allow: objects ``torch.load(weights_only=True)`` may rebuild besides plain data
            (for a trusted file that pickles a harmless type).

    The model returns ``{"out", "aux"?, "se"?}`` like every encnet model, upsampled
    with the publisher's ``align_corners`` (True for PyTorch-Encoding). Its
    ``publisher`` attribute names whose layout the file had, ``num_classes`` its
    class count, ``protocol`` its test (:class:`encnet.inference.Protocol`: the
    publisher's, or sliding windows of the training crop); ``classes`` are the
    class names (an encnet checkpoint's own, else those of the dataset with
    that many classes: ADE20K 150, PASCAL-Context 59, VOC 21; None otherwise).
    """
    source = "the given state dict" if isinstance(path_or_state, dict) else repr(str(path_or_state))
    checkpoint = path_or_state if isinstance(path_or_state, dict) else read_torch_file(
        path_or_state, map_location=map_location, allow=allow)
    layout, state = _key_layout(checkpoint, source)
    state = to_encnet_keys(layout, state)
    if layout == "encnet" and "config" in checkpoint:  # a run of this package: any registered model
        model, config = _from_config(checkpoint)
        found, protocol = checkpoint["num_classes"], Protocol(crop_size=config.crop_size)
    else:  # a bare state dict, or a publisher's file: the architecture is read off the tensors
        options = architecture(state)
        found = options["num_classes"]
        model = build_model(options.pop("model"), options.pop("backbone"), **options,
                            align_corners=layout == "reference")
        protocol = {"reference": zoo.REFERENCE, "mmseg": zoo.MMSEG_ADE20K}.get(layout, Protocol())
    if num_classes is not None and num_classes != found:
        raise CheckpointError(
            f"{source} holds a model for {found} classes, not num_classes={num_classes}; "
            f"pass num_classes={found} (or none), or a checkpoint trained on your dataset"
        )
    load_model_state(model, state, what=f"the weights of {source}",
                     target="the model built from them", counters_optional=True,
                     hint="the head differs from the EncNet/FCN heads encnet builds (head width C/4, one-conv "
                          "auxiliary head)")
    model.publisher, model.num_classes, model.protocol = PUBLISHERS[layout], found, protocol
    model.classes = tuple(checkpoint["classes"]) if layout == "encnet" and "classes" in checkpoint else next(
        (dataset.classes for dataset in DATASETS.values() if dataset.num_classes == found), None)
    return model.eval()


def _from_config(checkpoint: dict[str, Any]) -> tuple[nn.Module, Any]:
    """(the model a checkpoint of this package describes, untrained; its :class:`~encnet.config.TrainConfig`)."""
    from ..config import TrainConfig  # encnet.config imports encnet.models

    config = TrainConfig.from_dict(checkpoint["config"])
    return config.build_model(checkpoint["num_classes"], pretrained=False), config


def load_trained(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, Any, dict]:
    """``(model, config, checkpoint)`` of a ``checkpoint.pt`` written by ``encnet train``; the model in eval mode.

    The model is rebuilt from the checkpoint's :class:`~encnet.config.TrainConfig`
    (any registered model) and loaded strictly; ``checkpoint`` is what
    :func:`encnet.checkpoint.load_checkpoint` returned (checksum checked).
    """
    checkpoint = load_checkpoint(path)
    model, config = _from_config(checkpoint)
    load_model_state(model, upgrade_keys(checkpoint["model"]))
    return model.to(device).eval(), config, checkpoint


def load_weights(
    name_or_path: str | os.PathLike, *, num_classes: int | None = None, progress: bool = True
) -> tuple[nn.Module, Published | None]:
    """``(model, entry)``: a published name is fetched, a path read; ``entry`` is None for a path."""
    entry = zoo.PUBLISHED.get(str(name_or_path))
    if entry is not None and entry.kind != "segmentation":
        raise UserError(f"{entry.name!r} is an ImageNet backbone, not a segmentation model; "
                         "pass it as --weights-backbone of a model to train")
    path = entry.fetch(progress=progress) if entry is not None else Path(name_or_path)
    if entry is None and not path.is_file():
        raise UserError(
            f"{str(name_or_path)!r} is neither a published name nor a file; valid names: "
            f"{', '.join(name for name, e in zoo.PUBLISHED.items() if e.kind == 'segmentation')}"
        )
    return from_checkpoint(path, num_classes=num_classes), entry
