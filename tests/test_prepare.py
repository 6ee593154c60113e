"""encnet.data.prepare offline: small archives and annotation files built here, never downloaded."""

import hashlib
import io
import json
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encnet.data import ADE20K, PascalContext, prepare
from encnet.data.pcontext import CATEGORY_IDS
from encnet.data.prepare import Archive, convert_pcontext, decode_rle, fetch


def image_bytes(array: np.ndarray, mode: str) -> bytes:
    """A PNG for a mask (mode L), a JPEG for an RGB image."""
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG" if mode == "L" else "JPEG")
    return buffer.getvalue()


def ade_zip(path: Path) -> str:
    """A two-image ADE20K zip (one per split); returns its SHA-1."""
    with zipfile.ZipFile(path, "w") as archive:
        for folder, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
            image = np.full((8, 8, 3), 100, dtype=np.uint8)
            archive.writestr(f"ADEChallengeData2016/images/{folder}/{name}.jpg", image_bytes(image, "RGB"))
            mask = np.full((8, 8), 3, dtype=np.uint8)
            archive.writestr(f"ADEChallengeData2016/annotations/{folder}/{name}.png", image_bytes(mask, "L"))
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_fetch_verifies_and_extracts_a_local_archive_once(tmp_path, capsys):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    sha1 = ade_zip(downloads / "ADEChallengeData2016.zip")
    archive = Archive("http://example.invalid/ADEChallengeData2016.zip", sha1, "ADEChallengeData2016")
    fetch(archive, tmp_path)
    train = ADE20K(tmp_path, "train")
    assert len(train) == 1 and torch.equal(train[0][1], torch.full((8, 8), 2))
    fetch(archive, tmp_path)
    assert "not extracting" in capsys.readouterr().out


def test_a_wrong_checksum_is_an_error_that_says_what_to_do(tmp_path):
    (tmp_path / "downloads").mkdir()
    ade_zip(tmp_path / "downloads" / "ADEChallengeData2016.zip")
    archive = Archive("http://example.invalid/ADEChallengeData2016.zip", "0" * 40, "ADEChallengeData2016")
    with pytest.raises(ValueError, match="checksum mismatch .* delete it"):
        fetch(archive, tmp_path)
    assert not (tmp_path / "ADEChallengeData2016").exists()


def test_without_internet_the_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(prepare.urllib.request, "urlopen", offline)
    archive = Archive("http://example.invalid/VOCtrainval_11-May-2012.tar", "0" * 40, "VOCdevkit/VOC2012")
    expected = tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar"
    with pytest.raises(RuntimeError, match=f"copy it to {expected}"):
        fetch(archive, tmp_path)
    assert list((tmp_path / "downloads").iterdir()) == []  # no partial file left behind


def test_extract_refuses_members_outside_the_destination(tmp_path):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match="outside"):
        prepare.extract(path, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


# ---------------------------------------------------------------- PASCAL-Context conversion


def encode_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE of a bool mask (the format of trainval_merged.json), written for the test."""
    flat = mask.T.reshape(-1)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [not flat[-1]]]).astype(np.int8)))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    if counts and counts[-1] == 0:
        counts.pop()
    chars = []
    for i, x in enumerate(counts):
        x = x - counts[i - 2] if i > 2 else x
        more = True
        while more:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return {"size": list(mask.shape), "counts": "".join(chars)}


def test_decode_rle_inverts_the_coco_encoding():
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(1, 30, size=2)
        mask = rng.random((height, width)) < rng.random()
        assert np.array_equal(decode_rle(encode_rle(mask)), mask)
    mask = np.zeros((300, 200), dtype=bool)
    mask[100:250, 20:180] = True  # long runs: multi-character counts and negative differences
    mask[10:12, 5:7] = True
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": [1, 2, 1]}), np.array([[0, 1], [1, 0]], bool))
    with pytest.raises(ValueError, match="height x width"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})


def pcontext_annotations(path: Path) -> None:
    """Two images: a train one with overlapping segments and a non-benchmark category, a val one."""
    sky, wall, person, other = 360, 440, 284, 1  # 1 ("accordion") is not among the 59
    top = np.zeros((6, 8), bool)
    top[:3] = True
    left = np.zeros((6, 8), bool)
    left[:, :4] = True
    corner = np.zeros((6, 8), bool)
    corner[5, 7] = True
    data = {
        "images": [
            {"image_id": 1, "file_name": "2008_000001.jpg", "height": 6, "width": 8, "phase": "train"},
            {"image_id": 2, "file_name": "2008_000002.jpg", "height": 6, "width": 8, "phase": "val"},
            {"image_id": 3, "file_name": "2008_000003.jpg", "height": 6, "width": 8, "phase": "test"},
        ],
        "categories": [{"category_id": c, "name": str(c)} for c in (other, person, sky, wall)],
        "annos_segmentation": [
            {"image_id": 1, "category_id": sky, "segmentation": encode_rle(top)},
            {"image_id": 1, "category_id": person, "segmentation": encode_rle(left)},  # painted over the sky
            {"image_id": 1, "category_id": other, "segmentation": encode_rle(corner)},
            {"image_id": 2, "category_id": wall, "segmentation": encode_rle(~corner)},
            {"image_id": 3, "category_id": wall, "segmentation": encode_rle(~corner)},
        ],
    }
    path.write_text(json.dumps(data))


def expected_pcontext_masks():
    label = {c: CATEGORY_IDS.index(c) + 1 for c in (360, 440, 284)}
    first = np.zeros((6, 8), np.uint8)
    first[:3] = label[360]
    first[:, :4] = label[284]
    second = np.full((6, 8), label[440], np.uint8)
    second[5, 7] = 0
    return first, second


def test_convert_pcontext_paints_segments_in_order_and_keeps_the_59_classes(tmp_path):
    pcontext_annotations(tmp_path / "trainval_merged.json")
    voc2010 = tmp_path / "VOCdevkit" / "VOC2010"
    assert convert_pcontext(tmp_path / "trainval_merged.json", voc2010) == {"train": 1, "val": 1}
    first, second = expected_pcontext_masks()
    assert np.array_equal(np.asarray(Image.open(voc2010 / "SegmentationClassContext" / "2008_000001.png")), first)
    assert np.array_equal(np.asarray(Image.open(voc2010 / "SegmentationClassContext" / "2008_000002.png")), second)
    lists = voc2010 / "ImageSets" / "SegmentationContext"
    assert (lists / "train.txt").read_text() == "2008_000001\n" and (lists / "val.txt").read_text() == "2008_000002\n"
    assert not (voc2010 / "SegmentationClassContext" / "2008_000003.png").exists()  # test phase: no labels


def test_prepare_pcontext_end_to_end_offline(tmp_path, monkeypatch):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    pcontext_annotations(downloads / "trainval_merged.json")
    with tarfile.open(downloads / "VOCtrainval_03-May-2010.tar", "w") as archive:
        for name in ("2008_000001", "2008_000002"):
            data = image_bytes(np.full((6, 8, 3), 50, dtype=np.uint8), "RGB")
            info = tarfile.TarInfo(f"VOCdevkit/VOC2010/JPEGImages/{name}.jpg")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    sha1 = {path.name: hashlib.sha1(path.read_bytes()).hexdigest() for path in downloads.iterdir()}
    archives = [archive._replace(sha1=sha1[archive.filename]) for archive in prepare.ARCHIVES["pcontext"]]
    monkeypatch.setitem(prepare.ARCHIVES, "pcontext", archives)
    prepare.main(["pcontext", "--root", str(tmp_path)])
    train, val = PascalContext(tmp_path, "train"), PascalContext(tmp_path, "val")
    first, second = expected_pcontext_masks()
    expected = torch.from_numpy(first.astype(np.int64) - 1)
    expected[torch.from_numpy(first) == 0] = 255
    assert torch.equal(train[0][1], expected)
    assert len(val) == 1 and val[0][0].shape == (3, 6, 8)
    with pytest.raises(SystemExit):
        prepare.main(["cityscapes", "--root", str(tmp_path)])
