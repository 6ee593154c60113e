"""Layers of EncNet: the Encoding Layer, the Context Encoding Module, sync BN."""

from .context import ContextEncoding
from .encoding import Encoding, EncodingDrop, encoding, encoding_direct, soft_assignment, squared_distances
from .syncbn import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

__all__ = [
    "ContextEncoding",
    "Encoding",
    "EncodingDrop",
    "encoding",
    "encoding_direct",
    "soft_assignment",
    "squared_distances",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
]
