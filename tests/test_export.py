"""ONNX export (encnet.export, `encnet export`, `encnet predict --onnx`) and the Encoding Layer's plain path."""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from encnet import engine
from encnet.__main__ import main
from encnet.errors import UserError
from encnet.inference import Protocol, predict
from encnet.models import build_model
from encnet.nn import Encoding
from encnet.nn import functional as encoding_functions

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install encnet[export])")
from encnet.export import export_onnx, load_onnx  # noqa: E402

TOLERANCE = 1e-4  # of the largest |logit|


def _relative_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float((found - expected).abs().max() / expected.abs().max())


def _random_batch_norm_statistics(model: torch.nn.Module, seed: int) -> None:
    """Running statistics far from (0, 1), so that exporting them wrongly shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
            module.bias.data.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)


def _assert_same_outputs(model, onnx_model, images) -> None:
    with torch.no_grad():
        expected = model(images)
    found = onnx_model(images)
    assert set(found) == {"out", "se"}
    assert found["out"].shape == expected["out"].shape == (images.size(0), expected["out"].size(1), *images.shape[-2:])
    for key in found:
        assert _relative_difference(found[key], expected[key]) < TOLERANCE, key


def test_plain_encoding_path_equals_the_autograd_function_at_a_realistic_size(monkeypatch):
    """EncNet-ResNet-50's layer on a 60 x 60 map: no_grad (plain operations) = the Function's forward."""
    torch.manual_seed(0)
    layer = Encoding(512, 32)
    x = torch.relu(torch.randn(2, 512, 60, 60))  # like the features after ReLU
    function_path = layer(x)
    assert type(function_path.grad_fn).__name__ == "_EncodingBackward"  # gradients wanted: the Function
    function_path = function_path.detach()
    monkeypatch.setattr(encoding_functions._Encoding, "apply", None)  # no_grad must not reach it
    with torch.no_grad():
        plain_path = layer(x)
    assert plain_path.dtype == torch.float32
    torch.testing.assert_close(plain_path, function_path, rtol=1e-5, atol=1e-5 * float(function_path.abs().max()))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # distances stay float32 on that path too
        far = layer(100 + x[:, :, :8, :8])
    expected = encoding_functions.encoding_direct((100 + x[:, :, :8, :8]).double(), layer.codewords.double(),
                                                  layer.smoothing.double())
    assert far.dtype == torch.float32
    torch.testing.assert_close(far.double(), expected, rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random small EncNet (17 classes) in eval mode and its export, with a protocol of its own."""
    torch.manual_seed(0)
    model = build_model("encnet", "small", num_classes=17).eval()
    _random_batch_norm_statistics(model, seed=1)
    protocol = Protocol(crop_size=48, scales=(0.75, 1.0), flip=True)
    path = export_onnx(model, tmp_path_factory.mktemp("small") / "small.onnx", example_size=(64, 80),
                       protocol=protocol)
    return model, path, protocol


def test_small_encnet_in_onnx_runtime_equals_pytorch_at_several_sizes(small):
    model, path, _ = small
    onnx_model = load_onnx(path)
    generator = torch.Generator().manual_seed(2)
    for shape in [(1, 3, 64, 80), (2, 3, 75, 131), (1, 3, 33, 40)]:  # the example's size, then others
        _assert_same_outputs(model, onnx_model, torch.randn(*shape, generator=generator))
    assert not model.training


def test_onnx_file_carries_what_predict_needs(small):
    model, path, protocol = small
    onnx_model = load_onnx(path)
    assert onnx_model.protocol == protocol
    assert onnx_model.num_classes == 17 and len(onnx_model.classes) == len(onnx_model.palette) == 17
    assert onnx_model.metadata["outputs"] == ["logits", "se_logits"]
    assert [input.name for input in onnx_model.session.get_inputs()] == ["image"]
    batch, channels, height, width = onnx_model.session.get_inputs()[0].shape
    assert channels == 3 and all(isinstance(axis, str) for axis in (batch, height, width))  # symbolic axes
    images = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(3))
    expected, found = predict(model, images, protocol), predict(onnx_model, images, onnx_model.protocol)
    assert (expected.argmax(1) == found.argmax(1)).float().mean() > 0.999
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-4)


def test_encnet_resnet50s_in_onnx_runtime_equals_pytorch(tmp_path):
    """One export of EncNet-ResNet-50s (150 classes, random weights and BN statistics) at 256 x 320, then 200 x 264."""
    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_model("encnet", "resnet50s", num_classes=150).eval()
    _random_batch_norm_statistics(model, seed=4)
    onnx_model = load_onnx(export_onnx(model, tmp_path / "r50s.onnx", example_size=(256, 320)))
    generator = torch.Generator().manual_seed(5)
    for shape in [(1, 3, 256, 320), (1, 3, 200, 264)]:
        _assert_same_outputs(model, onnx_model, torch.randn(*shape, generator=generator))
    print(f"ResNet-50s export and two comparisons: {time.perf_counter() - start:.1f} s")


def test_cli_export_then_predict_onnx_gives_the_labels_of_predict_weights(tmp_path, tiny_config, capsys):
    """A checkpoint of a quick run: `predict --onnx` (and with --ms) labels the pixels as `predict --weights` does."""
    out = tmp_path / "run"
    engine.train(dataclasses.replace(tiny_config, out=str(out)), progress=False)
    checkpoint, onnx_file = out / "checkpoint.pt", tmp_path / "model.onnx"
    assert main(["export", "--weights", str(checkpoint), "--onnx", str(onnx_file)]) == 0
    assert "largest difference" in capsys.readouterr().out
    photo = tmp_path / "photo.png"  # larger than the 64-pixel crop: sliding windows
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(photo)
    for flags in ([], ["--ms"]):
        for source in (["--weights", str(checkpoint)], ["--onnx", str(onnx_file)]):
            folder = tmp_path / f"{source[0][2:]}{''.join(flags)}"
            assert main(["predict", str(photo), *source, "--out", str(folder), *flags]) == 0
        torch_labels = np.asarray(Image.open(tmp_path / f"weights{''.join(flags)}" / "photo_labels.png"))
        onnx_labels = np.asarray(Image.open(tmp_path / f"onnx{''.join(flags)}" / "photo_labels.png"))
        assert torch_labels.shape == (90, 120) and (torch_labels == onnx_labels).mean() >= 0.999
    record = json.loads((tmp_path / "onnx" / "photo.json").read_text())
    expected = json.loads((tmp_path / "weights" / "photo.json").read_text())
    assert record["onnx"] == str(onnx_file) and record["size"] == [90, 120]
    probabilities = [[row["probability"] for row in json_record["se_top10"]] for json_record in (record, expected)]
    np.testing.assert_allclose(*probabilities, rtol=0, atol=2e-4)  # sorted values: near-ties may swap classes
    metadata = load_onnx(onnx_file).metadata
    assert metadata["protocol"]["crop_size"] == tiny_config.crop_size and metadata["dataset"] == "synthetic"
    assert metadata["weights"] == str(checkpoint) and metadata["num_classes"] == 17


def test_missing_onnxruntime_is_a_one_line_error(small, tmp_path, monkeypatch, capsys):
    _, path, _ = small
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(photo)
    for command in (["predict", str(photo), "--onnx", str(path), "--out", str(tmp_path / "out")],
                    ["export", "--weights", str(tmp_path / "absent.pt"), "--onnx", str(tmp_path / "m.onnx")]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "onnxruntime is missing" in error and "pip install encnet[export]" in error


def test_a_file_not_written_by_encnet_export_is_a_clear_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    plain = tmp_path / "identity.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "identity",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    onnx.save_model(helper.make_model(graph), plain)
    with pytest.raises(UserError, match="not written by `encnet export`"):
        load_onnx(plain)
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(UserError, match="is not a model ONNX Runtime can load"):
        load_onnx(tmp_path / "text.onnx")
    with pytest.raises(UserError, match="is not a file"):
        load_onnx(tmp_path / "absent.onnx")
