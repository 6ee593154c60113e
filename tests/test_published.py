"""Published checkpoints: the registry, safe loading, the publishers' protocols, `predict`, `evaluate --weights`.

No test downloads: torch hub's cache is a temporary folder and its download
function is replaced by one that refuses.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from layouts import random_state, read_layout
from PIL import Image

from encnet.__main__ import main
from encnet.checkpoint import CheckpointError
from encnet.errors import UserError
from encnet.inference import Protocol, fit_size, long_side_size, predict, sliding_window
from encnet.models import build_model, dilated_resnet, from_checkpoint, zoo


def test_registry_entries_are_complete_and_named_by_their_files():
    for name, entry in zoo.PUBLISHED.items():
        assert entry.name == name and entry.url.startswith("https://")
        assert entry.kind in ("segmentation", "backbone") and entry.publisher in ("PyTorch-Encoding", "mmsegmentation")
        if entry.kind == "segmentation":
            assert entry.protocol is not None and entry.figures and len(entry.classes) in (150, 59)
            assert len(entry.palette) == len(entry.classes)
        if entry.sha1:  # PyTorch-Encoding: <name>-<first 8 digits of the .pth's SHA-1>.zip
            assert entry.file_name == f"{name}-{entry.sha1[:8]}.zip" and len(entry.sha1) == 40
        else:  # mmsegmentation: the file name ends in 8 hex digits of the SHA-256 (torch.hub's check_hash)
            assert len(entry.path.stem.rsplit("-", 1)[1]) == 8
    assert {e.backbone for e in zoo.PUBLISHED.values() if e.kind == "backbone"} == {
        "resnet50s", "resnet101s", "resnet50_v1c", "resnet101_v1c"}


@pytest.mark.parametrize("name", ["encnet_resnet50s_ade", "encnet_r50-d8_512x512_80k_ade20k"])
def test_offline_error_names_the_url_and_the_file_to_place(offline_hub, name):
    hub, attempts = offline_hub
    entry = zoo.get(name)
    with pytest.raises(zoo.WeightsNotCached) as error:
        entry.fetch(progress=False)
    assert attempts == [entry.url]
    assert entry.url in str(error.value) and str(hub / "checkpoints" / entry.file_name) in str(error.value)


def test_a_file_placed_in_the_cache_is_used_and_its_sha1_checked(offline_hub):
    hub, attempts = offline_hub
    entry = zoo.get("resnet50s")
    state = random_state(read_layout("reference_resnet50s")["state_dict"])
    (hub / "checkpoints").mkdir(parents=True)
    with zipfile.ZipFile(entry.path, "w") as archive, archive.open(f"{entry.path.stem}.pth", "w") as file:
        torch.save(state, file)
    with pytest.raises(ValueError, match="not the published"):  # random tensors: not the published SHA-1
        entry.fetch()
    data = zipfile.ZipFile(entry.path).read(f"{entry.path.stem}.pth")
    genuine = zoo.Published(**{**entry.__dict__, "sha1": hashlib.sha1(data).hexdigest()})
    assert genuine.fetch() == entry.path and attempts == []
    backbone = dilated_resnet("resnet50s", weights=entry.path)  # the zip itself, read through
    torch.testing.assert_close(backbone.conv1[6].weight, state["conv1.6.weight"])


def _mmseg_checkpoint() -> dict:
    """An mmsegmentation EncNet-R50 ADE20K checkpoint in the publisher's layout, with random tensors."""
    classes = zoo.get("encnet_r50-d8_512x512_80k_ade20k").classes
    return {"state_dict": random_state(read_layout("mmseg_encnet_r50_ade20k")["state_dict"]),
            "meta": {"CLASSES": list(classes)}}


def _placed(entry: zoo.Published, checkpoint: dict) -> zoo.Published:
    """``checkpoint`` in torch hub's cache, under an entry like ``entry`` whose file name carries its SHA-256."""
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    staging = entry.path.with_suffix(".staging")
    torch.save(checkpoint, staging)
    prefix = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    stem = entry.path.stem.rsplit("-", 1)[0]
    own = zoo.Published(**{**entry.__dict__, "url": entry.url.replace(entry.file_name, f"{stem}-{prefix}.pth")})
    staging.rename(own.path)
    return own


def test_a_hand_placed_mmseg_file_is_checked_against_its_published_hash(offline_hub, tmp_path, capsys, monkeypatch):
    hub, attempts = offline_hub
    entry = zoo.get("encnet_r50-d8_512x512_80k_ade20k")  # its file name ends in 44b46b04
    entry.path.parent.mkdir(parents=True)
    torch.save(_mmseg_checkpoint(), entry.path)  # the right layout, the wrong tensors
    with pytest.raises(UserError) as error:
        entry.fetch(progress=False)
    found = hashlib.sha256(entry.path.read_bytes()).hexdigest()
    message = str(error.value)
    assert "\n" not in message and str(entry.path) in message and "SHA-256" in message
    assert f"{found}, not the published 44b46b04..." in message and "left as it is" in message, message
    assert entry.path.is_file() and attempts == []  # a file the user placed is never deleted

    assert main(["fetch", entry.name]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    assert main(["predict", str(photo), "--weights", entry.name, "--out", str(tmp_path / "out")]) == 2
    assert "not the published 44b46b04" in capsys.readouterr().err
    assert not any((tmp_path / "out").glob("*"))  # nothing predicted with the wrong weights

    genuine = _placed(entry, _mmseg_checkpoint())  # a file whose SHA-256 its name carries passes
    assert genuine.fetch(progress=False) == genuine.path and attempts == []


def test_a_wrong_download_is_deleted_and_refused(offline_hub, monkeypatch):
    hub, attempts = offline_hub
    entry = zoo.get("encnet_resnet50s_ade")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **kwargs: Path(dst).write_bytes(b"x"))
    with pytest.raises(UserError, match=r"has SHA-1 11f6ad8ec52a2984abaafd7c3b516503785c2072, not the published "
                                        r"07ac287cd77e53ea583f37454e17d30ce1509a4a of 'encnet_resnet50s_ade'"):
        entry.fetch(progress=False)
    assert not entry.path.exists()


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: encnet_resnet50s_ade"):
        zoo.get("encnet_resnet50_ade")
    with pytest.raises(ValueError, match="valid names: resnet50_v1c"):
        dilated_resnet("resnet50_v1c", weights="resnet50s")


class Payload:
    """Any object but plain data: unpickling it would run its class's code."""


def test_unsafe_truncated_and_unknown_files_are_refused(tmp_path):
    model = build_model("fcn", "small", num_classes=3)
    torch.save({"state_dict": model.state_dict(), "meta": {"hook": Payload()}}, tmp_path / "payload.pth")
    with pytest.raises(CheckpointError, match="pickles the object .*Payload.*Nothing of the file was run"):
        from_checkpoint(tmp_path / "payload.pth")
    assert isinstance(from_checkpoint(tmp_path / "payload.pth", allow=[Payload]), torch.nn.Module)
    good = tmp_path / "good.pth"
    torch.save(model.state_dict(), good)
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        from_checkpoint(tmp_path / "truncated.pth")
    torch.save({"weights": {"a.b": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint encnet knows.*found \\['weights'\\]"):
        from_checkpoint(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout: top-level key prefixes \\['encoder'\\]"):
        from_checkpoint({"encoder.conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="backbone-only checkpoint.*weights_backbone"):
        from_checkpoint(random_state(read_layout("reference_resnet50s")["state_dict"]))
    with pytest.raises(CheckpointError, match="3 classes, not num_classes=150"):
        from_checkpoint(good, num_classes=150)
    with pytest.raises(UserError, match="no checkpoint at"):
        from_checkpoint(tmp_path / "missing.pth")
    assert not pickle.loads(pickle.dumps(Payload())).__dict__  # the class itself is harmless


def test_an_unsupported_head_is_named():
    state = random_state(read_layout("mmseg_encnet_r50_ade20k")["state_dict"])
    state["decode_head.convs.1.conv.weight"] = torch.zeros(512, 512, 3, 3)
    with pytest.raises(CheckpointError, match="decode_head.convs.1.conv.weight"):
        from_checkpoint({"state_dict": state})


def test_fit_and_long_side_sizes_follow_the_publishers():
    assert fit_size(1366, 1024, (2048, 512)) == (683, 512)  # short side to 512
    assert fit_size(256, 4000, (2048, 512)) == (131, 2048)  # long side to 2048
    assert long_side_size(300, 400, 520) == (390, 520) and long_side_size(400, 300, 520) == (520, 390)


def test_padded_sliding_window_covers_every_pixel_once_per_window():
    calls = []

    def model(x):
        calls.append(tuple(x.shape[-2:]))
        return {"out": torch.ones(x.size(0), 2, *x.shape[-2:])}

    counts = sliding_window(lambda x: model(x)["out"], torch.zeros(1, 3, 50, 100), crop_size=40, stride=26,
                            edge="pad")
    assert set(calls) == {(40, 40)}  # every window padded to the crop
    assert len(calls) == 2 * 4  # rows 0, 26 (ceil(10/26) + 1 = 2); cols 0, 26, 52, 78
    torch.testing.assert_close(counts, torch.ones(1, 2, 50, 100))  # averaged where windows overlap


def test_protocols_return_normalised_scores_at_the_image_size():
    torch.manual_seed(0)
    model = build_model("encnet", "small", num_classes=4).eval()
    images = torch.randn(1, 3, 37, 53)
    for protocol in (Protocol(fit=(128, 64)), Protocol(base_size=80, crop_size=48, edge="pad", combine="exp")):
        single, multi = predict(model, images, protocol), predict(model, images, protocol.multi_scale())
        assert single.shape == multi.shape == (1, 4, 37, 53)
        torch.testing.assert_close(single.sum(1), torch.ones(1, 37, 53))
        assert not torch.allclose(single, multi)  # the views do change the scores


def _photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("layout", ["encnet", "reference_encnet_resnet50s_pcontext", "mmseg_encnet_r50_ade20k"])
def test_predict_end_to_end_in_each_layout(tmp_path, layout, capsys, monkeypatch):
    """The publishers' protocols at a small size (the full ones run ResNet-50 on 512-pixel views)."""
    monkeypatch.setattr(zoo, "MMSEG_ADE20K", Protocol(fit=(96, 48)))
    monkeypatch.setattr(zoo, "REFERENCE", Protocol(base_size=72, crop_size=48, edge="pad", align_corners=True,
                                                   combine="exp"))
    if layout == "encnet":
        torch.manual_seed(0)
        checkpoint = build_model("encnet", "small", num_classes=150).state_dict()
        classes = 150
    else:
        fixture = read_layout(layout)
        checkpoint, classes = random_state(fixture["state_dict"]), fixture["num_classes"]
        checkpoint = {"state_dict": checkpoint, "meta": {"CLASSES": ["x"] * classes}} if layout.startswith("mmseg") \
            else checkpoint
    torch.save(checkpoint, tmp_path / "weights.pth")
    photo = _photo(tmp_path / "street.jpg")
    assert main(["predict", str(photo), "--weights", str(tmp_path / "weights.pth"), "--out",
                 str(tmp_path / "out"), "--device", "cpu"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "street_labels.png"))
    assert labels.shape == (40, 56) and labels.max() < classes
    assert Image.open(tmp_path / "out" / "street_overlay.png").size == (56, 40)
    record = json.loads((tmp_path / "out" / "street.json").read_text())
    probabilities = [row["probability"] for row in record["se_top10"]]
    assert len(probabilities) == 10 and probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(row["share"] for row in record["pixels_top10"]) - 1) < 1e-3 or len(record["pixels_top10"]) == 10
    assert "street_labels.png" in capsys.readouterr().out


def test_evaluate_weights_offline_is_one_clear_error(offline_hub, tmp_path, capsys):
    assert main(["evaluate", "--weights", "encnet_resnet50s_ade", "--dataset", "ade20k",
                 "--data-root", str(tmp_path)]) != 0
    error = capsys.readouterr().err
    assert zoo.get("encnet_resnet50s_ade").url in error and "place it at" in error


def test_evaluate_published_weights_prints_the_published_figure(offline_hub, tmp_path, capsys, monkeypatch):
    """A published mmsegmentation file placed in the cache is scored on an ADE20K tree with its protocol."""
    from test_data_real import make_ade

    hub, attempts = offline_hub
    entry = _placed(zoo.get("encnet_r50-d8_512x512_80k_ade20k"), _mmseg_checkpoint())
    small = Protocol(fit=(64, 32))  # the published one fits each image in 2048 x 512
    monkeypatch.setattr(zoo, "PUBLISHED", {**zoo.PUBLISHED, entry.name: zoo.Published(
        **{**entry.__dict__, "protocol": small})})
    root = tmp_path / "data"
    make_ade(root)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--weights", entry.name, "--data-root", str(root), "--out", str(out),
                 "--device", "cpu", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "published by mmsegmentation (single scale): mIoU 39.53" in printed and attempts == []
    metrics = json.loads(out.read_text())
    assert metrics["weights"] == entry.name and metrics["protocol"]["fit"] == [64, 32]
    assert 0 <= metrics["pixAcc"] <= 1 and len(metrics["IoU"]) == 150
