"""Checkpoint integrity: a checksum of the contents checked on load, no non-finite tensor ever written."""

import struct
import zipfile

import pytest
import torch

from encnet.checkpoint import FORMAT, UNCHECKED_FORMAT, CheckpointError, checksum, load_checkpoint, save_checkpoint


def _checkpoint() -> dict:
    """The entries a checkpoint must have, with a few tensors and plain values."""
    return {"config": {"model": "encnet", "lr": 0.01}, "num_classes": 3, "classes": ["a", "b", "c"],
            "iteration": 7, "model": {"weight": torch.linspace(-1, 1, 1000), "steps": torch.tensor(7)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(4)}}, "param_groups": [{"lr": 0.1}]},
            "scheduler": {"last_epoch": 7}, "rng": [{"torch": torch.get_rng_state()}]}


def _flip_a_byte_of(path, record_suffix: str) -> None:
    """Invert one byte in the middle of the stored (uncompressed) zip record whose name ends with ``record_suffix``."""
    with zipfile.ZipFile(path) as archive:
        info = next(info for info in archive.infolist() if info.filename.endswith(record_suffix))
    with open(path, "r+b") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        offset = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0xFF]))


def test_a_flipped_byte_in_a_weight_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _checkpoint())
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["checksum"] == checksum(loaded)
    with zipfile.ZipFile(path) as archive:  # the record of the 1000 float32 weights
        weights = next(info.filename for info in archive.infolist() if info.file_size == 4000)
    _flip_a_byte_of(path, weights)
    altered = torch.load(path, weights_only=True)  # torch alone loads it without a word
    assert not torch.equal(altered["model"]["weight"], _checkpoint()["model"]["weight"])
    with pytest.raises(CheckpointError, match=rf"{path}' is corrupted: its contents differ from the checksum"):
        load_checkpoint(path)


def test_the_checksum_covers_plain_values_dtypes_and_shapes():
    reference = checksum(_checkpoint())
    assert checksum(_checkpoint()) == reference
    changes = [
        lambda c: c["config"].update(lr=0.02),
        lambda c: c["model"].update(weight=c["model"]["weight"].double()),
        lambda c: c["model"].update(weight=c["model"]["weight"].reshape(10, 100)),
        lambda c: c["classes"].append("d"),
    ]
    for change in changes:
        changed = _checkpoint()
        change(changed)
        assert checksum(changed) != reference


def test_a_non_finite_tensor_is_never_written(tmp_path):
    checkpoint = _checkpoint()
    checkpoint["optimizer"]["state"][0]["momentum_buffer"][2] = float("inf")
    with pytest.raises(ValueError, match=r"refused to write .*1 tensor\(s\) hold NaN or infinite values "
                                         r"\(/'optimizer'/'state'/0/'momentum_buffer'\)"):
        save_checkpoint(tmp_path / "checkpoint.pt", checkpoint)
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_from_before_checksums_still_load(tmp_path):
    torch.save({**_checkpoint(), "format": UNCHECKED_FORMAT}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["iteration"] == 7
