"""The paper's SE-loss ablation read from a sweep file: its rows, their mean and spread over seeds.

A sweep file is what :func:`encnet.sweep.sweep` writes::

    {"config": base config, "alphas": [...], "seeds": [...],
     "runs": [{"model", "se_weight", "seed", "pixAcc", "mIoU", "mIoU_all", "IoU", "history"}]}

The ablation (Zhang et al., CVPR 2018, arXiv:1803.08904, "Ablation Study of EncNet on
PASCAL Context") has three rows, each a (model, alpha) of the sweep: FCN, EncNet
(alpha = 0: the Context Encoding Module without the SE-loss) and EncNet + SE-loss
(alpha = 0.2). :func:`table` prints them as mean ± sample std over seeds,
:func:`compare` sets a recomputed sweep beside a committed one (what ``make
reproduce`` ends with) and :func:`ordering` checks, seed by seed, that
``mIoU(FCN) < mIoU(EncNet) < mIoU(EncNet + SE-loss)`` with a margin between the ends.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, NamedTuple

from .errors import UserError


class Method(NamedTuple):
    """One row of the ablation: which runs of a sweep it is, and the paper's PASCAL-Context numbers."""

    name: str
    model: str
    alpha: float
    encoding: str
    se_loss: str
    paper_pixacc: float  # %, ResNet-50, single scale
    paper_miou: float  # %


METHODS = (
    Method("FCN", "fcn", 0.0, "-", "-", 73.4, 41.0),
    Method("EncNet", "encnet", 0.0, "yes", "-", 78.1, 47.6),
    Method("EncNet + SE-loss", "encnet", 0.2, "yes", "a=0.2", 79.4, 49.2),
)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The sweep file at ``path``; a missing or malformed file is a :class:`UserError` saying what to do."""
    try:
        sweep = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the sweep file {str(path)!r} ({error}); expected the JSON that "
                        "`encnet sweep` (or encnet.sweep.sweep) writes: check the path or run the sweep") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("runs"), list):
        raise UserError(f"{str(path)!r} is not a sweep file: expected a JSON object with a list of runs, as "
                        "`encnet sweep` writes; check the path")
    return sweep


def runs_of(sweep: dict[str, Any], model: str, alpha: float) -> list[dict[str, Any]]:
    """The runs of ``sweep`` with this model and SE-loss weight, sorted by seed."""
    return sorted((run for run in sweep["runs"] if run["model"] == model and run["se_weight"] == alpha),
                  key=lambda run: run["seed"])


def percent(method: Method, sweep: dict[str, Any], metric: str) -> list[float]:
    """``metric`` ("pixAcc" or "mIoU") of each seed of ``method`` in ``sweep``, in percent."""
    return [100 * run[metric] for run in runs_of(sweep, method.model, method.alpha)]


def mean_std(values: list[float]) -> str:
    """``"mean ± std (n seeds)"`` of values already in percent; the sample std, none for one seed."""
    if not values:
        return "no runs"
    spread = f" ± {statistics.stdev(values):4.2f}" if len(values) > 1 else "       "
    return f"{statistics.mean(values):5.2f}{spread} ({len(values)} seed{'s' if len(values) > 1 else ''})"


def table(sweep: dict[str, Any]) -> str:
    """The ablation table of ``sweep``: a header naming its config, then one line per method, the paper beside."""
    config = sweep["config"]
    options = config["dataset_options"]
    size = options.get("image_size", config["crop_size"])
    title = (f"SE-loss ablation on SyntheticScenes ({size}x{size // 2}, {options['train_samples']} train / "
             f"{options['val_samples']} val images, {config['epochs']} epochs, {config['backbone']} backbone), "
             "validation set")
    header = (f"{'method':17} {'encoding':8} {'SE-loss':7}  {'pixAcc %':22} {'mIoU %':22} | paper, PASCAL-Context "
              "R50: pixAcc % / mIoU %")
    lines = [title, header]
    for method in METHODS:
        lines.append(f"{method.name:17} {method.encoding:8} {method.se_loss:7}  "
                     f"{mean_std(percent(method, sweep, 'pixAcc')):22} {mean_std(percent(method, sweep, 'mIoU')):22} "
                     f"| {method.paper_pixacc:.1f} / {method.paper_miou:.1f}")
    return "\n".join(lines)


def compare(recomputed: dict[str, Any], committed: dict[str, Any]) -> str:
    """Recomputed, committed and paper's mIoU and pixAcc per method, and whether each recomputed mean lies
    within the committed seeds' range ``[min, max]``."""
    header = (f"{'method':17} {'metric':6}  {'recomputed %':22} {'committed %':22} {'paper %':>7}  "
              "recomputed mean within the committed seeds' range?")
    lines = [header]
    for method in METHODS:
        for metric, paper in (("mIoU", method.paper_miou), ("pixAcc", method.paper_pixacc)):
            new, old = percent(method, recomputed, metric), percent(method, committed, metric)
            if new and old:
                mean = statistics.mean(new)
                inside = min(old) <= mean <= max(old)
                verdict = (f"{'yes' if inside else 'NO'}: {mean:.2f} {'in' if inside else 'outside'} "
                           f"[{min(old):.2f}, {max(old):.2f}]")
            else:
                verdict = "cannot tell: " + ("no recomputed runs" if not new else "no committed runs")
            lines.append(f"{method.name:17} {metric:6}  {mean_std(new):22} {mean_std(old):22} {paper:7.1f}  {verdict}")
    return "\n".join(lines)


def ordering(sweep: dict[str, Any], *, margin: float = 5.0) -> list[str]:
    """One line per seed present in all three methods: whether mIoU(FCN) < mIoU(EncNet) < mIoU(EncNet + SE-loss)
    with each of the two steps at least ``margin`` points."""
    by_seed = [{run["seed"]: 100 * run["mIoU"] for run in runs_of(sweep, method.model, method.alpha)}
               for method in METHODS]
    lines = []
    for seed in sorted(set.intersection(*(set(values) for values in by_seed))):
        fcn, encnet, se = (values[seed] for values in by_seed)
        holds = encnet - fcn >= margin and se - encnet >= margin
        lines.append(f"seed {seed}: FCN {fcn:.2f} < EncNet {encnet:.2f} < EncNet + SE-loss {se:.2f}, steps "
                     f"{encnet - fcn:+.2f} and {se - encnet:+.2f} points (each at least {margin:g}): "
                     f"{'holds' if holds else 'DOES NOT HOLD'}")
    return lines


def last_third_gain(run: dict[str, Any]) -> float:
    """mIoU points a run gained over the last third of its training: its final validation mIoU minus the
    one at the last evaluation at or before 2/3 of its epochs (its history must have one there)."""
    history = run["history"]
    epochs = history[-1]["epoch"]
    before = [record for record in history if record["epoch"] <= 2 * epochs / 3]
    if not before:
        raise UserError(f"run {run['model']} seed {run['seed']} was evaluated only after 2/3 of its training; "
                        "train it with eval_every=1 to see its curve")
    return 100 * (history[-1]["mIoU"] - before[-1]["mIoU"])


def ambiguous_iou(run: dict[str, Any], ambiguous: tuple[int, ...]) -> float:
    """Mean IoU (%) of a run over the classes ``ambiguous`` (``SyntheticScenes.ambiguous``)."""
    return 100 * statistics.mean(run["IoU"][c] for c in ambiguous)


def cost(config: Any, num_classes: int) -> dict[str, float]:
    """Parameters and floating-point operations of the model ``config`` builds, on one image of its size.

    ``config`` is a :class:`encnet.config.TrainConfig`; the model is built randomly initialised
    and counted in eval mode (what is run at test time: no auxiliary head), one image of
    ``crop_size`` rows and half as many columns (the synthetic scenes) or a square crop.
    FLOPs are ``torch.utils.flop_counter``'s count (a multiply-add is 2 FLOPs; convolutions and
    matrix products only). Parameters include the training-only auxiliary head.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = config.build_model(num_classes, pretrained=False).eval()
    height = config.crop_size
    width = height // 2 if config.dataset == "synthetic" else height
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width))
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops": counter.get_total_flops()}


class Context(NamedTuple):
    """A row of the context-versus-receptive-field table: a model of a sweep and how it gets context."""

    name: str
    model: str
    alpha: float
    context: str


CONTEXT_METHODS = (
    Context("FCN", "fcn", 0.0, "none beyond its receptive field"),
    Context("FCN + ASPP", "aspp", 0.0, "receptive field: dilated 3x3 convs across the image"),
    Context("FCN + image pooling", "pool", 0.0, "receptive field: the image's mean feature at every pixel"),
    Context("EncNet", "encnet", 0.0, "Context Encoding Module"),
    Context("EncNet + SE-loss", "encnet", 0.2, "Context Encoding Module + SE-loss"),
)


def context_table(sweep: dict[str, Any], ambiguous: tuple[int, ...], num_classes: int) -> str:
    """mIoU, pixAcc, ambiguous-class IoU (mean ± std over seeds), parameters, GFLOPs per image and training
    minutes per run (mean) of every :data:`CONTEXT_METHODS` row the sweep holds runs of.

    The models are built from the sweep's config with each row's model, SE-loss weight and head options
    (the sweep file's ``"models"``) to count their cost (:func:`cost`).
    """
    from .config import TrainConfig
    from .sweep import _sweep_config  # the config the sweep trained the row's runs with

    config = TrainConfig.from_dict(sweep["config"])
    options = sweep.get("models", {})
    lines = [f"{'method':20} {'mIoU %':>23} {'pixAcc %':>23} {'ambiguous IoU %':>23} {'params':>6} "
             f"{'GFLOPs':>6} {'min/run':>7}"]
    for row in CONTEXT_METHODS:
        runs = runs_of(sweep, row.model, row.alpha)
        if not runs:
            continue
        spent = cost(_sweep_config(config, row.model, row.alpha, runs[0]["seed"], options.get(row.model)), num_classes)
        minutes = [run["seconds"] / 60 for run in runs if "seconds" in run]
        lines.append(f"{row.name:20} {mean_std([100 * run['mIoU'] for run in runs]):>23} "
                     f"{mean_std([100 * run['pixAcc'] for run in runs]):>23} "
                     f"{mean_std([ambiguous_iou(run, ambiguous) for run in runs]):>23} "
                     f"{spent['parameters'] / 1e6:5.2f}M {spent['flops'] / 1e9:6.2f} "
                     f"{statistics.mean(minutes) if minutes else float('nan'):7.1f}")
    return "\n".join(lines)


def num_codes(config: Any) -> int:
    """K, the number of codewords of the EncNet that ``config`` (a TrainConfig) builds (its model_options, else
    the head's default)."""
    return config.build_model(2, pretrained=False).head.enc_module.encoding.num_codes



def _codeword_sweep(sweep: dict[str, Any], alpha: float) -> tuple[int, Any, list[dict[str, Any]]]:
    """(K, the config EncNet's runs were trained with, those runs) of one sweep file of the K sweep."""
    from .config import TrainConfig
    from .sweep import _sweep_config

    runs = runs_of(sweep, "encnet", alpha)
    if not runs:
        raise UserError(f"a sweep file holds no EncNet run at alpha {alpha:g}; pass the files of the K sweep")
    config = _sweep_config(TrainConfig.from_dict(sweep["config"]), "encnet", alpha, runs[0]["seed"])
    return num_codes(config), config, runs


def codeword_runs(sweeps: list[dict[str, Any]], *, alpha: float = 0.2) -> dict[int, tuple[Any, list[dict[str, Any]]]]:
    """The K sweep: ``{K: (config, EncNet's runs at SE-loss weight alpha)}`` over sweep files of EncNets of
    several K, sorted by K.

    Each sweep's K is read from the config it trained (:func:`num_codes`); a K found in two files is
    refused, as is a file without EncNet runs at ``alpha``.
    """
    by_k = {}
    for sweep in sweeps:
        k, config, runs = _codeword_sweep(sweep, alpha)
        if k in by_k:
            raise UserError(f"two sweep files hold EncNets of K = {k} codewords; pass each K's file once")
        by_k[k] = (config, runs)
    return dict(sorted(by_k.items()))


def codewords_table(sweeps: list[dict[str, Any]], ambiguous: tuple[int, ...], num_classes: int,
                    *, alpha: float = 0.2) -> str:
    """The K sweep's table: per K, mIoU, pixAcc and ambiguous-class IoU (mean ± std over seeds), the
    model's parameters (:func:`cost`) and each seed's mIoU."""
    lines = [f"{'K':>3} {'mIoU %':>23} {'pixAcc %':>23} {'ambiguous IoU %':>23} {'params':>6}  mIoU per seed"]
    for k, (config, runs) in codeword_runs(sweeps, alpha=alpha).items():
        seeds = " ".join(f"{run['seed']}: {100 * run['mIoU']:.2f}" for run in runs)
        lines.append(f"{k:>3} {mean_std([100 * run['mIoU'] for run in runs]):>23} "
                     f"{mean_std([100 * run['pixAcc'] for run in runs]):>23} "
                     f"{mean_std([ambiguous_iou(run, ambiguous) for run in runs]):>23} "
                     f"{cost(config, num_classes)['parameters'] / 1e6:5.3f}M  {seeds}")
    return "\n".join(lines)
