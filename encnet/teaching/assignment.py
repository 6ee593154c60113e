r"""Soft assignments drawn in two dimensions, and a smoothing slider for them (notebook 01).

With ``C = 2`` every descriptor :math:`x_i` and every codeword :math:`d_k` is a
point in the plane. A point is drawn in the colour of its nearest codeword in
the sense of the assignments, :math:`k^* = \arg\max_k a_{ik}`, faded towards grey
by how far that largest assignment stands above an even share:

.. math::

    c_i = \frac{\max_k a_{ik} - 1/K}{1 - 1/K} \in [0, 1], \qquad
    \text{colour}_i = (1 - c_i)\, \text{grey} + c_i\, \text{colour}_{k^*}.

An even assignment (:math:`a_{ik} = 1/K` for all ``k``, the limit :math:`s \to 0`)
is grey, a hard one (the limit :math:`s \to \infty`) is the codeword's full colour;
:func:`draw_key` draws the scale beside every figure. Blending the codewords' colours by
:math:`a_{i\cdot}` instead would turn every evenly shared point into the mean of
the palette (a brown), which reads as "all assigned to one codeword".

* :func:`assignment_colours`: the colours and :math:`c_i` of a ``(K, N)`` assignment matrix;
* :func:`draw_assignment`: the points, the codewords and the aggregated residuals on one axes,
  with coordinates (ticks at :data:`TICKS` and a light grid, in the descriptors' units);
* :func:`draw_key`: the colour key, one thick bar per codeword, from grey at the even share
  :math:`\max_k a_{ik} = 1/K` on the left to the codeword's full colour at 1 (hard) on the right;
* :func:`assignment_figure`: panels for :func:`draw_assignment`, the key in a column on their right::

      fig, (ax,) = assignment_figure(len(codewords))
      draw_assignment(ax, points, codewords, smoothing)

* :func:`smoothing_view`: the figure the slider shows: the assignments at one smoothing,
  the key, and the mean entropy of the assignments against the smoothing;
* :func:`smoothing_slider`: the controls (``ipywidgets``) that redraw :func:`smoothing_view`::

      controls = smoothing_slider(points, codewords)
      display(controls.widget)

The numbers all come from :func:`encnet.nn.functional.soft_assignment` and
:func:`~encnet.nn.functional.encoding`; this module only draws them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ..nn.functional import encoding, soft_assignment
from .notebook import show

# tab10 without its grey (index 7), which would read as "evenly shared"; RGB, (9, 3).
CODEWORD_COLOURS = np.delete(plt.get_cmap("tab10")(np.arange(10))[:, :3], 7, axis=0)
EVEN = np.full(3, 0.8)  # the colour of an even assignment, a_ik = 1/K
SMOOTHING_RANGE = (1e-2, 1e2)  # the slider's range of s, and the entropy curve's
RATIO_RANGE = (0.1, 10.0)  # the slider's range of s_k / s for the codeword it singles out
TICKS = (-4, -2, 0, 2, 4)  # the plane's coordinates, in the descriptors' units


def _check(points: Tensor, codewords: Tensor) -> None:
    if points.dim() != 2 or points.size(1) != 2:
        raise ValueError(f"points must be (N, 2) descriptors in the plane, got shape {tuple(points.shape)}; "
                         "pass one row per point")
    if codewords.dim() != 2 or codewords.size(1) != 2:
        raise ValueError(f"codewords must be (K, 2), got shape {tuple(codewords.shape)}; pass one row per codeword")
    if len(codewords) > len(CODEWORD_COLOURS):
        raise ValueError(f"{len(codewords)} codewords but only {len(CODEWORD_COLOURS)} distinct colours; "
                         f"draw at most {len(CODEWORD_COLOURS)} codewords")


def assignment_colours(assignment: Tensor) -> tuple[np.ndarray, np.ndarray]:
    r"""RGB colours (N, 3) and certainties :math:`c_i` (N,) of soft assignments ``assignment`` (K, N).

    The colour of the codeword with the largest :math:`a_{ik}`, faded towards
    :data:`EVEN` grey by :math:`1 - c_i`, with
    :math:`c_i = (\max_k a_{ik} - 1/K) / (1 - 1/K)` (1 when ``K = 1``).
    """
    K = assignment.size(0)
    if K > len(CODEWORD_COLOURS):
        raise ValueError(f"{K} codewords but only {len(CODEWORD_COLOURS)} distinct colours; "
                         f"draw at most {len(CODEWORD_COLOURS)} codewords")
    top, nearest = assignment.detach().double().max(0)  # (N,), (N,)
    certainty = ((top - 1 / K) / (1 - 1 / K)).clamp(0, 1).numpy() if K > 1 else np.ones(len(top))
    colours = (1 - certainty)[:, None] * EVEN + certainty[:, None] * CODEWORD_COLOURS[nearest.numpy()]
    return colours, certainty


def draw_assignment(ax: Axes, points: Tensor, codewords: Tensor, smoothing: Tensor, *, arrows: bool = True,
                    title: str = "") -> Tensor:
    r"""Draw ``points`` (N, 2) coloured by their soft assignments, ``codewords`` (K, 2) as stars; return ``A`` (K, N).

    ``smoothing`` (K,) are the :math:`s_k`. With ``arrows``, each codeword's
    aggregated residual is drawn as the arrow from :math:`d_k` to
    :math:`d_k + e_k / m_k = \bar x_k`, the assignment-weighted mean of the points
    (:math:`m_k = \sum_i a_{ik}`; a codeword with almost no mass gets no arrow).
    The plane spans -4.2 to 4.2 on both axes at equal scale, with ticks at
    :data:`TICKS` and a light grid.
    """
    _check(points, codewords)
    X = points.detach().T.unsqueeze(0).double()  # (1, 2, N)
    D, s = codewords.detach().double(), smoothing.detach().double()
    A = soft_assignment(X, D, s)[0]  # (K, N)
    colours, _ = assignment_colours(A)
    ax.scatter(X[0, 0], X[0, 1], c=colours, s=7, linewidths=0)
    ax.scatter(D[:, 0], D[:, 1], c=CODEWORD_COLOURS[: len(D)], marker="*", s=220, edgecolors="k", linewidths=1)
    if arrows:
        mass = A.sum(1, keepdim=True)  # m_k: (K, 1)
        mean = D + encoding(X, D, s)[0] / mass.clamp_min(1e-12)  # d_k + e_k / m_k: (K, 2)
        for k in torch.nonzero(mass[:, 0] > 1e-6).flatten().tolist():
            ax.annotate("", xy=mean[k].tolist(), xytext=D[k].tolist(),
                        arrowprops=dict(arrowstyle="->", color="k", lw=1.5))
    ax.set_aspect("equal")
    ax.set_xlim(-4.2, 4.2)
    ax.set_ylim(-4.2, 4.2)
    ax.set_xticks(TICKS)
    ax.set_yticks(TICKS)
    ax.grid(lw=0.5, alpha=0.4)
    ax.set_axisbelow(True)
    ax.set_title(title)
    return A


def draw_key(ax: Axes, num_codes: int) -> None:
    r"""The colour key of :func:`assignment_colours` for ``num_codes`` codewords, on ``ax``.

    Row ``k`` is a thick bar in the colour :func:`assignment_colours` gives a
    point whose largest assignment goes to codeword ``k`` (the rest shared evenly
    by the others), as :math:`\max_k a_{ik}` runs from the even share
    :math:`1/K` (grey, left) to 1 (a hard assignment, full colour, right).
    """
    if not 2 <= num_codes <= len(CODEWORD_COLOURS):
        raise ValueError(f"num_codes must be 2 to {len(CODEWORD_COLOURS)} for a key, got {num_codes} "
                         "(with one codeword every point has its full colour)")
    top = torch.linspace(1 / num_codes, 1, 64, dtype=torch.float64)  # max_k a_ik from even to hard, (64,)
    for k in range(num_codes):
        A = ((1 - top) / (num_codes - 1)).repeat(num_codes, 1)  # (K, 64)
        A[k] = top
        ax.imshow(assignment_colours(A)[0][None], extent=(1 / num_codes, 1, k - 0.35, k + 0.35), aspect="auto")
    ax.set_xlim(1 / num_codes, 1)
    ax.set_ylim(num_codes - 0.5, -0.5)
    ax.set_yticks(range(num_codes))
    ax.set_ylabel("codeword")
    ax.set_xticks([1 / num_codes, 1], [f"{1 / num_codes:.2f}\neven", "1\nhard"])
    ax.set_xlabel(r"$\max_k\, a_{ik}$")
    ax.set_title("colour key")


def _key_beside(fig: Figure, slot, num_codes: int, rows: int = 1) -> Axes:
    # draw_key in the middle of `slot`, beside `rows` rows of panels: h / (2 rows + h) of its height,
    # h = 2 up to six codewords and more beyond, so that the codewords' labels stay apart
    height = max(2, num_codes / 3)
    ax = fig.add_subplot(slot.subgridspec(3, 1, height_ratios=[rows, height, rows])[1])
    draw_key(ax, num_codes)
    return ax


def assignment_figure(num_codes: int, rows: int = 1, cols: int = 1, *,
                      figsize: tuple[float, float] = (6.8, 4.6)) -> tuple[Figure, list[Axes]]:
    """A figure of ``rows`` x ``cols`` panels for :func:`draw_assignment`, and :func:`draw_key` on their right.

    Returns the figure (not shown) and its panels, row by row; the key, for
    ``num_codes`` codewords, is the figure's last axes.
    """
    fig = plt.figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [0.45])
    panels = [fig.add_subplot(grid[r, c]) for r in range(rows) for c in range(cols)]
    _key_beside(fig, grid[:, cols], num_codes, rows)
    return fig, panels


def mean_entropy(assignment: Tensor) -> float:
    r"""Mean over the points of :math:`-\sum_k a_{ik} \ln a_{ik}`, for ``assignment`` (..., K, N): ln K even, 0 hard."""
    A = assignment.double()
    return -(A * A.clamp_min(1e-300).log()).sum(-2).mean().item()


def _smoothing(num_codes: int, smoothing: float, ratio: float, codeword: int) -> Tensor:
    s = torch.full((num_codes,), float(smoothing), dtype=torch.float64)
    s[codeword] *= ratio
    return s


@dataclass
class View:
    """What :func:`smoothing_view` drew: the settings and the numbers behind the figure."""

    smoothing: float  # s, every codeword's smoothing but one
    ratio: float  # s_k / s for the codeword singled out
    codeword: int  # which one
    entropy: float  # mean entropy of the assignments, nats
    top: float  # mean over the points of max_k a_ik
    mass: list[float]  # m_k = sum_i a_ik, per codeword

    def describe(self) -> str:
        """One line of the numbers, as the slider prints them under the figure."""
        K = len(self.mass)
        return (f"s = {self.smoothing:.3g}, s_{self.codeword} = {self.ratio * self.smoothing:.3g} | "
                f"mean entropy {self.entropy:.2f} nats (ln K = {math.log(K):.2f}) | "
                f"mean max_k a_ik {self.top:.2f} (1/K = {1 / K:.2f}) | "
                f"mass m_k: {', '.join(f'{m:.0f}' for m in self.mass)}")


def smoothing_view(points: Tensor, codewords: Tensor, smoothing: float = 1.0, ratio: float = 1.0, *,
                   codeword: int = 0) -> tuple[Figure, View]:
    r"""The slider's figure for ``points`` (N, 2), ``codewords`` (K, 2), :math:`s_k = s` except :math:`s_{k'} = r s`.

    Left, the assignments and aggregated residuals (:func:`draw_assignment`); in
    the middle, their key (:func:`draw_key`); right, the mean entropy of the assignments as ``s`` sweeps
    :data:`SMOOTHING_RANGE` at the same ratio ``r``, the current ``s`` marked.
    ``codeword`` is :math:`k'`. Returns the figure (not shown) and its numbers.
    """
    _check(points, codewords)
    K = len(codewords)
    if not 0 <= codeword < K:
        raise ValueError(f"codeword must be one of 0..{K - 1} (there are {K} codewords), got {codeword}")
    if smoothing <= 0 or ratio <= 0:
        raise ValueError(f"smoothing and ratio must be positive, got smoothing={smoothing}, ratio={ratio}")
    fig = plt.figure(figsize=(10.5, 3.8))  # fixed margins, no layout engine: the slider redraws faster
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 0.45, 1.2], wspace=0.35, left=0.05, right=0.92, bottom=0.14)
    ax_points, ax_curve = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 2])
    _key_beside(fig, grid[0, 1], K)
    s = _smoothing(K, smoothing, ratio, codeword)
    title = f"$s = {smoothing:.3g}$" + (f", $s_{codeword} = {ratio * smoothing:.3g}$" if ratio != 1 else "")
    A = draw_assignment(ax_points, points, codewords, s, title=title)

    X = points.detach().T.unsqueeze(0).double()
    D = codewords.detach().double()
    grid_s = np.logspace(math.log10(SMOOTHING_RANGE[0]), math.log10(SMOOTHING_RANGE[1]), 41)
    curve = [mean_entropy(soft_assignment(X, D, _smoothing(K, value, ratio, codeword))) for value in grid_s]
    view = View(smoothing=float(smoothing), ratio=float(ratio), codeword=codeword, entropy=mean_entropy(A),
                top=A.max(0).values.mean().item(), mass=A.sum(1).tolist())
    ax_curve.semilogx(grid_s, curve, c="C0")
    ax_curve.plot([smoothing], [view.entropy], "o", c="k")
    ax_curve.axhline(math.log(K), ls="--", c="gray")
    ax_curve.text(grid_s[0], math.log(K) * 0.93, r"$\ln K$ (even)", va="top")
    ax_curve.set_ylim(-0.05, math.log(K) * 1.08)
    ax_curve.set_xlabel("smoothing $s$ (= 1 / temperature)")
    ax_curve.set_ylabel(r"mean entropy of $a_{i\cdot}$ (nats)")
    ax_curve.yaxis.tick_right()
    ax_curve.yaxis.set_label_position("right")
    return fig, view


@dataclass
class SmoothingSlider:
    """The controls of :func:`smoothing_slider`; ``display(controls.widget)`` shows them."""

    smoothing: object  # ipywidgets.FloatLogSlider: s
    ratio: object  # ipywidgets.FloatLogSlider: s_k / s for the codeword singled out
    output: object  # ipywidgets.Output the figure is drawn into
    widget: object  # ipywidgets.VBox: the sliders above the output
    view: View | None = None  # the numbers of the figure shown
    seconds: list[float] = field(default_factory=list)  # how long each redraw took


def smoothing_slider(points: Tensor, codewords: Tensor, *, smoothing: float = 1.0, ratio: float = 1.0,
                     codeword: int = 0) -> SmoothingSlider:
    r"""Sliders for :math:`s` and :math:`s_{k'} / s` that redraw :func:`smoothing_view` of ``points`` and ``codewords``.

    Each change replaces the output's figure and line of numbers at once (the
    figure is rendered to PNG here, so nothing depends on the notebook's
    matplotlib backend); the controls start at ``smoothing`` and ``ratio``
    (:math:`s_{k'} / s`, for ``codeword`` :math:`k'`): the default view a
    notebook draws beside them with :func:`smoothing_view`.
    """
    _check(points, codewords)
    log_s = [math.log10(v) for v in SMOOTHING_RANGE]
    log_r = [math.log10(v) for v in RATIO_RANGE]
    controls = SmoothingSlider(
        smoothing=widgets.FloatLogSlider(value=smoothing, base=10, min=log_s[0], max=log_s[1], step=0.05,
                                         description="s", continuous_update=False),
        ratio=widgets.FloatLogSlider(value=ratio, base=10, min=log_r[0], max=log_r[1], step=0.05,
                                     description=f"s_{codeword} / s", continuous_update=False),
        output=widgets.Output(),
        widget=None,
    )
    controls.widget = widgets.VBox([widgets.HBox([controls.smoothing, controls.ratio]), controls.output])

    def redraw(_change=None) -> None:
        start = time.perf_counter()
        fig, view = smoothing_view(points, codewords, controls.smoothing.value, controls.ratio.value,
                                   codeword=codeword)
        show(controls.output, fig, view.describe(), label="smoothing view")
        controls.view = view
        controls.seconds.append(time.perf_counter() - start)

    controls.smoothing.observe(redraw, names="value")
    controls.ratio.observe(redraw, names="value")
    redraw()
    return controls
