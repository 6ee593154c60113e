"""Networks: FCN and EncNet on dilated ResNets for segmentation; the CIFAR-10 family."""

from .backbones import STAGE_CHANNELS, SlimBottleneck, dilated_resnet
from .cifar import CifarNet, EncodingGate, GatedBlock, cifar_encnet, cifar_resnet, cifar_se_resnet
from .segmentation import (
    FCN,
    EncHead,
    EncNet,
    MODELS,
    FCNHead,
    build_model,
    encnet_resnet50,
    encnet_resnet101,
    encnet_small,
    fcn_resnet50,
    fcn_resnet101,
    fcn_small,
)

__all__ = [
    "FCN",
    "MODELS",
    "STAGE_CHANNELS",
    "CifarNet",
    "EncHead",
    "EncNet",
    "EncodingGate",
    "FCNHead",
    "GatedBlock",
    "SlimBottleneck",
    "build_model",
    "cifar_encnet",
    "cifar_resnet",
    "cifar_se_resnet",
    "dilated_resnet",
    "encnet_resnet101",
    "encnet_resnet50",
    "encnet_small",
    "fcn_resnet101",
    "fcn_resnet50",
    "fcn_small",
]
