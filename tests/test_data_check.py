"""encnet.data.check: the fast file check before training and the full `encnet check-data`."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_real import make_ade, make_pcontext, make_voc, write_image, write_mask

from encnet.__main__ import main
from encnet.data import ADE20K, PascalContext, PascalVOC, build_dataset
from encnet.data.check import check_dataset, check_files
from encnet.errors import UserError

VAL = Path("annotations/validation")


def truncate_jpeg(path: Path) -> None:
    """Rewrite ``path`` as a 64x64 JPEG cut at 70 %: its header reads, its pixels do not all decode."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: int(0.7 * buffer.tell())])


def test_sound_trees_pass(tmp_path):
    make_ade(tmp_path / "ade")
    make_pcontext(tmp_path / "pcontext")
    make_voc(tmp_path / "voc")
    for dataset in (ADE20K(tmp_path / "ade", "val"), PascalContext(tmp_path / "pcontext", "train"),
                    PascalVOC(tmp_path / "voc", "train"), build_dataset("synthetic", "val", val_samples=2)):
        check_files(dataset, same_size=True)
        assert check_dataset(dataset, progress=False) == []


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda base: write_mask(base / VAL / "ADE_val_00000002.png", np.zeros((8, 9))),
         r"ADE_val_00000002.png is 9x8 but its image .*ADE_val_00000002.jpg is 8x8"),
        (lambda base: Image.new("RGB", (8, 8)).save(base / VAL / "ADE_val_00000002.png"),
         r"ADE_val_00000002.png is mode RGB \(a colour image\), but a mask must be a single-channel 8-bit PNG"),
        (lambda base: Image.new("I;16", (8, 8)).save(base / VAL / "ADE_val_00000002.png"),
         r"ADE_val_00000002.png is mode I;16 \(16-bit\)"),
        (lambda base: (base / "images/validation/ADE_val_00000001.jpg").write_bytes(b"not a jpeg"),
         r"cannot read the image .*ADE_val_00000001.jpg"),
        (lambda base: truncate_jpeg(base / "images/validation/ADE_val_00000001.jpg"),
         r"ADE_val_00000001.jpg is truncated"),
    ],
    ids=["size", "rgb-mask", "16-bit-mask", "not-an-image", "truncated-jpeg"],
)
def test_bad_files_are_found_from_their_headers(tmp_path, damage, message):
    damage(make_ade(tmp_path))
    with pytest.raises(UserError, match=r"1 of the 2 image/mask pairs of ADE20K fail the file check; the first: .*"
                                        + message) as error:
        check_files(ADE20K(tmp_path, "val"))
    assert "encnet check-data" in str(error.value) and "\n" not in str(error.value)


def test_a_voc_list_naming_a_missing_file(tmp_path):
    voc = make_voc(tmp_path)
    (voc / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(UserError, match="the mask .*2007_000002.png does not exist"):
        check_files(PascalVOC(tmp_path, "train"))
    with pytest.raises(UserError, match="2007_000002.png does not exist; extract"):  # not "corrupt"
        PascalVOC(tmp_path, "train")[1]


def test_images_of_several_sizes_cannot_be_batched(tmp_path):
    base = make_ade(tmp_path)
    write_image(base / "images/validation/ADE_val_00000002.jpg", seed=1, size=(8, 9))
    write_mask(base / VAL / "ADE_val_00000002.png", np.zeros((8, 9)))
    check_files(ADE20K(tmp_path, "val"))
    with pytest.raises(UserError, match="ADE_val_00000002.jpg is 9x8; evaluate with a batch size of 1"):
        check_files(ADE20K(tmp_path, "val"), same_size=True)


def test_the_full_check_finds_labels_out_of_range_and_lists_every_problem(tmp_path, capsys):
    base = make_ade(tmp_path)
    write_mask(base / VAL / "ADE_val_00000001.png", np.full((8, 8), 151))
    truncate_jpeg(base / "images/training/ADE_train_00000002.jpg")
    write_mask(base / "annotations/training/ADE_train_00000002.png", np.zeros((64, 64)))
    check_files(ADE20K(tmp_path, "val"))  # labels are not part of the fast check
    problems = check_dataset(ADE20K(tmp_path, "val"), progress=False)
    assert len(problems) == 1 and "ADE_val_00000001.png holds the value 151" in problems[0]

    assert main(["check-data", "--dataset", "ade20k", "--data-root", str(tmp_path), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert "ade20k train: 3 image/mask pairs, 1 with problems" in out and "ADE_train_00000002.jpg" in out
    assert "ade20k val: 2 image/mask pairs, 1 with problems" in out and "holds the value 151" in out
    assert err == "encnet: error: 2 of the 5 image/mask pairs of ade20k fail the check (listed above); " \
                  "fix them, or extract or convert them again\n"
    make_ade(tmp_path / "clean")
    assert main(["check-data", "--dataset", "ade20k", "--data-root", str(tmp_path / "clean"), "--no-progress"]) == 0
    assert "0 with problems" in capsys.readouterr().out


def test_a_bad_validation_file_is_reported_before_training(tmp_path):
    base = make_ade(tmp_path / "data")
    Image.new("RGB", (8, 8)).save(base / VAL / "ADE_val_00000002.png")
    done = subprocess.run(
        [sys.executable, "-m", "encnet", "train", "--preset", "ade20k-encnet-r50", "--backbone", "small",
         "--weights-backbone", "none", "--crop-size", "8", "--base-size", "8", "--batch-size", "2",
         "--epochs", "1", "--workers", "0", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("encnet: error: 1 of the 2 image/mask pairs of ADE20K fail the file check")
    assert "ADE_val_00000002.png is mode RGB" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
