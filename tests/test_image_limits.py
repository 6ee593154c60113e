"""Images are checked from their header before decoding: size limit, 8-bit modes, files that are no image."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_real import make_ade
from test_failures import one_error

from encnet.data import ADE20K
from encnet.data.check import check_files
from encnet.data.folder import MAX_PIXELS, read_image
from encnet.errors import UserError
from encnet.inference import predict, to_model_input
from encnet.models import build_model


def forged_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with (almost) no pixel data: a few hundred bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    """No limit from the environment; ``main(["--max-pixels", ...])`` sets one, undone after the test."""
    monkeypatch.delenv("ENCNET_MAX_PIXELS", raising=False)


@pytest.mark.parametrize("side", [12000, 100000], ids=["12000-square", "decompression-bomb"])
def test_predict_refuses_a_huge_image_from_its_header_before_loading_weights(side, tmp_path, capsys):
    image = forged_png(tmp_path / "huge.png", side, side)
    assert image.stat().st_size < 1000
    one_error(["predict", str(image), "--weights", str(tmp_path / "never-read.pt"), "--out", str(tmp_path / "p")],
              capsys, f"{side} x {side} = {side * side:,} pixels", f"limit of {MAX_PIXELS:,}", "--max-pixels")


def test_the_flag_raises_the_limit_and_the_environment_carries_it(tmp_path, capsys, monkeypatch):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(path)
    one_error(["predict", str(path), "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "p"),
               "--max-pixels", "7999"], capsys, "100 x 80 = 8,000 pixels, more than the limit of 7,999")
    one_error(["predict", str(path), "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "p"),
               "--max-pixels", "8000"], capsys, "missing.pt")  # the image passes: the weights are what is wrong
    monkeypatch.setenv("ENCNET_MAX_PIXELS", "7999")
    with pytest.raises(UserError, match="more than the limit of 7,999"):
        read_image(path)
    monkeypatch.setenv("ENCNET_MAX_PIXELS", "8000")
    assert read_image(path).shape == (3, 80, 100)


def test_a_dataset_image_over_the_limit_is_one_error_and_check_data_reports_it(tmp_path, monkeypatch):
    make_ade(tmp_path)  # 8 x 8 images
    monkeypatch.setenv("ENCNET_MAX_PIXELS", "63")
    dataset = ADE20K(tmp_path, "val")
    with pytest.raises(UserError, match=r"ADE_val_00000001.jpg is 8 x 8 = 64 pixels, more than the limit of 63"):
        dataset[0]
    with pytest.raises(UserError, match="2 of the 2 image.mask pairs .* more than the limit of 63"):
        check_files(dataset)


@pytest.mark.parametrize("mode, array", [
    ("I;16", np.full((8, 8), 40000, np.uint16)),
    ("F", np.full((8, 8), 0.5, np.float32)),
], ids=["16-bit", "float"])
def test_images_of_more_than_8_bits_are_refused_not_clipped(mode, array, tmp_path, capsys):
    path = tmp_path / ("deep.png" if mode == "I;16" else "deep.tif")
    Image.fromarray(array).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode
    one_error(["predict", str(path), "--weights", str(tmp_path / "never-read.pt"), "--out", str(tmp_path / "p")],
              capsys, f"is mode {mode}, but encnet reads 8-bit images", "convert it to 8-bit RGB")
    with Image.open(path) as opened, pytest.raises(UserError, match=f"mode {mode}"):
        to_model_input(opened)


def test_a_file_that_is_no_image_says_so_without_a_dataset_hint_first(tmp_path, capsys):
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    error = one_error(["predict", str(path), "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "p")],
                      capsys, "it is not an image file PIL can read", "pass a PNG or JPEG")
    assert error.index("PNG or JPEG") < error.index("dataset")


def test_a_pil_image_or_tensor_over_the_limit_is_refused(monkeypatch):
    monkeypatch.setenv("ENCNET_MAX_PIXELS", "99")
    with pytest.raises(UserError, match="10 x 10 = 100 pixels"):
        to_model_input(Image.new("RGB", (10, 10)))
    with pytest.raises(UserError, match="10 x 10 = 100 pixels"):
        to_model_input(torch.zeros(3, 10, 10, dtype=torch.uint8))


def test_predict_refuses_non_finite_input_instead_of_labelling_everything_0():
    torch.manual_seed(0)
    model = build_model("fcn", "small", num_classes=4, weights_backbone=None, aux=False).eval()
    images = torch.randn(1, 3, 32, 32)
    assert predict(model, images).shape == (1, 4, 32, 32)
    images[0, 1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite values"):
        predict(model, images)
