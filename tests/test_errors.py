"""Every user error is one line, `encnet: error: ...`, exit status 2, no traceback; bugs keep theirs.

One case per error the issue lists. The real-dataset cases run on a tiny ADE20K
tree (8x8 images, see test_data_real) and a checkpoint trained on it in a few seconds.
"""

import contextlib
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_check import truncate_jpeg
from test_data_real import make_ade, write_image, write_mask

from encnet import engine
from encnet.__main__ import main
from encnet.errors import UserError, one_line

TINY_ADE = ["--preset", "ade20k-encnet-r50", "--backbone", "small", "--weights-backbone", "none", "--crop-size", "8",
            "--base-size", "8", "--batch-size", "2", "--epochs", "1", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    """A tiny ADE20K tree and the checkpoint of one epoch on it."""
    root = tmp_path_factory.mktemp("ade")
    make_ade(root / "data")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", *TINY_ADE, "--data-root", str(root / "data"), "--out", str(root / "run")]) == 0
    return root


@pytest.fixture
def data(ade, tmp_path):
    """A copy of the tiny tree, to damage; returns its ADEChallengeData2016 folder."""
    shutil.copytree(ade / "data", tmp_path / "data")
    return tmp_path / "data" / "ADEChallengeData2016"


def one_error(argv, capsys, *expected):
    """Run the command: it must exit 2 with one line `encnet: error: ...` holding every ``expected`` text."""
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("encnet: error: ") and error.count("\n") == 1 and "Traceback" not in error, error
    for text in expected:
        assert text in error, error
    return error


def test_device_cuda_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    one_error(["train", "--preset", "synthetic-quick", "--device", "cuda", "--out", str(tmp_path)], capsys,
              "CUDA is not available")


def test_out_naming_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    one_error(["train", "--preset", "synthetic-quick", "--out", str(tmp_path / "file")], capsys, "is a file")


@pytest.mark.parametrize("damage, expected", [
    (lambda data: truncate_jpeg(data / "images/training/ADE_train_00000001.jpg"),
     "ADE_train_00000001.jpg is truncated"),
    (lambda data: Image.new("RGB", (8, 8)).save(data / "annotations/training/ADE_train_00000003.png"),
     "ADE_train_00000003.png is mode RGB"),
    (lambda data: Image.new("I;16", (8, 8)).save(data / "annotations/validation/ADE_val_00000001.png"),
     "ADE_val_00000001.png is mode I;16 (16-bit)"),
], ids=["truncated-jpeg", "rgb-mask", "16-bit-mask"])
def test_bad_files_before_training(data, tmp_path, capsys, damage, expected):
    damage(data)
    one_error(["train", *TINY_ADE, "--data-root", str(data.parent), "--out", str(tmp_path / "run")], capsys,
              "fail the file check", expected)


def test_a_label_out_of_range_found_in_a_loader_worker(data, tmp_path):
    """The error is raised in a DataLoader worker, whose message embeds its traceback; stderr shows one line.

    A separate process: in this one, the loader's worker would take 10 s to be shut down.
    """
    for mask in (data / "annotations/training").glob("*.png"):  # the fast check reads no label
        write_mask(mask, np.full((8, 8), 200))
    argv = ["train", *TINY_ADE, "--workers", "1", "--data-root", str(data.parent), "--out", str(tmp_path / "run")]
    done = subprocess.run([sys.executable, "-m", "encnet", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith("encnet: error: the mask ")
    assert ".png holds the value 200, but this dataset stores labels in [0, 150]" in done.stderr


def test_a_preset_of_another_dataset(capsys):
    one_error(["train", "--preset", "synthetic-quick", "--dataset", "ade20k"], capsys,
              "are not options of the ade20k dataset", "start from a preset of ade20k")


def test_a_missing_data_root_names_the_flag(capsys):
    error = one_error(["train", "--preset", "pcontext-encnet-r50"], capsys, "pass --data-root")
    assert "root=" not in error


@pytest.mark.parametrize("content, expected", [
    ("[1, 2]", "is not a sweep file"),
    ('{"config": {}, "runs": [{"model": "fcn"}]}', "is not a sweep file"),
    ("{not json", "is not JSON"),
], ids=["list", "run-without-keys", "not-json"])
def test_a_sweep_file_of_the_wrong_shape(tmp_path, capsys, content, expected):
    (tmp_path / "sweep.json").write_text(content)
    one_error(["sweep", "--preset", "synthetic-quick", "--se-weights", "0.2", "--out", str(tmp_path / "sweep.json")],
              capsys, expected, "pass another --out")


def test_sweep_jobs_must_be_positive(tmp_path, capsys):
    one_error(["sweep", "--preset", "synthetic-quick", "--se-weights", "0.2", "--jobs", "0",
               "--out", str(tmp_path / "sweep.json")], capsys, "--jobs must be an integer >= 1, got 0")


@pytest.mark.parametrize("flags, expected", [
    (["--crop-size", "-5"], "--crop-size must be an integer >= 1, got -5"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--workers", "-1"], "--workers must be an integer >= 0, got -1"),
], ids=["crop-size", "batch-size", "workers"])
def test_evaluate_numbers(ade, capsys, flags, expected):
    one_error(["evaluate", str(ade / "run" / "checkpoint.pt"), *flags], capsys, expected)


def test_evaluate_out_naming_a_folder_is_refused_before_evaluating(ade, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine, "evaluate", lambda *args, **kwargs: pytest.fail("evaluated before the check"))
    one_error(["evaluate", str(ade / "run" / "checkpoint.pt"), "--out", str(tmp_path)], capsys, "is a folder")
    (tmp_path / "file").write_text("")
    one_error(["evaluate", str(ade / "run" / "checkpoint.pt"), "--predictions", str(tmp_path / "file")], capsys,
              "is a file")


def test_evaluate_batches_of_images_of_several_sizes(ade, data, capsys, monkeypatch):
    monkeypatch.setattr(engine, "evaluate", lambda *args, **kwargs: pytest.fail("evaluated before the check"))
    write_image(data / "images/validation/ADE_val_00000002.jpg", seed=1, size=(8, 9))
    write_mask(data / "annotations/validation/ADE_val_00000002.png", np.zeros((8, 9)))
    one_error(["evaluate", str(ade / "run" / "checkpoint.pt"), "--data-root", str(data.parent), "--batch-size", "2",
               "--workers", "0"], capsys, "must have one size", "evaluate with a batch size of 1")


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch):
    with pytest.raises(UserError, match="epochs must be a positive integer"):
        main(["--debug", "train", "--preset", "synthetic-quick", "--epochs", "0"])
    with pytest.raises(UserError):
        main(["train", "--preset", "synthetic-quick", "--epochs", "0", "--debug"])

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(engine, "train", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["train", "--preset", "synthetic-quick", "--out", "unused"])


def test_one_line_of_an_error_re_raised_by_a_loader_worker():
    """The message a DataLoader gives an error re-raised from a worker; the original is its last line."""
    error = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                      '  File "x.py", line 1, in f\nencnet.errors.UserError: the mask m.png holds the value 300; '
                      "expected [0, 150]\n")
    assert one_line(error) == "the mask m.png holds the value 300; expected [0, 150]"
    assert one_line(UserError("plain")) == "plain"


def test_device_cuda_without_an_index_is_this_ranks_gpu(monkeypatch):
    """``--device cuda`` names no GPU; ``torch.cuda.set_device`` needs one, so the rank's own is picked."""
    from encnet import distributed
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup_process("cuda") == (0, 1, torch.device("cuda", 1))
    assert chosen == [torch.device("cuda", 1)]
    assert distributed.setup_process("cuda:0")[2] == torch.device("cuda", 0)
