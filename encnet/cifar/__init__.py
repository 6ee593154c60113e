"""The paper's CIFAR-10 experiment: the Encoding Layer as a channel gate of a classifier.

- :mod:`encnet.cifar.data`: CIFAR-10 read from its "python version" files, and
  :class:`SyntheticCifar10`, a procedural stand-in for machines without it;
- :mod:`encnet.cifar.models`: the 14-layer ResNet, SE-ResNet and EncNet of the paper;
- :mod:`encnet.cifar.train`: the training and evaluation loop of the paper's recipe.
"""

from .data import CIFAR10_MEAN, CIFAR10_STD, CifarImages, SyntheticCifar10, cifar10
from .models import CifarNet, EncodingGate, GatedBlock, cifar_encnet, cifar_resnet, cifar_se_resnet
from .train import evaluate_classifier, train_classifier

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CifarImages",
    "CifarNet",
    "EncodingGate",
    "GatedBlock",
    "SyntheticCifar10",
    "cifar10",
    "cifar_encnet",
    "cifar_resnet",
    "cifar_se_resnet",
    "evaluate_classifier",
    "train_classifier",
]
