r"""Notebook 03's two widgets on an SE-loss sweep file: the alpha explorer and the training panel.

A sweep file (:func:`encnet.sweep.sweep`, read with :func:`encnet.ablation.load`)
holds runs of FCN and of EncNet at several SE-loss weights :math:`\alpha` and
seeds. For the :math:`M = 17` classes of ``SyntheticScenes`` each run stores its
per-class validation IoU, :math:`\mathrm{IoU}_c = TP_c / (TP_c + FP_c + FN_c)`.

* :func:`alpha_view`: the explorer's figure for one :math:`\alpha` (every seed's
  per-class IoU against the FCN's and EncNet's :math:`\alpha = 0` means) and its lines of numbers;
* :func:`alpha_explorer`: a slider over the file's :math:`\alpha` values that redraws :func:`alpha_view`;
* :func:`plan`: what training EncNet at one :math:`\alpha` and seed will cost (an estimate of
  the time) and which runs of the file it can be compared with, said plainly when there are none;
* :func:`train_and_compare`: that training, with tqdm's progress bars, and its comparison;
* :func:`training_panel`: :math:`\alpha` and seed controls with a **Train** button for the two above::

      explorer = alpha_explorer(sweep)
      display(explorer.widget)

The time estimate is the number of training images a run processes,
:math:`\text{epochs} \times \lfloor \text{images} / \text{batch} \rfloor \times \text{batch}`,
divided by a measured speed in images per second, which the caller supplies
together with what it was measured on (:func:`sweep_speeds` gives the committed runs').
Evaluations are not in it: each adds a forward pass over the validation images.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .. import ablation
from ..config import TrainConfig
from ..data import SyntheticScenes, build_dataset
from ..engine import train
from .notebook import show

CLASSES = SyntheticScenes.classes
AMBIGUOUS = np.isin(np.arange(len(CLASSES)), list(SyntheticScenes.ambiguous))  # (M,) bool: the box and disc classes
# The training panel's alpha values: the committed sweep's and some it does not hold.
PANEL_ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


def run_iou(run: dict[str, Any]) -> np.ndarray:
    """Per-class IoU of a sweep run as floats, (M,); JSON null (a class absent from truth and prediction) is NaN."""
    return np.array([math.nan if value is None else value for value in run["IoU"]], dtype=float)


def mean_iou(sweep: dict[str, Any], model: str, alpha: float) -> np.ndarray:
    """Per-class IoU in percent, averaged over the seeds the sweep holds for ``model`` at ``alpha``: (M,)."""
    runs = ablation.runs_of(sweep, model, alpha)
    if not runs:
        raise ValueError(f"the sweep has no {model} runs at alpha={alpha:g}; it has "
                         f"{_alphas_text(sweep, model) or 'none'}: pick one of those")
    return 100 * nanmean(np.array([run_iou(run) for run in runs]), axis=0)


def nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """``np.nanmean`` that gives NaN without a warning where every value is NaN (a class no run saw)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def sweep_alphas(sweep: dict[str, Any], model: str = "encnet") -> list[float]:
    """The SE-loss weights of the sweep's ``model`` runs, sorted."""
    return sorted({run["se_weight"] for run in sweep["runs"] if run["model"] == model})


def _alphas_text(sweep: dict[str, Any], model: str = "encnet") -> str:
    return ", ".join(f"{alpha:g}" for alpha in sweep_alphas(sweep, model))


def alpha_view(sweep: dict[str, Any], alpha: float) -> tuple[Figure, list[str]]:
    r"""The explorer's figure for EncNet at SE-loss weight ``alpha``, and one line of numbers per seed.

    Bars: the FCN's and EncNet's (:math:`\alpha = 0`) per-class IoU, means over their
    seeds; dots: every seed's per-class IoU at ``alpha``; shaded: the ambiguous
    classes. Each line gives a run's pixAcc, mIoU, the mean IoU of the ambiguous
    classes and the mean training loss of its last evaluated epoch with its parts
    (``out``, ``aux``, ``se``). Returns the figure (not shown) and the lines.
    """
    runs = ablation.runs_of(sweep, "encnet", alpha)
    if not runs:
        raise ValueError(f"the sweep has no EncNet runs at alpha={alpha:g}; it has {_alphas_text(sweep) or 'none'}: "
                         "pick one of those")
    x = np.arange(len(CLASSES))
    fig, axis = plt.subplots(figsize=(10, 3.4))
    axis.bar(x - 0.2, mean_iou(sweep, "fcn", 0.0), 0.4, color="tab:red", alpha=0.35, label="FCN (mean)")
    axis.bar(x + 0.2, mean_iou(sweep, "encnet", 0.0), 0.4, color="tab:orange", alpha=0.35,
             label=r"EncNet $\alpha=0$ (mean)")
    for run in runs:
        axis.plot(x, 100 * run_iou(run), "o", ms=4, label=f"EncNet $\\alpha={alpha:g}$, seed {run['seed']}")
    for index in np.flatnonzero(AMBIGUOUS):
        axis.axvspan(index - 0.5, index + 0.5, color="grey", alpha=0.12, lw=0)
    axis.set_xticks(x, CLASSES, rotation=60, ha="right")
    axis.set(ylabel="IoU %", ylim=(0, 103), xlim=(-0.6, len(CLASSES) - 0.4),
             title=rf"per-class IoU at $\alpha = {alpha:g}$ (shaded: ambiguous classes)")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    lines = []
    for run in runs:
        last = run["history"][-1]
        parts = ", ".join(f"{name} {value:.4f}" for name, value in last["loss_parts"].items())
        lines.append(f"seed {run['seed']}: pixAcc {100 * run['pixAcc']:.2f}%  mIoU {100 * run['mIoU']:.2f}%  "
                     f"ambiguous {100 * nanmean(run_iou(run)[AMBIGUOUS]):.2f}%  | epoch {last['epoch']} loss "
                     f"{last['loss']:.4f} ({parts})")
    return fig, lines


@dataclass
class AlphaExplorer:
    """The controls of :func:`alpha_explorer`; ``display(explorer.widget)`` shows them."""

    alpha: widgets.SelectionSlider
    output: widgets.Output  # the figure and its lines are drawn into it
    widget: widgets.VBox  # the slider above the output
    lines: list[str] = field(default_factory=list)  # the numbers under the figure shown
    seconds: list[float] = field(default_factory=list)  # how long each redraw took


def alpha_explorer(sweep: dict[str, Any], *, alpha: float = 0.2) -> AlphaExplorer:
    """A slider over the sweep's EncNet alpha values (starting at ``alpha``) that redraws :func:`alpha_view`.

    The figure is rendered to PNG here and replaces the output's contents at once,
    so nothing depends on the notebook's matplotlib backend, and the output shows
    the view of the starting value from the start.
    """
    alphas = sweep_alphas(sweep)
    if alpha not in alphas:
        raise ValueError(f"alpha={alpha:g} is not in the sweep, whose EncNet runs have alpha "
                         f"{_alphas_text(sweep) or '(none)'}; start from one of those")
    slider = widgets.SelectionSlider(options=alphas, value=alpha, description="alpha", continuous_update=False)
    output = widgets.Output()
    explorer = AlphaExplorer(alpha=slider, output=output, widget=widgets.VBox([slider, output]))

    def redraw(_change=None) -> None:
        start = time.perf_counter()
        fig, lines = alpha_view(sweep, slider.value)
        show(output, fig, "\n".join(lines), label=f"per-class IoU at alpha = {slider.value:g}")
        explorer.lines = lines
        explorer.seconds.append(time.perf_counter() - start)

    slider.observe(redraw, names="value")
    redraw()
    return explorer


def sweep_speeds(sweep: dict[str, Any]) -> list[float]:
    """Training speed of each run of the sweep, images per second, from its last history record."""
    return [run["history"][-1]["images_per_s"] for run in sweep["runs"] if run.get("history")]


def _split_length(config: TrainConfig, split: str) -> int:
    return len(build_dataset(config.dataset, split, root=config.data_root, crop_size=config.crop_size,
                             base_size=config.base_size, **config.dataset_options))


def training_images(config: TrainConfig) -> int:
    r"""Images one run of ``config`` trains on: :math:`\text{epochs} \times \lfloor n / B \rfloor \times B`.

    ``n`` is the training split's length, ``B`` the global batch (the engine's
    loader drops the last incomplete batch).
    """
    return config.epochs * (_split_length(config, "train") // config.batch_size) * config.batch_size


def evaluations(config: TrainConfig) -> int:
    """How many times a run of ``config`` scores the validation split (every ``eval_every`` epochs, and the last)."""
    return sum(epoch % config.eval_every == 0 or epoch == config.epochs for epoch in range(1, config.epochs + 1))


def _run_config(config: TrainConfig, alpha: float, seed: int) -> TrainConfig:
    return dataclasses.replace(config, model="encnet", se_weight=alpha, seed=seed)


def comparable(sweep: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a run of ``config`` is one of the sweep's kind: the sweep's base config, up to alpha and seed."""
    base = TrainConfig.from_dict(sweep["config"])
    return _run_config(config, 0.0, 0) == _run_config(base, 0.0, 0)


def plan(sweep: dict[str, Any], config: TrainConfig, alpha: float, seed: int, *, images_per_s: float,
         basis: str) -> list[str]:
    """What training EncNet at ``alpha`` and ``seed`` with ``config`` costs and what it will be compared with.

    The first line estimates the training time from ``images_per_s``, a speed
    measured on ``basis`` (said in the line); the second says which of the sweep's
    runs the result will be set beside, or plainly that there are none and why.
    """
    if not images_per_s > 0:
        raise ValueError(f"images_per_s must be a positive speed in images per second, got {images_per_s!r}; "
                         "pass a measured one (sweep_speeds gives the sweep's)")
    images = training_images(config)
    batches = images // config.epochs // config.batch_size
    lines = [f"EncNet alpha={alpha:g} seed {seed}: {config.epochs} epochs x {batches} batches of {config.batch_size} = "
             f"{images} training images; at {images_per_s:.0f} images/s ({basis}) about {images / images_per_s:.0f} s, "
             f"plus {evaluations(config)} evaluation(s) of "
             f"{_split_length(config, 'val')} validation images"]
    if not comparable(sweep, config):
        base = _run_config(TrainConfig.from_dict(sweep["config"]), alpha, seed)
        ours = _run_config(config, alpha, seed)
        differences = "; ".join(f"{name} {getattr(ours, name)} (sweep: {getattr(base, name)})"
                                for name in (f.name for f in dataclasses.fields(TrainConfig))
                                if getattr(ours, name) != getattr(base, name))
        lines.append(f"no comparison: these settings are not the sweep's, so its runs say nothing about this one: "
                     f"{differences}")
        return lines
    runs = ablation.runs_of(sweep, "encnet", alpha)
    seeds = [run["seed"] for run in runs]
    if not runs:
        lines.append(f"no comparison: the sweep has no runs at alpha={alpha:g} (its EncNet runs have alpha "
                     f"{_alphas_text(sweep)}); the result is shown alone")
    elif seed in seeds:
        run = runs[seeds.index(seed)]
        lines.append(f"the sweep holds this very run (alpha={alpha:g}, seed {seed}: mIoU {100 * run['mIoU']:.2f}%); "
                     "on the machine that made the sweep, on one thread, the result is the same; elsewhere float "
                     "rounding differs and it may move by up to the seed-to-seed spread")
    else:
        lines.append(f"compared with the sweep's runs at alpha={alpha:g} (seeds {seeds}, not {seed}): expect a "
                     "difference of the order of their seed-to-seed spread")
    return lines


def train_and_compare(sweep: dict[str, Any], config: TrainConfig, alpha: float, seed: int, *,
                      progress: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Train EncNet at ``alpha`` and ``seed`` with ``config`` (tqdm bars with ``progress``); its result and lines.

    The lines, also printed: the run's pixAcc, mIoU and ambiguous-class IoU with
    its wall time, then each of the sweep's runs at ``alpha`` when ``config`` is
    the sweep's kind (:func:`comparable`), or why there is nothing to compare with.
    """
    start = time.perf_counter()
    result = train(_run_config(config, alpha, seed), progress=progress)
    metrics = result["metrics"]
    lines = [f"EncNet alpha={alpha:g} seed {seed}: pixAcc {100 * metrics['pixAcc']:.2f}%  mIoU "
             f"{100 * metrics['mIoU']:.2f}%  ambiguous classes {100 * nanmean(run_iou(metrics)[AMBIGUOUS]):.2f}%  "
             f"({time.perf_counter() - start:.0f} s)"]
    runs = ablation.runs_of(sweep, "encnet", alpha)
    if not comparable(sweep, config):
        lines.append("no comparison: trained with other settings than the sweep's")
    elif not runs:
        lines.append(f"no comparison: the sweep has no runs at alpha={alpha:g} (it has {_alphas_text(sweep)})")
    for run in runs if comparable(sweep, config) else []:
        lines.append(f"  sweep, seed {run['seed']}: pixAcc {100 * run['pixAcc']:.2f}%  mIoU {100 * run['mIoU']:.2f}%  "
                     f"ambiguous classes {100 * nanmean(run_iou(run)[AMBIGUOUS]):.2f}%")
    print("\n".join(lines))
    return result, lines


@dataclass
class TrainingPanel:
    """The controls of :func:`training_panel`; ``display(panel.widget)`` shows them."""

    alpha: widgets.SelectionSlider
    seed: widgets.IntSlider
    button: widgets.Button
    output: widgets.Output  # the plan, the progress bars and the result
    widget: widgets.VBox
    lines: list[str] = field(default_factory=list)  # the last plan or result shown
    seconds: list[float] = field(default_factory=list)  # how long each plan update took


def training_panel(sweep: dict[str, Any], config: TrainConfig, *, images_per_s: float, basis: str,
                   alpha: float = 0.2) -> TrainingPanel:
    """Controls that train EncNet with ``config`` at the chosen alpha and seed when **Train** is pressed.

    Moving a control shows its :func:`plan` (the time estimate from
    ``images_per_s``, measured on ``basis``, and what the result will be compared
    with); the button runs :func:`train_and_compare` inside the output, so that
    tqdm's notebook bars (``tqdm.auto``; a text bar in a console) show the
    progress of each epoch. Nothing is trained until the button is pressed.
    """
    options = sorted({*PANEL_ALPHAS, *sweep_alphas(sweep)})
    if alpha not in options:
        raise ValueError(f"alpha={alpha:g} is not one of the panel's values {options}; start from one of those")
    panel = TrainingPanel(
        alpha=widgets.SelectionSlider(options=options, value=alpha, description="alpha", continuous_update=False),
        seed=widgets.IntSlider(value=0, min=0, max=9, description="seed", continuous_update=False),
        button=widgets.Button(description="Train", icon="play", tooltip="train EncNet at this alpha and seed"),
        output=widgets.Output(),
        widget=None,
    )
    panel.widget = widgets.VBox([widgets.HBox([panel.alpha, panel.seed, panel.button]), panel.output])

    def show_plan(_change=None) -> None:
        start = time.perf_counter()
        panel.lines = plan(sweep, config, panel.alpha.value, panel.seed.value, images_per_s=images_per_s,
                           basis=basis)
        panel.output.outputs = ({"output_type": "stream", "name": "stdout", "text": "\n".join(panel.lines) + "\n"},)
        panel.seconds.append(time.perf_counter() - start)

    def run(_button=None) -> None:
        panel.button.disabled = True
        panel.output.outputs = ()
        lines = plan(sweep, config, panel.alpha.value, panel.seed.value, images_per_s=images_per_s, basis=basis)
        try:
            with panel.output:
                print("\n".join(lines))
                _, panel.lines = train_and_compare(sweep, config, panel.alpha.value, panel.seed.value)
                # tqdm closes its bars' widgets when done, and the views of closed widgets read "Error
                # displaying widget: model not found" once the notebook is saved and reopened: the output
                # is redrawn with the printed lines only.
                panel.output.clear_output()
                print("\n".join(lines + panel.lines))
        finally:
            panel.button.disabled = False

    panel.alpha.observe(show_plan, names="value")
    panel.seed.observe(show_plan, names="value")
    panel.button.on_click(run)
    show_plan()
    return panel

