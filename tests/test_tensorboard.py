"""`encnet train --tensorboard` (encnet.tensorboard) and `encnet plot` (encnet.plot)."""

from __future__ import annotations

import dataclasses
import io
import json
import sys

import numpy as np
import pytest
from PIL import Image
from test_errors import one_error

from encnet import engine
from encnet.__main__ import main
from encnet.checkpoint import load_checkpoint
from encnet.data import build_dataset
from encnet.errors import UserError
from encnet.viz import colorize, to_rgb

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

# synthetic-quick, smaller: 2 epochs of 8 training images, 4 a batch (2 iterations an epoch), 4 validation images
TINY = ["--preset", "synthetic-quick", "--no-progress", "--batch-size", "4",
        "--dataset-options", '{"image_size": 128, "train_samples": 8, "val_samples": 4}']
ITERATIONS = 4
SCALARS = {"loss/total", "loss/out", "loss/aux", "loss/se", "train/lr", "train/images_per_s", "val/pixAcc",
           "val/mIoU", "val/mIoU_all"}


class Interrupted(Exception):
    """Stands for a crash (a killed job) in the middle of training."""


def events(folder) -> EventAccumulator:
    """Every scalar and image of the TensorBoard folder ``folder`` (none dropped by sampling)."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def boarded(tmp_path_factory):
    """A run with --tensorboard: its folder."""
    out = tmp_path_factory.mktemp("runs") / "boarded"
    assert main(["train", *TINY, "--tensorboard", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A run without --tensorboard, trained while the tensorboard package cannot be imported: its folder."""
    out = tmp_path_factory.mktemp("runs") / "plain"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
        patch.setitem(sys.modules, "torch.utils.tensorboard", None)
        assert main(["train", *TINY, "--lr", "0.02", "--out", str(out)]) == 0
    return out


def test_every_iteration_and_evaluation_is_logged_with_the_run_s_values(boarded):
    board = events(boarded / "tensorboard")
    assert SCALARS <= set(board.Tags()["scalars"])
    records, losses = log(boarded), load_checkpoint(boarded / "checkpoint.pt")["losses"].tolist()
    assert len(records) == 2 and len(losses) == ITERATIONS
    total = board.Scalars("loss/total")
    assert [event.step for event in total] == list(range(1, ITERATIONS + 1))
    assert [event.value for event in total] == pytest.approx(losses, rel=1e-6)  # stored as float32
    for name in ("out", "aux", "se"):  # each epoch's mean of the logged parts is log.jsonl's
        parts = [event.value for event in board.Scalars(f"loss/{name}")]
        means = [np.mean(parts[:2]), np.mean(parts[2:])]
        assert means == pytest.approx([record["loss_parts"][name] for record in records], rel=1e-5)
    lr = {event.step: event.value for event in board.Scalars("train/lr")}
    assert sorted(lr) == list(range(1, ITERATIONS + 1)) and lr[1] > lr[3] > lr[4] >= 0  # the poly schedule
    for record in records:
        assert lr[record["iteration"]] == pytest.approx(record["lr"], rel=1e-6)
    for tag, key in (("val/pixAcc", "pixAcc"), ("val/mIoU", "mIoU"), ("val/mIoU_all", "mIoU_all"),
                     ("train/images_per_s", "images_per_s")):
        logged = board.Scalars(tag)
        assert [event.step for event in logged] == [record["iteration"] for record in records], tag
        assert [event.value for event in logged] == pytest.approx([record[key] for record in records], rel=1e-6)
    final = json.loads((boarded / "metrics.json").read_text())
    assert board.Scalars("val/mIoU")[-1].value == pytest.approx(final["mIoU"], rel=1e-6)


def test_each_evaluation_shows_image_ground_truth_and_prediction(boarded):
    pictures = events(boarded / "tensorboard").Images("val/predictions")
    assert [picture.step for picture in pictures] == [record["iteration"] for record in log(boarded)]
    grid = np.asarray(Image.open(io.BytesIO(pictures[-1].encoded_image_string)).convert("RGB"))
    val = build_dataset("synthetic", "val", root=None, crop_size=128, base_size=128, image_size=128, train_samples=8,
                        val_samples=4)
    size, width = 128, 64
    assert grid.shape[0] * grid.shape[1] == 4 * size * 3 * width  # 4 pictures of image | truth | prediction
    panels = [grid[row:row + size, col:col + 3 * width] for row in range(0, grid.shape[0], size)
              for col in range(0, grid.shape[1], 3 * width)]
    for (image, mask), panel in zip([val[index] for index in range(4)], panels):
        assert np.array_equal(panel[:, :width], (to_rgb(image) * 255).round().astype(np.uint8))
        assert np.array_equal(panel[:, width:2 * width], colorize(mask, val.palette))
        assert {tuple(colour) for colour in panel[:, 2 * width:].reshape(-1, 3)} <= set(map(tuple, val.palette))


def test_a_resume_continues_the_event_folder_without_repeating_steps(tmp_path, tiny_config, monkeypatch, capsys):
    step = engine._train_step

    def crash_after_three(run, images, masks):  # killed in epoch 2, after its first (logged) iteration
        if run.iteration == 3:
            raise Interrupted
        return step(run, images, masks)

    monkeypatch.setattr(engine, "_train_step", crash_after_three)
    with pytest.raises(Interrupted):
        engine.train(dataclasses.replace(tiny_config, out=str(tmp_path), tensorboard=True), progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2
    assert [event.step for event in events(tmp_path / "tensorboard").Scalars("loss/total")] == [1, 2, 3]
    assert main(["train", "--resume", str(tmp_path / "checkpoint.pt"), "--no-progress"]) == 0  # its settings
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    board = events(tmp_path / "tensorboard")
    total = board.Scalars("loss/total")
    assert [event.step for event in total] == [1, 2, 3, 4]  # the crashed process's 3 is purged, not doubled
    assert [event.value for event in total] == pytest.approx(
        load_checkpoint(tmp_path / "checkpoint.pt")["losses"].tolist(), rel=1e-6)
    assert [event.step for event in board.Scalars("val/mIoU")] == [2, 4]


def test_without_the_package_tensorboard_is_one_line_and_a_plain_run_never_imports_it(plain, tmp_path, capsys,
                                                                                     monkeypatch):
    assert not (plain / "tensorboard").exists() and len(log(plain)) == 2  # trained with the import blocked
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    one_error(["train", *TINY, "--tensorboard", "--out", str(tmp_path / "run")], capsys,
              "pip install encnet[tensorboard]")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_tensorboard_without_a_run_folder_is_refused_before_any_work(tiny_config):
    with pytest.raises(UserError, match="out is None"):
        engine.train(dataclasses.replace(tiny_config, tensorboard=True), progress=False)


def test_plot_draws_one_line_per_run(boarded, plain, tmp_path, capsys):
    out = tmp_path / "figures" / "curves.png"
    assert main(["plot", str(boarded), str(plain), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(colour) for colour in pixels}
    assert len(colours) > 50  # text, axes, anti-aliased lines: not a blank page
    assert {(31, 119, 180), (255, 127, 14)} <= colours  # matplotlib's first two line colours: both runs drawn


@pytest.mark.parametrize("content, expected", [
    (None, "has no log.jsonl"),
    ("", "holds no record yet"),
    ('{"epoch": 1, "loss": 2.0, "mIoU": 0.1}\nnot json\n', "line 2 is not JSON"),
    ('{"epoch": 1, "mIoU": 0.1}\n', "line 1 is not a record of `encnet train`"),
])
def test_plot_of_a_folder_without_a_valid_log_is_one_line(content, expected, boarded, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    if content is not None:
        (folder / "log.jsonl").write_text(content)
    out = tmp_path / "curves.png"
    error = one_error(["plot", str(boarded), str(folder), "--out", str(out)], capsys, expected)
    assert str(folder) in error and not out.exists()


def test_plot_refuses_an_output_that_is_no_png(boarded, tmp_path, capsys):
    one_error(["plot", str(boarded), "--out", str(tmp_path / "curves.pdf")], capsys, "ending in .png")
    one_error(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "curves.png")], capsys,
              "is not a folder")


def test_pictures_of_images_of_different_sizes_are_padded_to_the_largest():
    """Real validation images differ in size: each is predicted alone and the rows are padded with black."""
    from types import SimpleNamespace

    import torch

    from encnet.models import build_model
    from encnet.tensorboard import TensorBoardLog

    class Sizes(list):
        palette = build_dataset("synthetic", "val", image_size=128, val_samples=1).palette

    generator = torch.Generator().manual_seed(0)
    val_set = Sizes([(torch.rand(3, h, w, generator=generator), torch.randint(0, 3, (h, w), generator=generator))
                     for h, w in ((40, 56), (64, 48))])
    run = SimpleNamespace(val_set=val_set, device=torch.device("cpu"), config=SimpleNamespace(crop_size=64),
                          model=build_model("fcn", "small", num_classes=17))
    pictures = TensorBoardLog()._pictures(run)
    assert pictures.shape == (2, 64, 3 * 56, 3) and pictures.dtype == np.uint8
    assert (pictures[0, 40:] == 0).all() and (pictures[1, :, 3 * 48:] == 0).all()  # the padding
    assert (pictures[0, :40, :56] == (to_rgb(val_set[0][0]) * 255).round().astype(np.uint8)).all()
