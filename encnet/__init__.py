"""EncNet: Context Encoding for Semantic Segmentation (Zhang et al., CVPR 2018)."""

__version__ = "0.1.0"
