"""Colours for drawing label masks.

The PASCAL VOC colour map spreads the bits of a label over the three channels
(bit 0 to red, bit 1 to green, bit 2 to blue, the next three bits one step
lower, and so on), so nearby labels get clearly different colours. VOC's own
mask PNGs use it; ADE20K and PASCAL-Context masks are drawn with it too here
(``encnet.viz.colorize`` draws a mask in a dataset's palette).
"""

from __future__ import annotations

import numpy as np


def voc_colormap(num_colors: int) -> tuple[tuple[int, int, int], ...]:
    """The first ``num_colors`` colours of the PASCAL VOC colour map (label 0 is black)."""
    labels = np.arange(num_colors)
    rgb = np.zeros((num_colors, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((labels >> (3 * shift + channel)) & 1) << (7 - shift)
    return tuple(tuple(int(v) for v in colour) for colour in rgb)
