"""mmsegmentation's own EncNet, built on the CPU with plain BatchNorm, for the peer checks.

Used by ``make_layouts.py`` and ``test_mmseg_equality.py`` in the peers environment
(``make peers``: mmsegmentation 1.2.2, mmengine, mmcv-lite), never by ``encnet``.

Why a placeholder for ``mmcv.ops``. mmcv-lite is mmcv without its compiled
extension, and ``import mmseg.models`` reaches ``mmcv.ops`` (which loads that
extension) through four unguarded imports: ``mmseg/utils/mask_classification.py``
and ``models/utils/point_sample.py`` (``point_sample``), ``models/losses/focal_loss.py``
(``sigmoid_focal_loss``) and ``models/decode_heads/san_head.py`` (``point_sample``).
Three more heads guard theirs with ``except ModuleNotFoundError``. None of these
ops is on EncNet's path (ResNetV1c, EncHead, FCNHead, EncoderDecoder). So, when
the extension is absent, :func:`import_mmseg` puts a stand-in module at
``sys.modules["mmcv.ops"]``: the two names above are functions that raise if
ever called, and any other name raises ``ModuleNotFoundError``, which is what the
guarded imports expect from mmcv-lite. Everything else is mmsegmentation's real
package: its ``__init__``, its registry and its config files (shipped in the
wheel under ``mmseg/.mim/configs``). With the full mmcv installed nothing is
replaced.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import warnings
from importlib.metadata import version

import torch
from torch import nn

_UNGUARDED_OPS = ("point_sample", "sigmoid_focal_loss")

BN = {"type": "BN", "requires_grad": True}
"""Plain BatchNorm in place of the configs' SyncBN: same parameters and buffers, runs on one CPU process."""


class _CompiledOpsPlaceholder(types.ModuleType):
    """Stands for ``mmcv.ops`` when mmcv's compiled extension is not installed."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _UNGUARDED_OPS:

            def unavailable(*args, **kwargs):
                raise RuntimeError(f"mmcv.ops.{name} needs mmcv's compiled extension, which mmcv-lite lacks")

            return unavailable
        raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled extension, which mmcv-lite lacks")


def import_mmseg():
    """Import ``mmseg.models`` (registering its modules) and return mmseg's ``MODELS`` registry."""
    import mmcv

    if importlib.util.find_spec("mmcv._ext") is None and "mmcv.ops" not in sys.modules:
        sys.modules["mmcv.ops"] = mmcv.ops = _CompiledOpsPlaceholder("mmcv.ops")
    with warnings.catch_warnings():  # mmcv's transformer bricks say that mmcv-lite lacks an op EncNet does not use
        warnings.filterwarnings("ignore", message="Fail to import ``MultiScaleDeformableAttention``")
        import mmseg.models  # noqa: F401  (registers the backbones, heads and segmentors)
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    return MODELS


def versions() -> str:
    """The peer packages this run used, e.g. ``"mmsegmentation 1.2.2, mmengine 0.10.7, mmcv-lite 2.1.0"``."""
    mmcv = "mmcv-lite" if importlib.util.find_spec("mmcv._ext") is None else "mmcv"
    return f"mmsegmentation {version('mmsegmentation')}, mmengine {version('mmengine')}, {mmcv} {version(mmcv)}"


def config_path(name: str) -> str:
    """Path of a config shipped in the mmsegmentation wheel (``mmseg/.mim/configs/<name>``)."""
    import mmseg

    return os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", name)


def model_config(name: str, **decode_head):
    """The ``model`` dict of config ``name`` with BN for SyncBN, no pretrained file, ``decode_head`` overrides."""
    from mmengine.config import Config

    model = Config.fromfile(config_path(name)).model
    model.pretrained = None
    model.backbone.norm_cfg = BN
    model.decode_head.norm_cfg = BN
    model.decode_head.update(decode_head)
    if "num_classes" in decode_head and model.get("auxiliary_head"):
        model.auxiliary_head.num_classes = decode_head["num_classes"]
    if model.get("auxiliary_head"):
        model.auxiliary_head.norm_cfg = BN
    return model


def build_encnet(name: str, *, aux: bool = True, **decode_head) -> nn.Module:
    """mmseg's EncoderDecoder of config ``name`` (BN, CPU, eval mode); ``aux=False`` drops the FCN aux head."""
    models = import_mmseg()
    model = model_config(name, **decode_head)
    if not aux:
        model.auxiliary_head = None
    with warnings.catch_warnings():  # notes on training losses, which these checks do not compute
        warnings.filterwarnings("ignore", message="``build_loss`` would be deprecated|Default ``avg_non_ignore``")
        segmentor = models.build(model)
    segmentor.eval()
    return segmentor


def build_resnet_v1c(depth: int) -> nn.Module:
    """mmseg's ResNetV1c-``depth`` as its EncNet configs set it up (dilations 1, 1, 2, 4; BN; eval mode)."""
    models = import_mmseg()
    backbone = model_config("_base_/models/encnet_r50-d8.py").backbone
    backbone.depth = depth
    resnet = models.build(backbone)
    resnet.eval()  # mmseg's ResNet.train() returns None, so not chained
    return resnet


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter and buffer of ``model`` random values that keep activations of order one.

    Conv and linear weights: normal with variance 1/fan_in; BN: weight in
    (0.5, 1), bias, running mean normal (std 0.1), running var in (0.5, 1.5),
    ``num_batches_tracked`` distinct integers; Encoding: codewords normal
    (std 0.5), ``scale`` in (-0.2, -0.05): on these activations the soft
    assignment over K = 32 codes then has an entropy of about 1.8 nats (log K = 3.5),
    neither one-hot nor uniform.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    for index, (name, tensor) in enumerate(model.state_dict(keep_vars=True).items()):
        shape = tensor.shape
        if name.endswith("num_batches_tracked"):
            tensor.fill_(1000 + index)
        elif name.endswith("running_mean"):
            tensor.copy_(0.1 * torch.randn(shape, generator=generator))
        elif name.endswith("running_var"):
            tensor.copy_(uniform(shape, 0.5, 1.5))
        elif name.endswith("codewords"):
            tensor.copy_(0.5 * torch.randn(shape, generator=generator))
        elif name.endswith(".scale"):
            tensor.copy_(uniform(shape, -0.2, -0.05))
        elif tensor.dim() == 1 and name.endswith("weight"):  # a norm layer's affine weight
            tensor.copy_(uniform(shape, 0.5, 1.0))
        elif tensor.dim() == 1:  # biases
            tensor.copy_(0.1 * torch.randn(shape, generator=generator))
        else:  # conv or linear weight (out, in, ...)
            fan_in = tensor[0].numel()
            tensor.copy_(torch.randn(shape, generator=generator) / fan_in**0.5)
    return model
