"""Layers of EncNet: the Encoding Layer, the Context Encoding Module, sync BN."""

from .context import ContextEncoding
from .encoding import Encoding, EncodingDrop, encoding, encoding_direct, soft_assignment

__all__ = [
    "ContextEncoding",
    "Encoding",
    "EncodingDrop",
    "encoding",
    "encoding_direct",
    "soft_assignment",
]
