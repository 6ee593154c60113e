"""Failures that end in one line, exit 2 (or 130 for an interruption), before any work, with nothing lost."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import encnet.__main__ as cli
from encnet import checkpoint as checkpoints
from encnet import engine
from encnet.__main__ import main
from encnet.checkpoint import load_checkpoint, save_checkpoint

QUICK = ["--preset", "synthetic-quick", "--no-progress"]


def one_error(argv, capsys, *expected, status=2):
    """Run the command: it must exit ``status`` with one line on standard error holding every ``expected`` text."""
    assert main(argv) == status
    error = capsys.readouterr().err
    assert error.startswith("encnet: ") and error.count("\n") == 1 and "Traceback" not in error, error
    for text in expected:
        assert text in error, error
    return error


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished synthetic-quick run: its folder."""
    out = tmp_path_factory.mktemp("run") / "quick"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    return out


@pytest.fixture
def photo(tmp_path) -> Path:
    """A 64 x 64 PNG: predict checks every image's header first, so the other faults need a sound image."""
    path = tmp_path / "scene.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    return path


@pytest.fixture
def read_only() -> Path:
    """An existing folder that even root cannot write in (sysfs), or one made read-only for a normal user."""
    for candidate in (Path("/sys/kernel"), Path("/proc/self")):
        try:
            descriptor, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(descriptor)
        os.unlink(probe)
    if os.geteuid() != 0:
        folder = Path(tempfile.mkdtemp())
        folder.chmod(0o555)
        return folder
    pytest.skip("no read-only folder on this machine")


@pytest.mark.parametrize("argv, expected", [
    (["train", *QUICK, "--seed", "-1"], "seed must be an integer from 0 to 2147483647"),
    (["train", *QUICK, "--seed", "99999999999"], "got 99999999999"),
    (["sweep", "--preset", "synthetic-quick", "--se-weights", "0", "--seeds", "-1"], "seed must be an integer"),
    (["train", *QUICK, "--device", "meta"], "device must be auto, cpu, cuda or cuda:N, got 'meta'"),
    (["train", *QUICK, "--crop-size", "32"], "rendered at image_size=128 and never cropped, but crop_size=32"),
], ids=["seed-negative", "seed-huge", "sweep-seed", "device-meta", "synthetic-crop"])
def test_bad_settings_are_one_line(argv, expected, tmp_path, capsys):
    out = ["--out", str(tmp_path / ("sweep.json" if argv[0] == "sweep" else "run"))]
    one_error(argv + out, capsys, expected)


def test_evaluate_settings_are_one_line(trained, photo, capsys):
    one_error(["evaluate", str(trained / "checkpoint.pt"), "--split", "test"], capsys,
              "unknown split 'test'; SyntheticScenes has splits train, val")
    one_error(["evaluate", str(trained / "checkpoint.pt"), "--dataset", "ade20k"], capsys,
              "dataset 'ade20k' needs its folder: pass --data-root")
    one_error(["predict", str(photo), "--weights", str(trained / "checkpoint.pt"), "--out", str(photo.parent / "o"),
               "--device", "meta"], capsys, "meta device, which encnet does not train or run on")


@pytest.mark.parametrize("content", [b"", os.urandom(2000)], ids=["empty", "random-bytes"])
def test_a_file_that_is_no_torch_file_is_one_line_without_advice_to_unpickle(content, tmp_path, photo, capsys):
    (tmp_path / "weights.pt").write_bytes(content)
    for argv in (["predict", str(photo), "--weights", str(tmp_path / "weights.pt"), "--out", str(tmp_path / "p")],
                 ["evaluate", "--weights", str(tmp_path / "weights.pt"), "--dataset", "synthetic"],
                 ["evaluate", str(tmp_path / "weights.pt")]):
        error = one_error(argv, capsys, "is not a readable torch file")
        assert "allow" not in error


def test_unwritable_outputs_fail_before_any_work(trained, read_only, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(engine, "_train_epoch", no_work)
    monkeypatch.setattr(cli, "evaluate", no_work)
    one_error(["train", *QUICK, "--out", str(read_only)], capsys, f"--out {str(read_only)!r} cannot be written")
    one_error(["train", "--resume", str(trained / "checkpoint.pt"), "--out", str(read_only)], capsys,
              "cannot be written")
    one_error(["sweep", "--preset", "synthetic-quick", "--se-weights", "0", "--out", str(read_only / "s.json")],
              capsys, "cannot be written")
    one_error(["evaluate", str(trained / "checkpoint.pt"), "--out", str(read_only / "m.json")], capsys,
              "cannot be written")
    one_error(["evaluate", str(trained / "checkpoint.pt"), "--predictions", str(read_only / "p")], capsys,
              "cannot be written")
    one_error(["predict", "x.png", "--weights", str(trained / "checkpoint.pt"), "--out", str(read_only / "p")],
              capsys, "cannot be written")


def test_a_full_disk_names_the_folder_and_leaves_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    saved, save = [], torch.save

    def full_disk_at_the_second(value, file, *args, **kwargs):
        saved.append(1)
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(value, file, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", full_disk_at_the_second)
    out = tmp_path / "run"
    error = one_error(["train", *QUICK, "--out", str(out)], capsys, "cannot write checkpoint.pt in",
                      "No space left on device", "is intact", f"--resume {out / 'checkpoint.pt'}")
    assert str(out) in error
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 4  # epoch 1 of 2, as it was
    assert [path.name for path in out.iterdir() if path.name.endswith(".tmp")] == []


def interruptible() -> None:
    """In the child before it starts Python: SIGINT back to its default action. A shell that runs the tests in the
    background (``make test &`` from a script) starts them with SIGINT ignored, which children inherit and Python
    then keeps: no KeyboardInterrupt, as the shell intends for background jobs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_is_one_line_naming_the_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "encnet", "train", *QUICK, "--epochs", "200", "--out", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists()
        process.send_signal(signal.SIGINT)
        error = process.communicate(timeout=60)[1]
    finally:
        process.kill()
    assert process.returncode == 130, error
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith("encnet: interrupted; the last checkpoint") and f"--resume {out / 'checkpoint.pt'}" in error
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] > 0


def _forged(trained: Path, tmp_path: Path, change) -> Path:
    """A copy of the trained checkpoint with ``change`` applied and its checksum written anew."""
    checkpoint = load_checkpoint(trained / "checkpoint.pt")
    checkpoint = {key: value for key, value in checkpoint.items() if key not in ("format", "checksum")}
    change(checkpoint)
    path = tmp_path / "forged" / "checkpoint.pt"
    save_checkpoint(path, checkpoint)
    return path


def test_predict_keeps_the_rule_train_and_evaluate_keep(trained, tmp_path, photo, capsys):
    path = _forged(trained, tmp_path, lambda checkpoint: checkpoint.pop("optimizer"))
    for argv in (["predict", str(photo), "--weights", str(path), "--out", str(tmp_path / "p")],
                 ["evaluate", str(path)], ["train", "--resume", str(path)]):
        one_error(argv, capsys, "is not an encnet checkpoint", "missing ['optimizer']")


def test_a_checkpoint_past_the_end_of_its_run_is_refused(trained, tmp_path, capsys):
    path = _forged(trained, tmp_path, lambda checkpoint: checkpoint.update(iteration=100))
    one_error(["train", "--resume", str(path)], capsys, "at iteration 100, past the end of this run's 8 iterations")
