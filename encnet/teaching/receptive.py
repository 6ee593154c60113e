r"""The effective receptive field of a segmentation network: what one output pixel actually reads.

A network's *theoretical* receptive field is every input pixel that can change an output pixel;
its *effective* receptive field (Luo et al., NeurIPS 2016, arXiv:1701.04128) is how much each of
them does. For an image $x$ (3, H, W), an output pixel $p$ and a class $c$, the map is

$$
G_p(q) = \sum_{\text{colour } k} \left| \frac{\partial f_c(x)[p]}{\partial x[k, q]} \right|
\qquad (q \text{ an input pixel}),
$$

where $f_c(x)[p]$ is the logit of class $c$ at $p$ (``model(x)["out"]``, upsampled to the
input's size). :func:`input_gradients` computes $G_p$ for one pixel of each image of a batch,
:func:`centred` shifts each map so that $p$ sits in the middle of a (2H - 1, 2W - 1) canvas,
:func:`effective_receptive_field` averages the centred maps, each scaled to unit mass, over the
images, and :func:`mass_beyond` gives the share of that mass farther than a radius from $p$.
:func:`deepest_pixels` picks the pixel to ask about: the most interior pixel of an object.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_batch(images: Tensor, pixels: Tensor, labels: Tensor) -> None:
    if images.dim() != 4 or images.size(1) != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    B, _, H, W = images.shape
    if pixels.shape != (B, 2) or labels.shape[:1] != (B,) or labels.dim() > 2:
        raise ValueError(f"expected pixels (B, 2) = (row, column) and labels (B,) or class weights (B, classes) "
                         f"for B = {B} images, got {tuple(pixels.shape)} and {tuple(labels.shape)}")
    if not ((0 <= pixels[:, 0]) & (pixels[:, 0] < H) & (0 <= pixels[:, 1]) & (pixels[:, 1] < W)).all():
        raise ValueError(f"pixels must lie inside the {H} x {W} images, got rows/columns {pixels.tolist()}")


def input_gradients(model: nn.Module, images: Tensor, pixels: Tensor, labels: Tensor) -> Tensor:
    r"""$G_p$ for each image: (B, H, W), $|\partial f_{c_b}(x_b)[p_b] / \partial x_b|$ summed over colours.

    Args:
        model: in eval mode (batch norm in training mode would mix the images of the batch),
            returning ``{"out": (B, classes, H, W)}``.
        images: (B, 3, H, W), as the model takes them (normalised).
        pixels: (B, 2) integer (row, column) of the output pixel $p_b$ of each image.
        labels: (B,) the class $c_b$ whose logit is differentiated; or (B, classes) weights $w_b$,
            and then the differentiated quantity is $\sum_c w_{bc} f_c(x_b)[p_b]$ (e.g. a logit
            minus the mean of its rivals').

    In eval mode the images of a batch do not interact, so one backward pass of the sum of the
    B logits gives each image its own gradient.
    """
    if model.training:
        raise ValueError("input_gradients needs the model in eval mode (batch norm in training mode mixes "
                         "the images of a batch): call model.eval() first")
    pixels, labels = torch.as_tensor(pixels).long(), torch.as_tensor(labels)
    _check_batch(images, pixels, labels)
    x = images.detach().clone().requires_grad_(True)
    logits = model(x)["out"]  # (B, classes, H, W)
    at_pixels = logits[torch.arange(x.size(0)), :, pixels[:, 0], pixels[:, 1]]  # (B, classes)
    weights = F.one_hot(labels.long(), at_pixels.size(1)).to(at_pixels) if labels.dim() == 1 else labels
    (weights.to(at_pixels) * at_pixels).sum().backward()
    return x.grad.abs().sum(1)  # (B, H, W)


def centred(maps: Tensor, pixels: Tensor) -> Tensor:
    """(B, H, W) maps -> (B, 2H - 1, 2W - 1), each shifted so that its pixel ``pixels[b]`` lands at (H - 1, W - 1).

    Where the shifted map does not reach, the canvas is zero.
    """
    B, H, W = maps.shape
    canvas = maps.new_zeros(B, 2 * H - 1, 2 * W - 1)
    for b, (row, column) in enumerate(torch.as_tensor(pixels).long().tolist()):
        canvas[b, H - 1 - row : 2 * H - 1 - row, W - 1 - column : 2 * W - 1 - column] = maps[b]
    return canvas


def effective_receptive_field(model: nn.Module, images: Tensor, pixels: Tensor, labels: Tensor) -> Tensor:
    """The mean over the images of the centred maps $G_p / \\sum_q G_p(q)$: (2H - 1, 2W - 1), total mass 1.

    Arguments as :func:`input_gradients`. Scaling each map to unit mass first makes every image
    count the same, whatever the size of its gradient.
    """
    maps = input_gradients(model, images, pixels, labels)
    maps = maps / maps.sum((1, 2), keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)
    return centred(maps, pixels).mean(0)


def mass_beyond(field: Tensor, radius: float) -> float:
    """Share of the mass of a centred map (2H - 1, 2W - 1) at a Euclidean distance above ``radius`` from its centre."""
    rows, columns = field.shape
    if rows % 2 == 0 or columns % 2 == 0:
        raise ValueError(f"a centred map has odd sides (2H - 1, 2W - 1), got {rows} x {columns}: use centred()")
    y = torch.arange(rows, dtype=field.dtype)[:, None] - (rows - 1) / 2
    x = torch.arange(columns, dtype=field.dtype)[None, :] - (columns - 1) / 2
    outside = (y**2 + x**2).sqrt() > radius
    return (field[outside].sum() / field.sum()).item()


def deepest_pixels(masks: Tensor, classes) -> tuple[Tensor, Tensor]:
    """For each (H, W) label map of ``masks`` (B, H, W), its pixel of ``classes`` farthest inside its object.

    Erodes the set of pixels of ``classes`` (3 x 3, 8-neighbourhood; a pixel of another class
    bounds an object) until one more step would empty it; the first remaining pixel in
    row-major order is the centre of the thickest object. Returns ``pixels`` (B, 2) (row, column)
    and their ``labels`` (B,). Raises if a map holds no pixel of ``classes``.
    """
    inside = torch.isin(masks, torch.as_tensor(list(classes), device=masks.device))  # (B, H, W)
    if not inside.flatten(1).any(1).all():
        empty = (~inside.flatten(1).any(1)).nonzero().flatten().tolist()
        raise ValueError(f"label maps {empty} hold no pixel of the classes {list(classes)}: pick other images")
    kept = inside.float()[:, None]  # (B, 1, H, W)
    while True:  # erosion: a pixel stays while its 8 neighbours are in the set too (the border is outside)
        eroded = -F.max_pool2d(-F.pad(kept, (1, 1, 1, 1)), 3, stride=1)
        nonempty = eroded.flatten(1).any(1)  # (B,): the maps that one more step leaves non-empty
        if not nonempty.any():
            break
        kept = torch.where(nonempty[:, None, None, None], eroded, kept)
    flat = kept.flatten(1).argmax(1)  # the first 1 in row-major order
    W = masks.size(-1)
    pixels = torch.stack([flat // W, flat % W], 1)
    return pixels, masks[torch.arange(masks.size(0)), pixels[:, 0], pixels[:, 1]]


def row_reach(
    model: nn.Module, height: int, width: int, rows: Tensor | None = None, *, trials: int = 3, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """The input rows each output row can read: ``(top, bottom)``, two int tensors, one entry per row asked.

    ``top[i]`` is the first and ``bottom[i]`` the last input row where the gradient of the
    logits of output row ``rows[i]`` (every column and class, with random weights) is
    non-zero: the vertical extent of the union of the receptive fields of that row's pixels,
    measured on the built ``model`` (in eval mode) for ``height`` x ``width`` inputs.
    ``rows`` None asks every row. The union is taken over ``trials`` random inputs and
    weightings, so that no unit that happens to be off (a ReLU at zero, a max-pool's loser)
    hides part of the field. One backward pass per trial: image ``i`` of the batch asks about
    row ``rows[i]``.
    """
    if model.training:
        raise ValueError("row_reach needs the model in eval mode (batch norm in training mode mixes the images "
                         "of a batch): call model.eval() first")
    rows = torch.arange(height) if rows is None else torch.as_tensor(rows).long()
    generator = torch.Generator().manual_seed(seed)
    support = torch.zeros(len(rows), height, dtype=torch.bool)  # [asked row, input row]
    parameter = next(model.parameters())
    for _ in range(trials):
        x = torch.randn(len(rows), 3, height, width, generator=generator).to(parameter).requires_grad_(True)
        logits = model(x)["out"]  # (len(rows), classes, height, width)
        weights = torch.randn(logits.shape[1], len(rows), width, generator=generator).to(logits)
        asked = logits[torch.arange(len(rows)), :, rows.to(logits.device)]  # (len(rows), classes, width)
        (asked * weights.transpose(0, 1)).sum().backward()
        support |= (x.grad.abs().sum((1, 3)) > 0).cpu()
    if not support.any(1).all():
        raise ValueError("some output rows have no gradient at all: is the model's output independent of its input?")
    lines = torch.arange(height)
    top = torch.where(support, lines, height).min(1).values
    bottom = torch.where(support, lines, -1).max(1).values
    return top, bottom
