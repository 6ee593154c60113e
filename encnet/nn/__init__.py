"""Layers of EncNet: the Encoding Layer, the Context Encoding Module, sync BN.

The Encoding Layer's functional forms (``encoding``, ``encoding_autograd``,
``encoding_direct``, ``soft_assignment``, ``squared_distances``) are in :mod:`encnet.nn.functional`,
as torch's are in ``torch.nn.functional``.
"""

from . import functional
from .context import ContextEncoding
from .encoding import Encoding, EncodingDrop
from .syncbn import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

__all__ = [
    "ContextEncoding",
    "Encoding",
    "EncodingDrop",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "functional",
    "revert_sync_batchnorm",
]
