r"""EncNet's architecture drawn with matplotlib, each box labelled with the ``encnet`` name that implements it.

Notebook 02 draws it with :func:`draw_architecture`. The diagram is data: every
:class:`Box` names what it computes and where ``encnet`` computes it, either an
attribute of a built EncNet (``model.head.enc_module.encoding``, with the class
of that attribute, ``Encoding``) or an object of the package
(``"encnet.losses:EncNetLoss"``); every :class:`Arrow` names the tensor it
carries, the backbone stages (``"c3"``, ``"c4"``) and the model's outputs
(``out["se"]``) by their keys. ``tests/test_teaching_diagram.py`` resolves each
name on a model built by ``encnet.models.encnet_small``, so a renamed attribute
breaks the test rather than leaving the picture wrong.

The wiring (shapes for an input of ``(B, 3, H, W)``, ``h = H/8``; ``C`` is the
head width, a quarter of the last stage's channels: 512 on ResNet-50, 128 on
``"small"``; ``K`` codewords; ``M`` classes)::

    image -> model.backbone (dilated ResNet, output stride 8) -> "c4" -> model.head.conv -> X (B, C, h, w)
    X -> enc_module.reduce -> enc_module.encoding -> E (B, K, C) -> enc_module.codes_norm, ReLU, mean over k -> e
    e -> enc_module.attention, sigmoid -> gamma (B, C);   Y = ReLU(X + X * gamma)
    e -> enc_module.se_classifier -> out["se"] (B, M) -> SE-loss
    Y -> model.head.classifier -> bilinear x8 -> out["out"] (B, M, H, W)
    "c3" -> model.aux_head -> bilinear x8 -> out["aux"]
"""

from __future__ import annotations

from typing import NamedTuple

# The layout in inches (the axes span the figure, one unit an inch): four columns, six rows and the loss below.
WIDTH, HEIGHT = 11.0, 7.1
BOX_W, BOX_H = 2.35, 0.8
COLUMNS = (1.35, 4.1, 6.85, 9.6)
ROWS = (6.55, 5.5, 4.45, 3.4, 2.35, 1.3)
LOSS_Y, LOSS_H = 0.3, 0.5

# Fill colours: the input, the backbone, the heads, the Context Encoding Module, the outputs and the loss.
COLOURS = {"input": "0.92", "backbone": "#c6dbef", "head": "#fdd0a2", "module": "#c7e9c0", "output": "#efedf5"}


class Box(NamedTuple):
    """One step of the network: what it computes, where ``encnet`` computes it, and where it sits.

    ``what`` is plain text (one or two lines). ``path`` is an attribute path on a
    built EncNet (``"head.enc_module.encoding"``) and ``kind`` the class name of
    that attribute (``"Encoding"``). ``package`` names objects of the package as
    ``"module:qualname"`` (``"encnet.losses:EncNetLoss"``), several joined by
    ", ". Either may be ``None``.
    """

    key: str
    what: str
    xy: tuple[float, float]
    colour: str
    path: str | None = None
    kind: str | None = None
    package: str | None = None

    def label(self) -> str:
        """The text drawn in the box: ``what``; the path and its class; the package objects by qualname.

        Inside the Context Encoding Module the path starts at ``enc_module`` (the frame names
        ``model.head.enc_module``); elsewhere at ``model``.
        """
        lines = [self.what]
        if self.path is not None:
            inner = self.path.startswith(MODULE_FRAME[0] + ".")
            lines.append(self.path.removeprefix("head.") if inner else f"model.{self.path}")
            lines.append(f"({self.kind})")
        if self.package is not None:
            lines.append(", ".join(name.split(":")[1] for name in self.package.split(", ")))
        return "\n".join(lines)


class Arrow(NamedTuple):
    """A tensor flowing from box ``start`` to box ``end``, labelled ``label``.

    ``stage`` is the backbone stage it carries (a key of ``model.backbone``'s
    outputs) and ``output`` the key of the model's output dict, when it is one.
    ``route`` is matplotlib's ``connectionstyle``: "arc3" a straight line, an
    "angle" an elbow from ``start``'s right side into ``end``'s top.
    """

    start: str
    end: str
    label: str = ""
    stage: str | None = None
    output: str | None = None
    route: str = "arc3"


MODULE_FRAME = ("head.enc_module", "ContextEncoding")
"""The Context Encoding Module's attribute path and class: the frame drawn around its boxes."""


def _at(column: int, row: int) -> tuple[float, float]:
    return COLUMNS[column], ROWS[row]


BOXES: tuple[Box, ...] = (
    Box("input", "input image", _at(0, 0), COLOURS["input"]),
    Box("backbone", "dilated ResNet, output stride 8", _at(0, 1), COLOURS["backbone"],
        "backbone", "IntermediateLayerGetter", "encnet.models:dilated_resnet"),
    Box("conv", "3x3 conv + BN + ReLU", _at(1, 1), COLOURS["head"], "head.conv", "Conv2dNormActivation"),
    Box("reduce", "1x1 conv + BN + ReLU", _at(1, 2), COLOURS["module"],
        "head.enc_module.reduce", "Conv2dNormActivation"),
    Box("encoding", "Encoding Layer, K codewords", _at(1, 3), COLOURS["module"],
        "head.enc_module.encoding", "Encoding"),
    Box("codes_norm", "BN + ReLU, mean over k", _at(1, 4), COLOURS["module"],
        "head.enc_module.codes_norm", "BatchNorm1d"),
    Box("attention", "FC + sigmoid", _at(2, 4), COLOURS["module"], "head.enc_module.attention", "Linear"),
    Box("scale", "Y = ReLU(X + X ⊗ γ)", _at(2, 2), COLOURS["module"],
        package="encnet.nn:ContextEncoding.forward"),
    Box("se_classifier", "FC: SE logits z", _at(1, 5), COLOURS["module"],
        "head.enc_module.se_classifier", "Linear"),
    Box("classifier", "Dropout + 1x1 conv", _at(3, 2), COLOURS["head"], "head.classifier", "Sequential"),
    Box("upsample", "bilinear upsampling x8", _at(3, 3), COLOURS["head"],
        package="encnet.models:SegmentationModel._upsample"),
    Box("labels", "logits (B, M, H, W) ->\nper-pixel labels (argmax)", _at(3, 4), COLOURS["output"]),
    Box("aux_head", "auxiliary FCN head", _at(0, 3), COLOURS["head"], "aux_head", "FCNHead"),
    Box("aux_upsample", "bilinear upsampling x8", _at(0, 4), COLOURS["head"],
        package="encnet.models:SegmentationModel._upsample"),
    Box("loss", "CE(out) + 0.2 CE(aux) + 0.2 SE-loss, the SE-loss a BCE of sigmoid(z) against se_target",
        ((COLUMNS[0] + COLUMNS[3]) / 2, LOSS_Y), COLOURS["output"],
        package="encnet.losses:EncNetLoss, encnet.losses:se_target"),
)

ARROWS: tuple[Arrow, ...] = (
    Arrow("input", "backbone", "(B, 3, H, W)"),
    Arrow("backbone", "conv", '"c4"', stage="c4"),
    Arrow("backbone", "aux_head", '"c3" (B, 2C, h, w)', stage="c3"),
    Arrow("conv", "reduce", "X (B, C, h, w)"),
    Arrow("conv", "scale", "X", route="angle,angleA=0,angleB=90"),
    Arrow("reduce", "encoding"),
    Arrow("encoding", "codes_norm", "E (B, K, C)"),
    Arrow("codes_norm", "attention", "e"),
    Arrow("attention", "scale", "γ (B, C)"),
    Arrow("codes_norm", "se_classifier", "e (B, C)"),
    Arrow("scale", "classifier", "Y"),
    Arrow("classifier", "upsample", "(B, M, h, w)"),
    Arrow("upsample", "labels", 'out["out"]', output="out"),
    Arrow("aux_head", "aux_upsample"),
    Arrow("aux_upsample", "loss", 'out["aux"]', output="aux"),
    Arrow("se_classifier", "loss", 'out["se"] (B, M)', output="se"),
    Arrow("labels", "loss", 'out["out"]', output="out"),
)


def _size(box: Box) -> tuple[float, float]:
    """Width and height of ``box`` in inches: the loss spans the four columns."""
    return (COLUMNS[3] - COLUMNS[0] + BOX_W, LOSS_H) if box.key == "loss" else (BOX_W, BOX_H)


def _ends(arrow: Arrow, start: Box, end: Box) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where ``arrow`` leaves ``start`` and enters ``end``.

    An elbow (``route`` not "arc3") leaves ``start``'s right side and enters ``end``'s top; an arrow into
    the loss goes straight down; the others join the boxes' centres, cut at the boxes' edges.
    """
    (x0, y0), (x1, y1) = start.xy, end.xy
    if arrow.route != "arc3":
        return (x0 + BOX_W / 2, y0), (x1, y1 + BOX_H / 2)
    if end.key == "loss":
        return (x0, y0 - BOX_H / 2), (x0, y1 + LOSS_H / 2)
    dx, dy = x1 - x0, y1 - y0
    cut = min(BOX_W / 2 / abs(dx) if dx else float("inf"), BOX_H / 2 / abs(dy) if dy else float("inf"))
    return (x0 + dx * cut, y0 + dy * cut), (x1 - dx * cut, y1 - dy * cut)


def draw_architecture():
    """Draw EncNet's architecture (:data:`BOXES`, :data:`ARROWS`) on a new ``WIDTH x HEIGHT`` inch figure; return it."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig = plt.figure(figsize=(WIDTH, HEIGHT))
    ax = fig.add_axes((0, 0, 1, 1))  # one data unit is one inch
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, HEIGHT)
    ax.set_aspect("equal")
    ax.axis("off")

    inside = [box for box in BOXES if box.colour == COLOURS["module"]]
    left = min(box.xy[0] for box in inside) - BOX_W / 2 - 0.1
    right = max(box.xy[0] for box in inside) + BOX_W / 2 + 0.1
    bottom = min(box.xy[1] for box in inside) - BOX_H / 2 - 0.1
    top = max(box.xy[1] for box in inside) + BOX_H / 2 + 0.1
    ax.add_patch(FancyBboxPatch((left, bottom), right - left, top - bottom, boxstyle="round,pad=0,rounding_size=0.1",
                                facecolor="#f2faf0", edgecolor="#41ab5d", linewidth=1.2, linestyle="--", zorder=0))
    path, kind = MODULE_FRAME  # its title in the free corner, right of the SE branch
    ax.text(COLUMNS[2], ROWS[5], f"Context Encoding Module\nmodel.{path}\n({kind})", ha="center", va="center",
            fontsize=10, color="#238b45", fontweight="bold")

    for box in BOXES:
        (x, y), (width, height) = box.xy, _size(box)
        ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                    boxstyle="round,pad=0,rounding_size=0.06", facecolor=box.colour,
                                    edgecolor="0.3", linewidth=0.8, zorder=2))
        ax.text(x, y, box.label(), ha="center", va="center", fontsize=9, zorder=3, linespacing=1.15)

    boxes = {box.key: box for box in BOXES}
    for arrow in ARROWS:
        tail, head = _ends(arrow, boxes[arrow.start], boxes[arrow.end])
        ax.annotate("", head, tail, zorder=1, arrowprops={
            "arrowstyle": "-|>", "color": "0.25", "linewidth": 1.0, "connectionstyle": arrow.route,
            "shrinkA": 0, "shrinkB": 0})
        if arrow.label:  # above a horizontal arrow, right of a vertical one, on the corner of an elbow
            if arrow.route != "arc3":
                at, align = (head[0], tail[1]), {"ha": "center", "va": "center"}
            elif tail[1] == head[1]:
                at, align = ((tail[0] + head[0]) / 2, tail[1] + 0.04), {"ha": "center", "va": "bottom"}
            else:
                at, align = (tail[0] + 0.06, (tail[1] + head[1]) / 2), {"ha": "left", "va": "center"}
            ax.text(*at, arrow.label, fontsize=9, zorder=4, **align,
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none"})
    return fig
