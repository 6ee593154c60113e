r"""Inference on whole images: one :func:`predict` for every test protocol.

A test protocol (:class:`Protocol`) says how a network trained on crops
segments a whole image: how the image is resized, whether it goes through
whole or in sliding windows, which scales and flips are added, and how their
scores are combined. Every path of the package uses the one function
:func:`predict`: evaluation during training and by ``encnet evaluate``,
``encnet predict``, the notebooks, and the published checkpoints, whose
protocols (``encnet.models.zoo.REFERENCE``, ``MMSEG_ADE20K``) repeat their
publishers' tests.

Sliding window (:func:`sliding_window`). Windows of ``crop_size`` move by a
stride of ``int(crop_size * stride_rate)`` (2/3 of the crop, the reference
implementation's); the network's scores are averaged where windows overlap.
At the right and bottom borders a window is either shifted inwards to end at
the border (``edge="shift"``, this package's default: no padding) or cut at
the border and padded to the crop with black pixels (``edge="pad"``, the
publishers'), whose scores are then dropped.

Multi-scale test (:meth:`Protocol.multi_scale`, the paper's ``--ms``): the
image is resized by each factor in ``scales`` (0.5, 0.75, 1.0, 1.25, 1.5,
1.75), optionally flipped left-right, segmented, and brought back to its own
size. With ``combine="probabilities"`` the class probabilities of all views
are averaged,

.. math::

    p(c \mid \text{pixel}) = \frac{1}{|V|} \sum_{v \in V}
        \mathrm{softmax}_c\big(\text{resize}(f(v(\text{image})))\big),

where ``V`` is the set of (scale, flip) views (this package and
mmsegmentation); with ``combine="exp"`` (PyTorch-Encoding's
``MultiEvalModule``) each window scores ``exp(logits + flipped logits)``, and
the scales' maps are summed, then normalised over the classes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .data import DATASETS, voc_colormap
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import UserError
from .viz import overlay, save_palette_png

MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class Protocol:
    """How an image is segmented at test time: the argument of :func:`predict`.

    Attributes:
        fit: resize each image to fit in (long, short) keeping its aspect ratio
            (mmsegmentation's ``Resize(scale=(2048, 512), keep_ratio=True)``), or None.
        base_size: resize the long side to ``ceil(base_size * scale)`` (PyTorch-Encoding), or None.
            With neither, each view is the image's own size times the scale.
        crop_size: sliding-window size, or None for one pass over the whole image.
        stride_rate: window stride as a fraction of ``crop_size``.
        edge: at the borders, windows "shift" inwards or are cut and "pad"-ded with black.
        scales: the views' scale factors (of ``fit``, ``base_size`` or the image's size).
        flip: add a horizontally flipped view of every scale.
        align_corners: of the bilinear resizes of the image and of the scores.
        combine: "probabilities" (average the softmax of every view) or "exp"
            (each window scores exp(logits + flipped logits); the scales are summed).
    """

    fit: tuple[int, int] | None = None
    base_size: int | None = None
    crop_size: int | None = None
    stride_rate: float = 2 / 3
    edge: Literal["shift", "pad"] = "shift"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    align_corners: bool = False
    combine: Literal["probabilities", "exp"] = "probabilities"

    def __post_init__(self) -> None:
        if not self.scales or any(not scale > 0 for scale in self.scales):
            raise ValueError(f"scales must be positive factors, e.g. {MULTI_SCALES}; got {self.scales!r}")
        if self.edge not in ("shift", "pad") or self.combine not in ("probabilities", "exp"):
            raise ValueError(f"edge must be 'shift' or 'pad' and combine 'probabilities' or 'exp', got "
                             f"{self.edge!r} and {self.combine!r}")

    def multi_scale(self, scales: tuple[float, ...] = MULTI_SCALES) -> Protocol:
        """The same protocol at several ``scales``, with flipped views: the paper's multi-scale test."""
        return dataclasses.replace(self, scales=tuple(scales), flip=True)


def _window_starts(length: int, crop_size: int, stride: int, edge: str) -> list[int]:
    """Start offsets of the windows along one side of ``length`` pixels."""
    if length <= crop_size:
        return [0]
    if edge == "shift":  # the last window flush with the end
        return list(range(0, length - crop_size, stride)) + [length - crop_size]
    return list(range(0, length - crop_size + stride, stride))  # the last window may run past the end


def sliding_window(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    crop_size: int | None,
    stride: int,
    edge: Literal["shift", "pad"] = "shift",
    score: Callable[[Tensor], Tensor] = lambda logits: logits,
) -> Tensor:
    """Scores (B, K, H, W) of ``forward`` (a (B, 3, h, w) window -> (B, K, h, w) logits) window by window.

    ``score`` maps each window's logits (``torch.exp`` for the reference's test);
    the scores of overlapping windows are averaged. With ``edge="pad"`` a window
    (or an image) smaller than the crop is padded on the right and bottom with
    black pixels (normalised), and the scores of the padding are cut away.
    ``crop_size`` None, or an image no larger than the crop with ``edge="shift"``,
    is one pass.
    """
    height, width = images.shape[-2:]
    if crop_size is None or (edge == "shift" and height <= crop_size and width <= crop_size):
        return score(forward(images))
    black = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).to(images).view(1, 3, 1, 1)
    scores, counts = None, images.new_zeros(1, 1, height, width)
    for top in _window_starts(height, crop_size, stride, edge):
        for left in _window_starts(width, crop_size, stride, edge):
            window = (..., slice(top, min(top + crop_size, height)), slice(left, min(left + crop_size, width)))
            crop = images[window]
            h, w = crop.shape[-2:]
            if edge == "pad" and (h < crop_size or w < crop_size):
                padded = black.expand(crop.size(0), 3, max(h, crop_size), max(w, crop_size)).clone()
                padded[..., :h, :w] = crop
                crop = padded
            window_scores = score(forward(crop)[..., :h, :w])
            if scores is None:
                scores = images.new_zeros(images.size(0), window_scores.size(1), height, width)
            scores[window] += window_scores
            counts[window] += 1
    return scores / counts


def fit_size(height: int, width: int, fit: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of an image resized to fit in ``fit`` = (long, short) keeping its aspect ratio.

    mmsegmentation's ``Resize(scale=(2048, 512), keep_ratio=True)``: the factor is
    the largest that keeps the long side <= ``max(fit)`` and the short side <= ``min(fit)``.
    """
    factor = min(max(fit) / max(height, width), min(fit) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def long_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) of an image whose long side is resized to ``long_side``, aspect kept (PyTorch-Encoding)."""
    if height > width:
        return long_side, int(width * long_side / height + 0.5)
    return int(height * long_side / width + 0.5), long_side


def view_size(height: int, width: int, protocol: Protocol, scale: float) -> tuple[int, int]:
    """(h, w) of the view of an image of ``height`` x ``width`` at ``scale`` under ``protocol``."""
    if protocol.fit is not None:
        return fit_size(height, width, (int(protocol.fit[0] * scale), int(protocol.fit[1] * scale)))
    if protocol.base_size is not None:
        return long_side_size(height, width, math.ceil(protocol.base_size * scale))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(images: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=align_corners)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, protocol: Protocol | None = None) -> Tensor:
    """Class probabilities (B, K, H, W) of normalised (B, 3, H, W) images under a test ``protocol``.

    ``model`` (in eval mode) returns ``{"out": logits, ...}``: an encnet model, or any
    callable that does (:class:`encnet.export.OnnxModel`, ONNX Runtime). Every (scale,
    flip) view is resized (:func:`view_size`), segmented by :func:`sliding_window`,
    resized back and combined as ``protocol.combine`` says (see the module's
    docstring); the result sums to 1 over K, and its argmax is the predicted label.
    ``protocol`` None: the whole image at its own size.
    """
    protocol = protocol or Protocol()
    height, width = images.shape[-2:]
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).sum())
        raise UserError(f"the images hold {bad} non-finite values (NaN or inf), which would turn every label into "
                         "class 0; replace them (e.g. torch.nan_to_num) or check the image's conversion")

    def logits(view: Tensor) -> Tensor:
        return model(view)["out"]

    def flipped(view: Tensor) -> Tensor:
        return logits(view.flip(-1)).flip(-1)

    def both(view: Tensor) -> Tensor:
        return logits(view) + flipped(view)

    if protocol.combine == "exp":  # the flip inside each window, exp of the summed logits
        forwards, score = [both if protocol.flip else logits], torch.exp
    else:  # the flip as a view of its own, softmax of each view's logits
        forwards, score = [logits, flipped] if protocol.flip else [logits], (lambda z: z)
    stride = int(protocol.crop_size * protocol.stride_rate) if protocol.crop_size else 0
    total = None
    for scale in protocol.scales:
        view = _resize(images, view_size(height, width, protocol, scale), protocol.align_corners)
        for forward in forwards:
            scores = sliding_window(forward, view, crop_size=protocol.crop_size, stride=stride, edge=protocol.edge,
                                    score=score)
            scores = _resize(scores, (height, width), protocol.align_corners)
            scores = scores.softmax(1) if protocol.combine == "probabilities" else scores
            total = scores if total is None else total + scores
    return total / total.sum(1, keepdim=True)


@dataclass
class Segmentation:
    """What :func:`segment` returns for one image of H x W pixels and K classes.

    Attributes:
        labels: (H, W) int64, the predicted class of every pixel.
        se: (K,) the SE branch's probability that each class is in the image
            (sigmoid of ``"se"``), or None for a model without the branch.
        gamma: (C,) the Context Encoding Module's channel attention, or None (FCN).
    """

    labels: Tensor
    se: Tensor | None
    gamma: Tensor | None

    def top_classes(self, classes: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` classes the SE branch finds most probable, with their probabilities."""
        if self.se is None:
            return []
        values, indices = self.se.topk(min(k, self.se.numel()))
        return [(classes[i], round(v, 4)) for v, i in zip(values.tolist(), indices.tolist())]

    def pixel_shares(self, classes: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` classes covering most pixels, with their share of the image."""
        counts = torch.bincount(self.labels.flatten(), minlength=len(classes)).double()
        values, indices = (counts / counts.sum()).topk(min(k, len(classes)))
        return [(classes[i], round(v, 4)) for v, i in zip(values.tolist(), indices.tolist()) if v > 0]


def to_model_input(image: Any) -> Tensor:
    """A PIL image, a file path or a uint8 (3, H, W) tensor -> a normalised float (1, 3, H, W) tensor.

    An image of more than :func:`encnet.data.folder.max_pixels` pixels, or a
    PIL image of more than 8 bits a channel, is a :class:`UserError`.
    """
    from .data.folder import IMAGE_MODES, check_size, read_image

    if isinstance(image, (str, os.PathLike)):
        image = read_image(Path(image))
    if isinstance(image, Image.Image):
        check_size(*image.size, "the image")
        if image.mode not in IMAGE_MODES:
            raise UserError(f"the image is mode {image.mode}, but encnet reads 8-bit images ({', '.join(IMAGE_MODES)})"
                            "; convert it to 8-bit RGB first")
        image = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    if not isinstance(image, Tensor) or image.dim() != 3 or image.size(0) != 3 or image.dtype != torch.uint8:
        raise ValueError("expected an RGB image: a PIL image, a path, or a uint8 (3, H, W) tensor")
    check_size(image.size(2), image.size(1), "the image")
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image.float() / 255 - mean) / std)[None]


@torch.no_grad()
def segment(model: nn.Module, image: Any, protocol: Protocol | None = None) -> Segmentation:
    """Segment one image with ``model`` (in eval mode) under a test ``protocol`` (:func:`predict`).

    ``image``: see :func:`to_model_input`. ``protocol``: a published entry's
    (``entry.protocol``, ``.multi_scale()`` for its multi-scale test), or the
    default, the whole image at its own size. The SE probabilities and gamma come
    from one pass over the whole image at scale 1.
    """
    protocol = protocol or Protocol()
    device = next(model.parameters()).device if isinstance(model, nn.Module) else "cpu"  # else an OnnxModel
    x = to_model_input(image).to(device)
    labels = predict(model, x, protocol).argmax(1)[0].cpu()
    view = _resize(x, view_size(*x.shape[-2:], protocol, 1.0), protocol.align_corners)
    outputs = model(view)
    enc_module = getattr(getattr(model, "head", None), "enc_module", None)
    gamma = enc_module.gamma[0].cpu() if enc_module is not None and enc_module.gamma is not None else None
    return Segmentation(labels, outputs["se"][0].sigmoid().cpu() if "se" in outputs else None, gamma)


def save_segmentation(result: Segmentation, image: Any, out: str | os.PathLike, stem: str, *,
                      classes: Sequence[str], palette: Sequence[Sequence[int]], extra: dict | None = None) -> dict:
    """Write ``<stem>_labels.png`` (palette PNG), ``<stem>_overlay.png`` and ``<stem>.json`` into ``out``.

    The JSON holds the SE branch's 10 most probable classes, the 10 classes
    covering most pixels, and ``extra``. Returns the JSON's content.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_palette_png(out / f"{stem}_labels.png", result.labels, palette)
    blend = overlay(to_model_input(image)[0], result.labels, palette)  # (H, W, 3) in [0, 1]
    Image.fromarray((blend * 255 + 0.5).astype(np.uint8)).save(out / f"{stem}_overlay.png")
    record = {
        **(extra or {}),
        "size": list(result.labels.shape),
        "se_top10": [{"class": name, "probability": p} for name, p in result.top_classes(classes)],
        "pixels_top10": [{"class": name, "share": share} for name, share in result.pixel_shares(classes)],
    }
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def classes_and_palette(
    model: Any, entry: Any = None, num_classes: int | None = None
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The class names and colours of some weights.

    Those of the published ``entry`` if given; else the model's ``classes`` (``class 0``,
    ``class 1``... up to ``num_classes``, default ``model.num_classes``, if it has none)
    and its ``palette`` if it has one (an :class:`encnet.export.OnnxModel`), else the palette of the
    dataset with those classes, else the VOC colour map.
    """
    classes = entry.classes if entry is not None else getattr(model, "classes", None)
    count = num_classes if num_classes is not None else model.num_classes
    classes = tuple(classes or (f"class {index}" for index in range(count)))
    if entry is not None and entry.palette:
        return classes, tuple(entry.palette)
    palette = getattr(model, "palette", None) or next(
        (dataset.palette for dataset in DATASETS.values() if dataset.classes == classes), voc_colormap(len(classes)))
    return classes, tuple(tuple(colour) for colour in palette)
