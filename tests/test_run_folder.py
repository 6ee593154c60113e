"""Run folders: one run per folder, nothing of an earlier run touched, consistent after a kill, divergence caught."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encnet import engine
from encnet.__main__ import _parser, _train_config, main
from encnet.checkpoint import load_checkpoint, non_finite
from encnet.config import TrainConfig, preset
from encnet.errors import UserError
from encnet.runs import RunFolder
from encnet.sweep import sweep
from encnet.teaching.processes import spawn


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` but its lock, with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.name != ".lock"}


def _log_epochs(folder: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_config):
    """A tiny_config run stopped in its second epoch: checkpoint at iteration 2, one log record."""
    out = tmp_path_factory.mktemp("interrupted")
    train_epoch = engine._train_epoch

    def crash_in_epoch_2(run, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(run, epoch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "_train_epoch", crash_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            engine.train(dataclasses.replace(tiny_config, out=str(out)), progress=False)
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 2 and _log_epochs(out) == [1]
    return out


# Holds the folder's lock until told to go on, then is killed (SIGKILL) in the middle of writing a checkpoint.
HOLDER = textwrap.dedent("""
    import os, signal, sys, torch
    from encnet.runs import RunFolder
    folder = RunFolder.open(sys.argv[1], resume=None)
    print("locked", flush=True)
    sys.stdin.readline()
    def killed_mid_write(value, file):
        file.write(b"the first bytes of a checkpoint")
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = killed_mid_write
    folder.save_checkpoint({"model": {"weight": torch.zeros(3)}})
""")


def test_a_held_folder_refuses_a_second_run_and_a_killed_run_leaves_nothing_behind(tmp_path, tiny_config):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        named = rf"in use by another run \(pid {holder.pid} on host .+, started 20"
        with pytest.raises(UserError, match=named):
            engine.train(dataclasses.replace(tiny_config, out=str(tmp_path)), progress=False)
        with pytest.raises(UserError, match=named):
            sweep(tiny_config, alphas=[0.0], seeds=[0], out=tmp_path / "sweep.json", progress=False)
        holder.stdin.write("go on\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == -signal.SIGKILL
    finally:
        holder.kill()
    stray = [path.name for path in tmp_path.glob(".checkpoint.pt.*.tmp")]
    assert len(stray) == 1 and not (tmp_path / "checkpoint.pt").exists()
    # The OS released the dead run's lock: the next run starts, and removes the partial file under the lock.
    with RunFolder.open(tmp_path, resume=None) as folder:
        assert not list(tmp_path.glob(".*.tmp"))
        with pytest.raises(UserError, match="in use by another run"):  # an open folder is locked in-process too
            RunFolder.open(tmp_path, resume=None)
    assert folder._lock is None


def test_a_new_run_never_touches_an_earlier_runs_files(interrupted, tmp_path, tiny_config):
    shutil.copytree(interrupted, tmp_path / "run")
    folder, before = tmp_path / "run", _files(interrupted)
    with pytest.raises(UserError, match=r"holds checkpoint\.pt, log\.jsonl of an earlier run.*continue that run "
                                         r"with --resume .*checkpoint\.pt, or pass another --out"):
        engine.train(dataclasses.replace(tiny_config, out=str(folder)), progress=False)
    (folder / "checkpoint.pt").unlink()  # deleted to save space: the log stays the run's
    with pytest.raises(UserError, match=r"holds log\.jsonl of an earlier run.*checkpoint\.pt is gone"):
        engine.train(dataclasses.replace(tiny_config, out=str(folder)), progress=False)
    assert _files(folder) == {"log.jsonl": before["log.jsonl"]}
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="is a file, but a run writes a folder there"):
        engine.train(dataclasses.replace(tiny_config, out=str(tmp_path / "file")), progress=False)


def test_a_resume_writes_to_its_own_folder_or_a_new_one_never_another_runs(interrupted, tmp_path):
    original = _files(interrupted)
    copy = tmp_path / "copy"
    shutil.copytree(interrupted, copy)
    # The command line resumes a copied checkpoint into the copy's folder, not the stored `out`.
    config = _train_config(_parser().parse_args(["train", "--resume", str(copy / "checkpoint.pt")]))
    assert config.out == str(copy) and load_checkpoint(copy / "checkpoint.pt")["config"]["out"] == str(interrupted)
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match=r"holds another run's files \(metrics\.json\); a resume writes to the "
                                         r"folder of its checkpoint"):
        engine.train(dataclasses.replace(config, out=str(other)), progress=False)
    assert _files(other) == {"metrics.json": b"{}"}
    branch = engine.train(dataclasses.replace(config, out=str(tmp_path / "branch")), progress=False)
    resumed = engine.train(config, progress=False)
    assert resumed["losses"] == branch["losses"] and len(resumed["losses"]) == 4
    for folder in (copy, tmp_path / "branch"):
        assert load_checkpoint(folder / "checkpoint.pt")["iteration"] == 4 and _log_epochs(folder) == [1, 2]
    assert _files(interrupted) == original  # the run that was copied is untouched


@pytest.mark.parametrize("killed", ["after the checkpoint, before the log", "after the log, before the checkpoint"])
def test_after_a_resume_the_log_holds_one_record_per_evaluated_epoch(interrupted, tmp_path, killed, tiny_config):
    shutil.copytree(interrupted, tmp_path / "run")
    folder, log = tmp_path / "run", tmp_path / "run" / "log.jsonl"
    if killed.startswith("after the checkpoint"):
        log.write_text("")
    else:  # epoch 2's record is logged, its checkpoint never written
        log.write_text(log.read_text() + json.dumps({"epoch": 2, "iteration": 4}) + "\n")
    resumed = dataclasses.replace(tiny_config, out=str(folder), resume=str(folder / "checkpoint.pt"))
    engine.train(resumed, progress=False)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    history = load_checkpoint(folder / "checkpoint.pt")["history"]
    assert [record["iteration"] for record in records] == [record["iteration"] for record in history] == [2, 4]


def test_a_diverging_run_exits_non_zero_naming_the_iteration_and_writes_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "lr20"
    assert main(["train", "--preset", "synthetic-quick", "--lr", "20", "--out", str(out), "--no-progress"]) != 0
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert "diverged at iteration 2 of 8 (epoch 1): the loss is" in error and "above max_loss=100" in error
    assert "there is no good checkpoint yet (no epoch has finished)" in error
    assert sorted(path.name for path in out.iterdir()) == [".lock"]


def overflow_statistics(monkeypatch, at_pass: int, value: float = float("inf")) -> None:
    """From now on the model's first batch norm gets running variance ``value`` at its ``at_pass``-th training pass."""
    build = TrainConfig.build_model

    def overflowing_statistics(config, num_classes, **options):
        model = build(config, num_classes, **options)
        norm, calls = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)), []

        def hook(module, inputs, output):
            calls.append(module.training)
            if sum(calls) == at_pass:  # training passes only
                module.running_var = torch.full_like(module.running_var, value)

        norm.register_forward_hook(hook)
        return model

    monkeypatch.setattr(TrainConfig, "build_model", overflowing_statistics)


def test_a_non_finite_buffer_stops_training_and_the_last_checkpoint_stays_finite(tmp_path, monkeypatch, tiny_config):
    overflow_statistics(monkeypatch, at_pass=3)  # iteration 3 of 4, epoch 2
    with pytest.raises(engine.Diverged, match=r"diverged at iteration 3 of 4 \(epoch 2\): 1 parameter\(s\) or "
                                              r"buffer\(s\) hold NaN or infinite values \(backbone\..*running_var\)"
                                              r".*the last good checkpoint, .*checkpoint\.pt \(iteration 2\), is left"):
        engine.train(dataclasses.replace(tiny_config, out=str(tmp_path)), progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == 2 and non_finite(checkpoint) == []


def test_a_bad_validation_file_is_reported_before_the_first_iteration(tmp_path, monkeypatch):
    root = tmp_path / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "images" / split / f"{prefix}_{index:08d}.jpg")
            mask = root / "annotations" / split / f"{prefix}_{index:08d}.png"
            Image.fromarray(np.ones((40, 50), np.uint8)).save(mask)
    bad = root / "annotations" / "validation" / "ADE_val_00000001.png"
    Image.fromarray(np.ones((40, 50, 3), np.uint8)).save(bad)  # an RGB mask
    monkeypatch.setattr(engine, "_train_epoch", lambda run, epoch: pytest.fail("training started"))
    config = dataclasses.replace(preset("ade20k-encnet-r50"), backbone="small", weights_backbone=None,
                                 data_root=str(tmp_path), crop_size=32, base_size=40, batch_size=2, epochs=1)
    with pytest.raises(UserError, match="ADE_val_00000001.png"):
        engine.train(config, progress=False)


def _train_on_rank(rank: int, world_size: int, out: str, config: TrainConfig) -> str:
    """One rank of a 2-rank run of ``config`` into ``out``: the error it stopped with."""
    try:
        engine.train(dataclasses.replace(config, out=out, device="cpu"), progress=False)
    except UserError as error:
        return str(error)
    return "trained"


def test_under_two_ranks_rank_zeros_refusal_stops_every_rank(tmp_path, tiny_config):
    (tmp_path / "metrics.json").write_text("{}")  # only rank 0 looks at the folder; rank 1 must not wait for it
    errors = spawn(_train_on_rank, 2, str(tmp_path), tiny_config, timeout=60)
    assert errors[0] == errors[1] and "holds metrics.json of an earlier run" in errors[0]
