"""The command line: `encnet train | evaluate | sweep`, its presets, overrides and errors."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import encnet.__main__ as cli
from encnet import evaluation
from encnet.__main__ import _parser, _train_config, main
from encnet.checkpoint import FORMAT, load_checkpoint
from encnet.config import PRESETS


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The CI smoke run, `encnet train --preset synthetic-quick`: its folder and its standard output."""
    out = tmp_path_factory.mktemp("quick")
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["train", "--preset", "synthetic-quick", "--out", str(out), "--no-progress"]) == 0
    return out, stdout.getvalue()


def test_synthetic_quick_end_to_end(quick, tmp_path, capsys):
    out, stdout = quick
    assert "pixAcc" in stdout
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["config"]["dataset"] == "synthetic" and checkpoint["iteration"] == 2 * 32 // 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"pixAcc", "mIoU", "mIoU_all", "IoU", "classes"} <= set(metrics)
    assert len((out / "log.jsonl").read_text().splitlines()) == 2

    # Evaluate the checkpoint on whole images, with palette PNGs of the predictions.
    assert main(["evaluate", str(out / "checkpoint.pt"), "--batch-size", "8", "--workers", "0",
                 "--predictions", str(tmp_path / "pred"), "--out", str(tmp_path / "eval.json")]) == 0
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert scores["pixAcc"] == pytest.approx(metrics["pixAcc"]) and scores["ms"] is False
    pngs = sorted((tmp_path / "pred").iterdir())
    assert [png.name for png in pngs] == [f"{index:05d}.png" for index in range(16)]
    with Image.open(pngs[0]) as png:
        assert png.mode == "P" and png.size == (64, 128)  # (width, height)
        assert np.asarray(png).max() < 17

    # A new run never overwrites a checkpoint; --resume alone takes the checkpoint's settings,
    # and a finished run has nothing left to do.
    assert main(["train", "--preset", "synthetic-quick", "--out", str(out)]) == 2
    assert "continue that run with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(out / "checkpoint.pt"), "--no-progress"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == checkpoint["iteration"]


def test_evaluate_multi_scale(quick, tmp_path, monkeypatch):
    """--ms: six scales with flip, sliding windows beyond the crop (on one image, to stay quick)."""
    whole_images = cli.whole_images

    class FirstImage(torch.utils.data.Subset):
        def __init__(self, dataset):
            super().__init__(dataset, [0])
            self.num_classes, self.palette = dataset.num_classes, dataset.palette

    datasets, calls, outputs = [], [], []
    predict = evaluation.predict

    def first_image(*args, **kwargs):
        datasets.append(FirstImage(whole_images(*args, **kwargs)))
        return datasets[-1]

    def recorded_predict(model, images, protocol):
        calls.append(protocol)
        outputs.append(predict(model, images, protocol))
        return outputs[-1]

    monkeypatch.setattr(cli, "whole_images", first_image)
    monkeypatch.setattr(evaluation, "predict", recorded_predict)
    assert main(["evaluate", str(quick[0] / "checkpoint.pt"), "--ms", "--workers", "0",
                 "--out", str(tmp_path / "ms.json")]) == 0
    assert calls[0].scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and calls[0].flip is True
    # The written scores are those of the multi-scale prediction, counted here by hand.
    scores = json.loads((tmp_path / "ms.json").read_text())
    (labels,), mask = outputs[0].argmax(1), datasets[0][0][1]
    assert scores["pixAcc"] == pytest.approx((labels == mask).double().mean().item())
    ious = [((labels == c) & (mask == c)).sum().item() / ((labels == c) | (mask == c)).sum().item()
            for c in range(17) if ((labels == c) | (mask == c)).any()]
    assert scores["mIoU"] == pytest.approx(sum(ious) / len(ious))


def test_flags_override_the_preset():
    args = _parser().parse_args(["train", "--preset", "synthetic", "--model", "fcn", "--epochs", "3",
                                 "--lr", "0.05", "--batch-size", "8", "--data-root", "somewhere"])
    config = _train_config(args)
    assert (config.model, config.epochs, config.lr, config.batch_size) == ("fcn", 3, 0.05, 8)
    assert config.data_root == "somewhere" and config.se_weight == 0.0  # FCN has no SE branch
    assert config.crop_size == PRESETS["synthetic"].crop_size and config.out == "runs/synthetic"
    reference = _train_config(_parser().parse_args(["train", "--preset", "ade20k-encnet-r101"]))
    assert (reference.crop_size, reference.base_size, reference.lr, reference.batch_size) == (576, 640, 0.004, 16)


@pytest.mark.parametrize(
    "argv, listed",
    [
        (["train", "--preset", "cityscapes"], "synthetic-quick"),
        (["train", "--preset", "synthetic", "--dataset", "coco"], "pcontext"),
        (["train", "--preset", "synthetic", "--model", "psp"], "encnet"),
        (["train", "--preset", "synthetic", "--backbone", "vgg"], "resnet101"),
    ],
)
def test_unknown_names_list_the_valid_ones(argv, listed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice" in error and listed in error


def test_user_errors_are_one_clear_line(tmp_path, capsys):
    cases = [
        (["train", "--epochs", "2"], "give --preset (one of: synthetic, synthetic-quick"),
        (["train", "--preset", "synthetic-quick", "--epochs", "0"], "epochs must be a positive integer, got 0"),
        (["train", "--preset", "synthetic-quick", "--lr", "inf"], "lr must be a positive number, got inf"),
        (["train", "--resume", str(tmp_path / "nothing.pt")], "no checkpoint at"),
        (["train", "--preset", "ade20k-encnet-r50", "--out", str(tmp_path)], "needs its folder: pass --data-root"),
        (["evaluate", str(tmp_path / "unsafe.pt")], "refused to load"),
    ]
    torch.save({"format": FORMAT, "model": {}, "config": print}, tmp_path / "unsafe.pt")
    for argv, message in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("encnet: error: ") and message in error and error.count("\n") == 1, error


def test_sweep_writes_one_file_and_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    argv = ["sweep", "--preset", "synthetic-quick", "--epochs", "1", "--se-weights", "0.4", "--seeds", "3",
            "--with-fcn", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    sweep = json.loads(out.read_text())
    assert [(run["model"], run["se_weight"], run["seed"]) for run in sweep["runs"]] == [("fcn", 0.0, 3),
                                                                                      ("encnet", 0.4, 3)]
    for run in sweep["runs"]:  # each run's scores: its last evaluation's, mIoU the mean IoU of the classes seen
        assert len(run["history"]) == 1 and run["mIoU"] == run["history"][-1]["mIoU"]
        seen = [iou for iou in run["IoU"] if iou is not None]
        assert run["mIoU"] == pytest.approx(sum(seen) / len(seen)) and 0 < run["mIoU"] < 1
    assert sweep["config"]["epochs"] == 1 and sweep["alphas"] == [0.4] and sweep["seeds"] == [3]
    before = out.stat().st_mtime_ns
    assert main(argv) == 0  # every run is in the file already: nothing is trained, nothing rewritten
    assert out.stat().st_mtime_ns == before
    assert "fcn" in capsys.readouterr().out
    assert main([*argv[:4], "2", *argv[5:]]) == 2  # another base config, same file
    assert "holds a sweep of another config" in capsys.readouterr().err
    assert main([*argv, "--models", '{"pool": {}}']) == 0  # adds a run of another model, keeps the others
    sweep = json.loads(out.read_text())
    assert [(run["model"], run["seed"]) for run in sweep["runs"]] == [("fcn", 3), ("encnet", 3), ("pool", 3)]
    assert sweep["models"] == {"pool": {}}
    capsys.readouterr()
    assert main([*argv, "--models", '{"psp": {}}']) == 2
    assert "--models takes registered models" in capsys.readouterr().err


def test_installed_command(tmp_path):
    command = Path(sys.executable).parent / "encnet"
    done = subprocess.run([str(command), "train", "--preset", "nope"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert done.returncode == 2
    assert "ade20k-encnet-r50" in done.stderr


def test_evaluate_in_bf16_and_compiled_lands_on_the_float32_scores(quick, tmp_path):
    """`encnet evaluate --amp bf16` and `--compile` score what float32 eager does, up to rounding."""
    checkpoint = str(quick[0] / "checkpoint.pt")
    scores = {}
    for name, flags in [("eager", []), ("bf16", ["--amp", "bf16"]), ("compiled", ["--compile"])]:
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", checkpoint, "--batch-size", "8", "--workers", "0", "--out", str(out), *flags]) == 0
        scores[name] = json.loads(out.read_text())
    assert scores["compiled"]["pixAcc"] == pytest.approx(scores["eager"]["pixAcc"], abs=1e-4)
    assert scores["bf16"]["pixAcc"] == pytest.approx(scores["eager"]["pixAcc"], abs=0.01)
    assert scores["bf16"]["mIoU"] == pytest.approx(scores["eager"]["mIoU"], abs=0.01)
