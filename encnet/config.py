"""Training configurations: one dataclass, :class:`TrainConfig`, and named presets.

A run is fully described by a :class:`TrainConfig` (it is saved in every
checkpoint). Presets are ready-made configs; flags of the command line, or
:func:`dataclasses.replace` in Python, override their fields::

    from dataclasses import replace
    from encnet.config import preset
    config = replace(preset("synthetic"), epochs=4, se_weight=0.8)

The recipe follows the reference implementation (PyTorch-Encoding, by the paper's first author):
SGD with momentum 0.9 and weight decay 1e-4; the head at 10x the backbone's
learning rate; the poly schedule ``lr * (1 - t / T) ** 0.9`` per iteration;
loss ``CE + aux_weight * CE(aux) + se_weight * BCE(se)``. ``lr`` is the rate for
a global batch of 16 images and is scaled by ``batch_size / 16``.

``batch_size`` is the *global* batch: under ``torchrun --nproc_per_node=N`` each
of the N processes takes ``batch_size / N`` images, so the same config gives
the same recipe on 1 or on 8 GPUs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from . import data, losses, models
from .errors import UserError

BACKBONES = tuple(models.STAGE_CHANNELS)
MAX_SEED = 2**31 - 1  # seed + rank must stay a 32-bit seed of numpy
DATASETS = tuple(data.DATASETS)
AMP_MODES = ("off", "bf16", "fp16")  # mixed precision: none, bfloat16 autocast, float16 autocast + GradScaler
SYNC_BN_MODES = ("auto", "encnet", "torch", "off")  # batch norm across processes (encnet.distributed.sync_bn_kind)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        dataset: one of :data:`DATASETS`; ``data_root`` is its folder (None for "synthetic").
        dataset_options: extra keyword arguments of ``encnet.data.build_dataset``
            (the synthetic scenes' sizes, VOC's ``aug``).
        model, backbone: ``encnet.models.build_model(model, backbone)``; ``model`` is
            a name of ``encnet.models.list_models()`` (registered heads).
        weights_backbone: ImageNet weights of the backbone: a torchvision name for
            resnet50/101 (e.g. "IMAGENET1K_V1"), the publisher's name for the deep-stem
            backbones ("resnet50s", "resnet50_v1c", ...: ``encnet.models.zoo``), or a
            local file; None trains it from scratch.
        model_options: the head's own options, ``encnet.models.get_model(model).options``
            (EncNet's ``lateral`` path and its codewords ``num_codes``); those equal to
            the model's defaults are left out, so that equal models compare equal.
        loss: the training loss, by its name in :data:`encnet.losses.LOSSES`; its
            constructor's arguments are read from the fields of the same names
            ("encnet": CE + ``aux_weight`` CE(aux) + ``se_weight`` BCE(se)).
        se_weight: alpha of the SE-loss; 0 builds EncNet without the SE branch.
            A model without an SE branch (FCN) always has se_weight 0.
        aux_weight: weight of the auxiliary head's CE; 0 builds no auxiliary head.
        dropout: if set, the probability of every Dropout layer of the model
            (the heads use 0.1); None keeps the model's.
        epochs, batch_size (global), lr (for a batch of 16), momentum,
        weight_decay, head_lr_mult, poly_power: the optimisation recipe.
        crop_size, base_size: training crop and the size the random scaling is relative to.
        workers: DataLoader worker processes per rank.
        channels_last: keep the model's weights and the training images in the NHWC layout
            (``torch.channels_last``), on which oneDNN's convolutions run faster on a CPU
            (``benchmarks/train.py`` measures it). The same model and maths; a run differs from
            its NCHW twin by float rounding and by its dropout masks (drawn in memory order).
        amp: mixed precision (automatic mixed precision, ``torch.autocast``) of the training step's
            forward pass and loss, and of the validation's forward passes: "off" (float32), "bf16"
            (bfloat16) or "fp16" (float16, with a ``torch.amp.GradScaler`` whose state is saved in
            the checkpoints). The weights, the optimiser and the Encoding Layer's distances and
            soft assignment stay float32 (:func:`encnet.nn.functional.encoding`).
        sync_bn: batch norm over the processes of a multi-process run (one process: plain batch
            norm, whatever this says): "encnet" (:class:`encnet.nn.SyncBatchNorm`, any device),
            "torch" (``torch.nn.SyncBatchNorm``, CUDA with NCCL only), "off" (each process
            normalises its own share of the batch) or "auto" (torch's on CUDA with NCCL, else
            encnet's); see :func:`encnet.distributed.sync_bn_kind`.
        seed: seeds the model's initialisation, the data order and the augmentation.
        device: "auto" (the rank's GPU if there is one, else CPU), "cpu", "cuda" or "cuda:N".
        eval_every: evaluate on the validation split every this many epochs (and after the last).
        max_loss: training stops (diverged) when a global batch's loss exceeds this. The
            loss starts near ``1.2 ln K + 0.2 ln 2`` (CE and aux CE over K classes, SE-loss):
            3.5 for the 17 synthetic classes, 6.2 for ADE20K's 150, and only falls from
            there; 100 is 16x the largest, reached only by logits ~100 apart, i.e. a run
            that diverged (``--lr 20`` on synthetic-quick passes it at its 2nd iteration).
        check_every: look for NaN or inf in the weights and batch-norm statistics every this
            many steps (one fused reduction whose result travels with the next step's loss, so
            it costs no host synchronisation of its own); the weights are always checked before
            a checkpoint is written.
        compile: run the model through ``torch.compile`` for training and for the validation.
        tensorboard: also log the losses, learning rate, speed, validation scores and a few
            predictions for TensorBoard, into ``<out>/tensorboard/`` (:mod:`encnet.tensorboard`;
            needs ``out`` and the tensorboard package).
        out: folder for checkpoint.pt, log.jsonl and metrics.json; None writes nothing.
        resume: a checkpoint.pt to continue from.
    """

    dataset: str = field(metadata={"help": "the dataset (its options: dataset_options)"})
    epochs: int = field(metadata={"help": "passes over the training split"})
    lr: float = field(metadata={"help": "learning rate for a batch of 16 (scaled by batch-size / 16)"})
    crop_size: int = field(metadata={"help": "training crop (and evaluation window)"})
    base_size: int = field(metadata={"help": "the size the random scaling of training images is relative to"})
    data_root: str | None = field(default=None, metadata={"help": "the dataset's folder (not needed for synthetic)"})
    dataset_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": 'the dataset\'s own options, a JSON object, e.g. \'{"aug": true}\' for voc'})
    model: str = field(default="encnet", metadata={
        "help": "the registered model (the head options of the preset that it does not take are dropped)"})
    backbone: str = field(default="resnet50", metadata={"help": "the dilated ResNet"})
    model_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": 'the head\'s own options, a JSON object, e.g. \'{"num_codes": 16}\' for encnet'})
    weights_backbone: str | None = field(default=None, metadata={
        "help": 'ImageNet weights name (e.g. "IMAGENET1K_V1"), a local .pth file, or "none" (from scratch)'})
    loss: str = field(default="encnet", metadata={"help": "the loss, by its name in encnet.losses.LOSSES"})
    se_weight: float = field(default=0.2, metadata={"help": "alpha of the SE-loss (0: EncNet without the SE branch)"})
    aux_weight: float = field(default=0.2, metadata={
        "help": "weight of the auxiliary FCN loss (0: no auxiliary head)"})
    dropout: float | None = field(default=None, metadata={
        "help": "probability of the heads' Dropout layers (default: the model's 0.1)"})
    batch_size: int = field(default=16, metadata={"help": "global batch, split over the torchrun processes"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "SGD weight decay"})
    head_lr_mult: float = field(default=10.0, metadata={"help": "the head's learning rate over the backbone's"})
    poly_power: float = field(default=0.9, metadata={"help": "power of the poly learning-rate schedule"})
    workers: int = field(default=4, metadata={"help": "DataLoader workers per process"})
    channels_last: bool = field(default=False, metadata={"help": "NHWC memory format (faster convolutions on CPU)"})
    amp: str = field(default="off", metadata={
        "help": "mixed precision: off (float32, default), bf16, or fp16 (with a gradient scaler)"})
    sync_bn: str = field(default="auto", metadata={
        "help": "batch norm across processes: auto (default: torch's on CUDA+NCCL, else encnet's), encnet, torch, off"})
    seed: int = field(default=0, metadata={"help": "seeds the initialisation, the data order and the augmentation"})
    device: str = field(default="auto", metadata={"help": '"auto" (default), "cpu", "cuda" or "cuda:N"'})
    eval_every: int = field(default=1, metadata={"help": "evaluate every this many epochs"})
    max_loss: float = field(default=100.0, metadata={
        "help": "stop (diverged) when a batch's loss exceeds this (default 100)"})
    check_every: int = field(default=1, metadata={
        "help": "look for NaN/inf weights every this many steps (default 1; always before a checkpoint)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model for training and validation"})
    tensorboard: bool = field(default=False, metadata={
        "help": "log losses, lr, speed, scores and predictions for TensorBoard into <out>/tensorboard/"})
    out: str | None = field(default=None, metadata={"help": "folder for checkpoint.pt, log.jsonl, metrics.json"})
    resume: str | None = field(default=None, metadata={"help": "checkpoint.pt to continue from"})

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("model", self.model, models.list_models())
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("loss", self.loss, tuple(losses.LOSSES))
        _check_dataset_options(self.dataset, self.dataset_options)
        models.check_model_options(self.model, self.model_options)
        defaults = models.get_model(self.model).options
        object.__setattr__(self, "model_options",
                           {name: value for name, value in self.model_options.items() if value != defaults[name]})
        for name in ("epochs", "batch_size", "crop_size", "base_size", "eval_every", "check_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "head_lr_mult", "max_loss"):  # max_loss may be inf: no bound
            if not getattr(self, name) > 0 or (name != "max_loss" and not math.isfinite(getattr(self, name))):
                raise UserError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("se_weight", "aux_weight", "momentum", "weight_decay", "poly_power"):
            if not 0 <= getattr(self, name) < math.inf:
                raise UserError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"dropout must lie in [0, 1) or be None, got {self.dropout!r}")
        if self.workers < 0:
            raise UserError(f"workers must be >= 0, got {self.workers!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be an integer from 0 to {MAX_SEED} (numpy's seeds are 32-bit, and each "
                            f"process adds its rank), got {self.seed!r}")
        if self.amp not in AMP_MODES:
            raise UserError(f"amp must be one of {', '.join(AMP_MODES)} (float32, bfloat16 or float16 mixed "
                            f"precision), got {self.amp!r}; pass e.g. --amp bf16")
        if self.sync_bn not in SYNC_BN_MODES:
            raise UserError(f"sync_bn must be one of {', '.join(SYNC_BN_MODES)}, got {self.sync_bn!r}; "
                            "pass e.g. --sync-bn auto")
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not models.get_model(self.model).se_branch:
            object.__setattr__(self, "se_weight", 0.0)

    def build_model(self, num_classes: int, *, pretrained: bool = True) -> nn.Module:
        """The model this config trains; ``pretrained=False`` skips ``weights_backbone`` (a checkpoint follows).

        ``encnet.models.build_model(model, backbone)`` with the head's
        ``model_options``, an auxiliary head if ``aux_weight`` > 0, the SE branch
        (for a model that has one) if ``se_weight`` > 0, and ``dropout`` if set.
        """
        options: dict[str, Any] = {"aux": self.aux_weight > 0, **self.model_options}
        if models.get_model(self.model).se_branch:
            options["se_loss"] = self.se_weight > 0
        weights = self.weights_backbone if pretrained else None
        model = models.build_model(self.model, self.backbone, num_classes=num_classes, weights_backbone=weights,
                                   **options)
        if self.dropout is not None:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = self.dropout
        return model

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (for JSON and for checkpoints loaded with ``weights_only=True``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; unknown keys are an error.

        Configs written before ``model_options`` existed (checkpoints, sweep files)
        have EncNet's ``lateral`` and ``num_codes`` at the top level: they are moved
        into ``model_options`` for a model that takes them, dropped otherwise (FCN
        never used them).
        """
        values = _moved_model_options(values)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown config fields {unknown}; valid fields: {sorted(names)}")
        return cls(**values)


_MOVED_TO_MODEL_OPTIONS = ("lateral", "num_codes")  # top-level fields of the configs of encnet 0.1


def _moved_model_options(values: dict[str, Any]) -> dict[str, Any]:
    moved = {name: values[name] for name in _MOVED_TO_MODEL_OPTIONS if name in values}
    if not moved:
        return values
    model = values.get("model", "encnet")
    takes = models.get_model(model).options if model in models.list_models() else {}
    options = {**{name: value for name, value in moved.items() if name in takes}, **values.get("model_options", {})}
    rest = {name: value for name, value in values.items() if name not in moved}
    return {**rest, "model_options": options}


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        plural = f"{name}es" if name.endswith("s") else f"{name}s"
        raise UserError(f"unknown {name} {value!r}; valid {plural}: {', '.join(valid)}")


def _check_dataset_options(dataset: str, options: dict[str, Any]) -> None:
    # The options a dataset takes are read from its signature (encnet.data.dataset_options), not kept here.
    takes = data.dataset_options(dataset)
    unknown = sorted(set(options) - set(takes))
    if unknown:
        valid = ", ".join(takes) or "none"
        raise UserError(
            f"dataset_options {unknown} are not options of the {dataset} dataset (its options: {valid}); they may "
            f"come with a preset of another dataset: start from a preset of {dataset} rather than changing "
            "--dataset (`encnet train --help` lists the presets)"
        )


# The synthetic scenes (128 x 64 images: the scene cues out of the small FCN's reach), trained until the
# validation mIoU stops improving (notebook 03 draws every run's curve), evaluated after every epoch for
# those curves. data/README.md has the table measured with these settings; benchmarks/train.py times them.
_SYNTHETIC = TrainConfig(
    dataset="synthetic",
    dataset_options={"image_size": 128, "train_samples": 2000, "val_samples": 500},
    backbone="small",
    epochs=8,
    batch_size=16,
    lr=0.01,
    crop_size=128,
    base_size=128,
    workers=0,
    eval_every=1,
    channels_last=True,
)

# Reference recipes (PyTorch-Encoding's experiments/segmentation, whose default epochs are ADE20K 180,
# PASCAL-Context 80, VOC-aug 80): the paper's deep-stem backbones ResNet-50s / 101s from the reference's own
# ImageNet weights, batch 16, crop 480 from base 520.
_REFERENCE = {"batch_size": 16, "crop_size": 480, "base_size": 520}
_R50S = {"backbone": "resnet50s", "weights_backbone": "resnet50s"}
_R101S = {"backbone": "resnet101s", "weights_backbone": "resnet101s"}
_LATERAL = {"lateral": True}

PRESETS: dict[str, TrainConfig] = {
    "synthetic": _SYNTHETIC,
    "synthetic-quick": dataclasses.replace(
        _SYNTHETIC,
        dataset_options={"image_size": 128, "train_samples": 32, "val_samples": 16},
        epochs=2,
        batch_size=8,
        eval_every=1,
    ),
    "ade20k-encnet-r50": TrainConfig(dataset="ade20k", epochs=180, lr=0.004, **_R50S, **_REFERENCE),
    "ade20k-encnet-r101": TrainConfig(
        dataset="ade20k", epochs=180, lr=0.004, **_R101S, **{**_REFERENCE, "crop_size": 576, "base_size": 640}
    ),
    # The lateral path from stages 2 and 3 is the reference's choice on the PASCAL datasets.
    "pcontext-encnet-r50": TrainConfig(dataset="pcontext", epochs=80, lr=0.001, model_options=_LATERAL, **_R50S,
                                       **_REFERENCE),
    "pcontext-encnet-r101": TrainConfig(
        dataset="pcontext", epochs=80, lr=0.001, model_options=_LATERAL, **_R101S, **_REFERENCE
    ),
    "voc-encnet-r101": TrainConfig(
        dataset="voc", dataset_options={"aug": True}, epochs=80, lr=0.001, model_options=_LATERAL, **_R101S,
        **_REFERENCE
    ),
}


def preset(name: str) -> TrainConfig:
    """The preset ``name``; an unknown name is an error listing the valid ones."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]
