"""Command line: ``python -m encnet train | evaluate | predict | export | fetch | sweep | ...`` (or ``encnet ...``).

    encnet train --preset synthetic-quick --out runs/quick
    encnet train --preset synthetic --model fcn --epochs 4 --out runs/fcn
    encnet train --resume runs/quick/checkpoint.pt
    torchrun --nproc_per_node=8 -m encnet train --preset ade20k-encnet-r50 --data-root /data/ADEChallengeData2016
    encnet evaluate runs/quick/checkpoint.pt --ms --predictions runs/quick/predictions
    encnet evaluate --weights encnet_resnet50s_ade --dataset ade20k --data-root /data/ADEChallengeData2016 --ms
    encnet predict photo.jpg --weights encnet_r50-d8_512x512_80k_ade20k --out predictions/
    encnet export --weights encnet_resnet50s_ade --onnx encnet.onnx     # ONNX, with the protocol as metadata
    encnet predict photo.jpg --onnx encnet.onnx --out predictions/     # the same test through ONNX Runtime
    encnet fetch encnet_resnet50s_ade      # into torch hub's cache, for offline use later
    encnet sweep --preset synthetic --se-weights 0 0.2 --seeds 0 1 2 --with-fcn --jobs 2 --out runs/sweep.json
    encnet sweep ... --models '{"aspp": {"rate": 5}, "pool": {}}'   # adds the two receptive-field heads per seed
    encnet check-data --dataset ade20k --data-root /data
    encnet plot runs/quick runs/fcn --out curves.png   # loss and mIoU curves from each log.jsonl

Flags override the preset's fields (see :class:`encnet.config.TrainConfig`);
every command is a thin layer over the package: :mod:`encnet.engine` (train),
:mod:`encnet.evaluation` and :mod:`encnet.inference` (evaluate, predict), :mod:`encnet.export` (export),
:mod:`encnet.sweep`, :mod:`encnet.plot`.

A user error (:class:`encnet.errors.UserError`: a bad setting, file or folder)
prints one line, ``encnet: error: <what was wrong, what was expected, what to
do>``, and exits with status 2; ``--debug`` shows its traceback instead. Any
other exception is a bug and keeps its traceback. Ctrl-C prints one line and
exits with 130, SIGTERM likewise with 143, each saying what was kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import data, engine, export, inference
from .checkpoint import check_compatible, load_checkpoint
from .config import AMP_MODES, BACKBONES, DATASETS, PRESETS, SYNC_BN_MODES, TrainConfig, preset
from .data.check import check_dataset, check_files
from .data.folder import MAX_PIXELS, open_image
from .data.wrappers import whole_images
from .distributed import setup_process
from .errors import UserError, one_line
from .evaluation import evaluate
from .inference import MULTI_SCALES, Protocol
from .losses import LOSSES
from .models import get_model, list_models, load_trained, load_weights, zoo
from .plot import plot_runs
from .runs import check_writable, write_json
from .sweep import sweep as sweep_runs


def _none_or(kind: type) -> Callable[[str], Any]:
    """A flag's type for a field that may be None: "none" gives None, anything else ``kind(value)``."""
    return lambda value: None if value.lower() == "none" else kind(value)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return int(value)


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): pass an object, e.g. '{{\"num_codes\": 16}}'") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"num_codes\": 16}}', got {value!r}")
    return parsed


def _add_run_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of :class:`TrainConfig` (``--batch-size`` for ``batch_size``), its help from the field.

    Absent flags leave the preset's value (``argument_default=SUPPRESS``);
    ``out``, ``resume`` and ``skip`` are the command's own.
    """
    parser.add_argument("--preset", choices=list(PRESETS), help="starting config (flags below override its fields)")
    choices = {"dataset": DATASETS, "model": list_models(), "backbone": BACKBONES, "loss": tuple(LOSSES),
               "amp": AMP_MODES, "sync_bn": SYNC_BN_MODES}
    types = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("out", "resume", *skip):
            continue
        kind, flag = types[field.name], "--" + field.name.replace("_", "-")
        options: dict[str, Any] = {"help": field.metadata.get("help"), "choices": choices.get(field.name)}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is dict:
            options["type"], options["metavar"] = _json_object, "JSON"
        else:
            plain = [arg for arg in typing.get_args(kind) if arg is not type(None)] or [kind]
            options["type"] = plain[0] if len(plain) == len(typing.get_args(kind) or [kind]) else _none_or(plain[0])
        parser.add_argument(flag, **{key: value for key, value in options.items() if value is not None})
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="tqdm progress bars (default: when standard error is a terminal)")


def _add_evaluate(commands) -> None:
    """The ``evaluate`` command's flags."""
    evaluate = commands.add_parser("evaluate", help="score a checkpoint on a dataset split")
    evaluate.add_argument("checkpoint", nargs="?", help="checkpoint.pt written by `encnet train`")
    evaluate.add_argument("--weights", help="instead of a training checkpoint: a published name (see "
                          "`encnet.models.zoo`) or a checkpoint file of PyTorch-Encoding or mmsegmentation, "
                          "scored with its publisher's test protocol")
    evaluate.add_argument("--base-size", type=int, help="with --weights: override the protocol's base size")
    evaluate.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    evaluate.add_argument("--data-root", help="default: the checkpoint's")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--ms", action="store_true", help=f"multi-scale {MULTI_SCALES} with flip")
    evaluate.add_argument("--crop-size", type=int, help="sliding-window size (default: the training crop)")
    evaluate.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images only)")
    evaluate.add_argument("--workers", type=int, default=2)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--predictions", help="folder for palette PNGs of the predictions")
    evaluate.add_argument("--out", help="JSON file for the metrics (default: print only)")
    evaluate.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    evaluate.add_argument("--amp", choices=AMP_MODES, default="off",
                          help="mixed precision of the forward passes: off (float32, default), bf16 or fp16")
    evaluate.add_argument("--compile", action="store_true", help="run the model through torch.compile")


def _add_plot(commands) -> None:
    """The ``plot`` command's arguments."""
    plot = commands.add_parser("plot", help="draw the loss and mIoU curves of run folders into a PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by `encnet train --out`")
    plot.add_argument("--out", required=True, help="the PNG file to write, e.g. curves.png")


def _add_export(commands) -> None:
    """The ``export`` command's flags."""
    command = commands.add_parser("export", help="export weights to ONNX, with their test protocol as metadata")
    command.add_argument("--weights", required=True, help="a published name (see `encnet.models.zoo`) or a "
                         "checkpoint file of encnet, PyTorch-Encoding or mmsegmentation")
    command.add_argument("--onnx", required=True, help="the .onnx file to write")
    command.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encnet", description="EncNet: train, evaluate, sweep the SE-loss weight.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (also under torchrun)", argument_default=argparse.SUPPRESS)
    _add_run_flags(train)
    train.add_argument("--out", help="folder for checkpoint.pt, log.jsonl, metrics.json (default: runs/<preset>)")
    train.add_argument("--resume", help="checkpoint.pt to continue from (its settings are the default)")

    _add_evaluate(commands)
    _add_plot(commands)
    _add_export(commands)

    predict = commands.add_parser("predict", help="segment photos with published or trained weights")
    predict.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    weights = predict.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="a published name or a checkpoint file")
    weights.add_argument("--onnx", help="a file of `encnet export`, run by ONNX Runtime on the CPU")
    predict.add_argument("--out", required=True,
                         help="folder for <image>_labels.png, <image>_overlay.png, <image>.json")
    predict.add_argument("--ms", action="store_true", help="the publisher's multi-scale + flip test")
    predict.add_argument("--device", default="auto")

    fetch = commands.add_parser("fetch", help="download published weights into torch hub's cache")
    fetch.add_argument("names", nargs="+", choices=list(zoo.PUBLISHED), metavar="NAME",
                       help=f"published weights: {', '.join(zoo.PUBLISHED)}")

    sweep = commands.add_parser("sweep", help="SE-loss weight sweep, one JSON file", argument_default=argparse.SUPPRESS)
    _add_run_flags(sweep, skip=("se_weight", "tensorboard"))
    sweep.add_argument("--se-weights", type=float, nargs="+", required=True,
                       help="SE-loss weights (alpha) to train with, one run each per seed")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per alpha (default: 0)")
    sweep.add_argument("--with-fcn", action="store_true", default=False, help="add an FCN run per seed")
    sweep.add_argument("--models", type=_json_object, default={}, help='other models without SE-loss, a run per '
                       'seed, a JSON object of their head options, e.g. \'{"aspp": {"rate": 5}, "pool": {}}\'')
    sweep.add_argument("--jobs", type=int, default=1,
                       help="runs trained side by side, each on threads / jobs threads (2 on a 2-core CPU)")
    sweep.add_argument("--out", required=True, help="JSON file with every run's metrics")

    check = commands.add_parser("check-data", help="check every file of a dataset, every mask's labels included")
    check.add_argument("--dataset", choices=[name for name in DATASETS if name != "synthetic"], required=True)
    check.add_argument("--data-root", required=True, help="the dataset's folder")
    check.add_argument("--aug", action="store_true", help="voc: the training set with the SBD masks")
    check.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)

    for name in ("train", "evaluate", "predict", "sweep", "check-data"):
        commands.choices[name].add_argument(
            "--max-pixels", type=_positive_int, default=argparse.SUPPRESS, metavar="N",
            help=f"the largest image read, width x height (default: {MAX_PIXELS:,}); checked from the file's header")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    for command in commands.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of a user error")
    return parser


def _overridden(start: TrainConfig, args: argparse.Namespace, **fields) -> TrainConfig:
    """``start`` with the fields of the given flags (and ``fields``) replaced.

    With ``--model``, the head options of ``start`` that the new model does not
    take are dropped (``--model fcn`` on a preset of EncNet with a lateral path).
    """
    names = {field.name for field in dataclasses.fields(TrainConfig)} - {"out", "resume"}
    overrides = {name: value for name, value in vars(args).items() if name in names}
    if "model" in overrides and "model_options" not in overrides:
        takes = get_model(overrides["model"]).options if overrides["model"] in list_models() else {}
        overrides["model_options"] = {name: value for name, value in start.model_options.items() if name in takes}
    return dataclasses.replace(start, **overrides, **fields)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    if "resume" in args:
        start = (preset(args.preset) if "preset" in args
                 else TrainConfig.from_dict(load_checkpoint(args.resume)["config"]))
        out = args.out if "out" in args else str(Path(args.resume).parent)  # the run's own folder, even if copied
        return _overridden(start, args, resume=args.resume, out=out)
    if "preset" not in args:
        raise UserError(f"give --preset (one of: {', '.join(PRESETS)}), or --resume a checkpoint")
    return _overridden(preset(args.preset), args, out=args.out if "out" in args else f"runs/{args.preset}")


def _check_data_root(config: TrainConfig) -> None:
    if config.dataset != "synthetic" and config.data_root is None:
        raise UserError(f"dataset {config.dataset!r} needs its folder: pass --data-root <folder>; data/README.md "
                        f"gives its layout, `python -m encnet.data.prepare {config.dataset}` downloads it")


def _check_output_file(flag: str, path: str) -> None:
    """Fail now, not after the work, if ``path`` cannot become a file."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path!r} is a folder, but it names the JSON file to write; pass a file path, "
                        f"e.g. {str(target / 'metrics.json')!r}")
    blocking = next((parent for parent in target.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{flag} {path!r} cannot be written: {str(blocking)!r} is a file, not a folder; "
                        "pass a path in a folder")
    check_writable(target.parent, flag)


def _run_train(args: argparse.Namespace) -> None:
    config = _train_config(args)
    args.run_folder = config.out  # for the message of an interruption
    _check_data_root(config)
    result = engine.train(config, progress=args.progress if "progress" in args else None)
    if _is_rank_zero() and result["metrics"] is not None:
        metrics = result["metrics"]
        print(f"pixAcc {metrics['pixAcc']:.4f}  mIoU {metrics['mIoU']:.4f}  mIoU_all {metrics['mIoU_all']:.4f}"
              f"  -> {result['config']['out']}")


def _protocol(model, entry, args: argparse.Namespace) -> Protocol:
    """The test protocol of the weights (the publisher's, or the training crop's), with the command's flags."""
    protocol = entry.protocol if entry is not None else model.protocol
    overrides = {name: getattr(args, name) for name in ("crop_size", "base_size") if getattr(args, name, None)}
    protocol = dataclasses.replace(protocol, **overrides)
    return protocol.multi_scale() if args.ms else protocol


def _compiled(model: Any, args: argparse.Namespace) -> Any:
    """``model``, through ``torch.compile`` with ``--compile`` (each new image size compiles again)."""
    return torch.compile(model) if args.compile else model


def _evaluate_weights(args: argparse.Namespace) -> None:
    rank, _, device = setup_process(args.device)
    model, entry = load_weights(args.weights)
    name = args.dataset or (entry.dataset if entry is not None else None)
    if name is None:
        raise UserError(f"pass --dataset: {args.weights!r} is not a published name that says its dataset")
    dataset = whole_images(name, args.split, root=args.data_root, options={})
    if model.num_classes != dataset.num_classes:
        raise UserError(f"the weights predict {model.num_classes} classes but {name} has {dataset.num_classes}; "
                         "pass the dataset the weights were trained on")
    check_files(dataset)
    protocol = _protocol(model, entry, args)
    metrics = evaluate(_compiled(model.to(device), args), dataset, protocol, batch_size=1, workers=args.workers,
                       predictions=args.predictions, progress=args.progress, amp=args.amp)
    if rank == 0:
        if args.out:
            write_json(args.out, {**metrics, "classes": list(dataset.classes), "weights": args.weights,
                                  "split": args.split, "ms": args.ms, "protocol": dataclasses.asdict(protocol)})
        print(f"pixAcc {metrics['pixAcc']:.4f}  mIoU {metrics['mIoU']:.4f}  mIoU_all {metrics['mIoU_all']:.4f}")
        if entry is not None:
            suffix = "_ms" if args.ms else ""
            figures = entry.figures
            published = {key: figures[key + suffix] for key in ("pixAcc", "mIoU") if key + suffix in figures}
            print(f"published by {entry.publisher} ({'ms + flip' if args.ms else 'single scale'}): "
                  + ("  ".join(f"{key} {value:.2f}" for key, value in published.items()) or "no figure"))


def _run_predict(args: argparse.Namespace) -> None:
    check_writable(args.out, "--out")
    for image in args.images:  # every file's header (exists, an 8-bit image, size) before the weights load
        with open_image(Path(image)):
            pass
    if args.onnx is not None:  # the protocol, classes and palette from the file's metadata
        model, entry = export.load_onnx(args.onnx), None
    else:
        _, _, device = setup_process(args.device)
        model, entry = load_weights(args.weights)
        model.to(device)
    classes, palette = inference.classes_and_palette(model, entry)
    protocol = _protocol(model, entry, args)
    source = {"onnx": args.onnx} if args.onnx is not None else {"weights": args.weights}
    for image in args.images:
        result = inference.segment(model, image, protocol)
        record = inference.save_segmentation(result, image, args.out, Path(image).stem, classes=classes,
                                             palette=palette, extra={"image": image, **source})
        top = ", ".join(f"{row['class']} {row['probability']:.2f}" for row in record["se_top10"][:5])
        print(f"{image} -> {Path(args.out) / Path(image).stem}_labels.png" + (f"  (SE: {top})" if top else ""))


def _run_export(args: argparse.Namespace) -> None:
    export.require_packages()
    target = Path(args.onnx)
    if target.is_dir():
        raise UserError(f"--onnx {args.onnx!r} is a folder, but it names the file to write; pass a file path, "
                        f"e.g. {str(target / 'model.onnx')!r}")
    check_writable(target.parent, "--onnx")
    model, entry = load_weights(args.weights)
    size = (256, 320)
    path = export.export_onnx(model, target, opset=args.opset, example_size=size, entry=entry, weights=args.weights)
    check = torch.randn(1, 3, size[0] + 40, size[1] - 56, generator=torch.Generator().manual_seed(1))
    difference = export.largest_difference(model, export.load_onnx(path), check)
    print(f"{args.weights} -> {path}  (ONNX Runtime vs PyTorch on a random {check.size(2)}x{check.size(3)} image: "
          f"largest difference {difference:.1e} of the largest logit)")


def _run_fetch(args: argparse.Namespace) -> None:
    for name in args.names:
        print(f"{name}: {zoo.get(name).fetch()}")


def _check_evaluate_args(args: argparse.Namespace) -> None:
    """The numbers of `evaluate`, checked as TrainConfig checks those of `train`; its outputs before the work."""
    for flag, value, least in (("--crop-size", args.crop_size, 1), ("--batch-size", args.batch_size, 1),
                               ("--workers", args.workers, 0)):
        if value is not None and value < least:
            raise UserError(f"{flag} must be an integer >= {least}, got {value}")
    if args.out is not None:
        _check_output_file("--out", args.out)
    if args.predictions is not None and Path(args.predictions).exists() and not Path(args.predictions).is_dir():
        raise UserError(f"--predictions {args.predictions!r} is a file, but it names the folder for the PNGs; "
                        "pass a folder path")
    if args.predictions is not None:
        check_writable(args.predictions, "--predictions")


def _run_evaluate(args: argparse.Namespace) -> None:
    _check_evaluate_args(args)
    if args.weights is not None:
        _evaluate_weights(args)
        return
    if args.checkpoint is None:
        raise UserError("pass a checkpoint.pt written by `encnet train`, or --weights NAME|PATH")
    rank, _, device = setup_process(args.device)
    model, config, checkpoint = load_trained(args.checkpoint, device=device)
    name = args.dataset or config.dataset
    dataset = whole_images(name, args.split, root=args.data_root or config.data_root,
                           options=config.dataset_options if name == config.dataset else {})
    check_compatible(checkpoint, model=config.model, backbone=config.backbone, num_classes=dataset.num_classes)
    check_files(dataset, same_size=args.batch_size > 1)
    protocol = Protocol(crop_size=args.crop_size or config.crop_size)
    metrics = evaluate(_compiled(model, args), dataset, protocol.multi_scale() if args.ms else protocol,
                       batch_size=args.batch_size, workers=args.workers, predictions=args.predictions,
                       progress=args.progress, amp=args.amp)
    if rank == 0:
        if args.out:
            write_json(args.out, {**metrics, "classes": checkpoint["classes"], "checkpoint": args.checkpoint,
                                  "split": args.split, "ms": args.ms})
        print(f"pixAcc {metrics['pixAcc']:.4f}  mIoU {metrics['mIoU']:.4f}  mIoU_all {metrics['mIoU_all']:.4f}")


def _run_sweep(args: argparse.Namespace) -> None:
    if "preset" not in args:
        raise UserError(f"give --preset (one of: {', '.join(PRESETS)})")
    config = _overridden(preset(args.preset), args)
    _check_data_root(config)
    _check_output_file("--out", args.out)
    if args.jobs < 1:
        raise UserError(f"--jobs must be an integer >= 1, got {args.jobs}")
    unknown = sorted(set(args.models) - set(list_models()))
    if unknown or not all(isinstance(options, dict) for options in args.models.values()):
        raise UserError(f"--models takes registered models ({', '.join(list_models())}) each with a JSON object of "
                        f"head options, e.g. '{{\"pool\": {{}}}}'; got {json.dumps(args.models)}")
    result = sweep_runs(config, alphas=args.se_weights, seeds=args.seeds, with_fcn=args.with_fcn, out=args.out,
                        models=args.models, jobs=args.jobs, progress=args.progress if "progress" in args else None)
    if _is_rank_zero():
        for run in result["runs"]:
            print(f"{run['model']:>6}  alpha {run['se_weight']:<5g} seed {run['seed']}:  "
                  f"pixAcc {run['pixAcc']:.4f}  mIoU {run['mIoU']:.4f}")


def _run_check_data(args: argparse.Namespace) -> None:
    if args.aug and args.dataset != "voc":
        raise UserError(f"--aug adds the SBD masks to PASCAL VOC; --dataset {args.dataset} has no such option")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    problems, total = [], 0
    for split in ("train", "val"):
        options = {"aug": True} if args.aug and split == "train" else {}
        dataset = data.DATASETS[args.dataset](args.data_root, split, **options)
        found = check_dataset(dataset, progress=progress)
        print(f"{args.dataset} {split}: {len(dataset)} image/mask pairs, {len(found)} with problems")
        problems += found
        total += len(dataset)
    for problem in problems:
        print(f"  {problem}")
    if problems:
        raise UserError(f"{len(problems)} of the {total} image/mask pairs of {args.dataset} fail the check "
                        "(listed above); fix them, or extract or convert them again")


def _run_plot(args: argparse.Namespace) -> None:
    print(f"{', '.join(args.runs)} -> {plot_runs(args.runs, args.out)}")


def _is_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _after_interruption(args: argparse.Namespace) -> str:
    """What an interruption (Ctrl-C, SIGTERM) left, and how to go on."""
    if args.command == "train" and getattr(args, "run_folder", None):
        checkpoint = Path(args.run_folder) / "checkpoint.pt"
        if checkpoint.is_file():
            return (f"the last checkpoint, {str(checkpoint)!r}, is intact: continue with "
                    f"`encnet train --resume {checkpoint}`")
        return f"no epoch had finished, so {str(args.run_folder)!r} holds no checkpoint: start the run again"
    if args.command == "sweep":
        return f"{args.out!r} keeps the finished runs: the same command continues the sweep"
    return "nothing was left half-written (every file is written atomically)"


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit), handled as Ctrl-C: workers stop, files stay whole."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    run = {"train": _run_train, "evaluate": _run_evaluate, "predict": _run_predict, "export": _run_export,
           "fetch": _run_fetch, "sweep": _run_sweep, "check-data": _run_check_data, "plot": _run_plot}
    if "max_pixels" in args:  # the environment reaches the data loader's workers (read by data.folder.max_pixels)
        os.environ["ENCNET_MAX_PIXELS"] = str(args.max_pixels)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        run[args.command](args)
    except (UserError, KeyboardInterrupt) as error:
        if args.debug:
            raise
        several = dist.is_initialized() and dist.get_world_size() > 1
        where = f" (rank {dist.get_rank()} of {dist.get_world_size()})" if several else ""
        if isinstance(error, KeyboardInterrupt):
            how = "terminated (SIGTERM)" if isinstance(error, _Terminated) else "interrupted"
            print(f"encnet: {how}{where}; {_after_interruption(args)}", file=sys.stderr)
            return 143 if isinstance(error, _Terminated) else 130
        print(f"encnet: error: {one_line(error)}{where}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
