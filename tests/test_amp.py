"""Mixed precision (``TrainConfig.amp``) and the choice of synchronised batch norm (``TrainConfig.sync_bn``).

The Encoding Layer keeps its distances and soft assignment in float32 under
autocast; training under bf16 resumes exactly and lands where float32 does;
fp16's GradScaler is saved, restored, and its skipped steps are no divergence.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from encnet import engine
from encnet.checkpoint import load_checkpoint, save_checkpoint
from encnet.config import TrainConfig
from encnet.data.wrappers import whole_images
from encnet.distributed import plain_batch_norms, sync_batch_norms, sync_bn_kind
from encnet.errors import UserError
from encnet.inference import predict
from encnet.nn.functional import encoding, encoding_direct
from encnet.teaching.processes import spawn

HEAD = "head.classifier.1.weight"  # the last layer's weights
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


class Interrupted(Exception):
    """Stands for a crash (a killed job) between two epochs."""


# EncNet's Encoding Layer: 2 images, 512 channels, a 32 x 32 feature map, 32 codewords.
B, C, H, W, K = 2, 512, 32, 32, 32


@pytest.fixture(scope="module")
def features() -> dict[str, torch.Tensor]:
    """Features far from the origin (|mean| ~ 4 std), codewords among them, and the float64 direct formula's results.

    The features are rounded to multiples of 1/16 below 16 in magnitude, which
    bfloat16 and float16 both hold exactly: the autocast input *is* these
    numbers in either half type, and one float64 reference serves both. The
    reference is :func:`encoding_direct` (the residuals, no expansion), in float64,
    a few hundred pixels at a time (``e_k`` is a sum over pixels), and its
    gradients for the loss ``sum(E * G)`` with a fixed random ``G``.
    """
    generator = torch.Generator().manual_seed(0)
    mean = 4 * torch.randn(C, generator=generator)
    x = mean[None, :, None, None] + torch.randn(B, C, H, W, generator=generator)
    x = (x * 16).round().clamp(-255, 255) / 16
    codewords = mean + torch.randn(K, C, generator=generator)  # trained codewords sit among the data
    smoothing = torch.empty(K).uniform_(0.5, 1.5, generator=generator) / 64  # s * distance spread ~ 1
    G = torch.randn(B, K, C, generator=generator)
    X, D, S = (t.double().requires_grad_() for t in (x, codewords, smoothing))
    output = torch.zeros(B, K, C, dtype=torch.float64)
    for pixels in X.flatten(2).split(256, dim=2):
        part = encoding_direct(pixels, D, S)
        (part * G.double()).sum().backward()
        output += part.detach()
    return {"x": x, "codewords": codewords, "smoothing": smoothing, "G": G,
            "reference": [output, X.grad, D.grad, S.grad]}


def _relative_errors(values: list[torch.Tensor], reference: list[torch.Tensor]) -> list[float]:
    return [((value.double() - ref).norm() / ref.norm()).item() for value, ref in zip(values, reference)]


def _naive_half(x: torch.Tensor, codewords: torch.Tensor, smoothing: torch.Tensor, G: torch.Tensor, dtype):
    """The expanded formula ``||x||^2 - 2 x.d + ||d||^2`` computed in ``dtype``: (E, dx, dD, ds)."""
    x, codewords, smoothing = (t.to(dtype).requires_grad_() for t in (x, codewords, smoothing))
    X = x.flatten(2)
    distances = (X * X).sum(1, keepdim=True) - 2 * torch.matmul(codewords, X) + (codewords * codewords).sum(1)[:, None]
    A = torch.softmax(-smoothing[:, None] * distances, dim=1)
    E = torch.matmul(A, X.transpose(1, 2)) - A.sum(2, keepdim=True) * codewords
    (E.float() * G).sum().backward()
    return [E.detach(), x.grad, codewords.grad, smoothing.grad]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_encoding_stays_float32_under_autocast_where_half_precision_fails(features, dtype):
    """Under autocast, E and its gradients stay within a bound of the float64 direct formula; half precision does not.

    The bound: relative error (Frobenius) 1e-4 for E and the gradients of the
    codewords and smoothing, which the layer computes and returns in float32;
    ``u + 1e-4`` for the input's gradient, which autocast hands back in the
    input's half type, so one rounding (unit roundoff u: 2^-8 in bfloat16,
    2^-11 in float16) is unavoidable there. float32's own error is far below:
    ||x||^2 ~ 8700 here against distances ~ 1000 spread over ~ 80 (|mean| ~ 4 std
    makes the expansion cancel ~ 9x); float32's 6e-8 of 8700 moves the logits
    ``-s ||x - d||^2`` (s ~ 1/64) by ~ 1e-5 (measured: ~ 3e-6 on E). The same
    expansion in half precision rounds ||x||^2 and x.d to steps of 64 (bfloat16)
    or 8 (float16) near 8192: distance errors of tens, or units, on logits
    spread over ~ 1 (measured: 0.15 and 0.015 on E; float16's smoothing gradient
    overflows). It must miss the bound by 10x at least.
    """
    x, codewords, smoothing, G = (features[name] for name in ("x", "codewords", "smoothing", "G"))
    assert torch.equal(x.to(dtype).float(), x)  # the input is exactly the half-precision one
    pixels = x.flatten(2).transpose(1, 2).reshape(-1, C)
    assert pixels.square().sum(1).mean() > 5 * torch.cdist(pixels, codewords).square().mean()  # the cancellation
    inputs = [x.to(dtype).requires_grad_(), codewords.clone().requires_grad_(), smoothing.clone().requires_grad_()]
    with torch.autocast("cpu", dtype=dtype):
        E = encoding(*inputs)
    assert E.dtype == torch.float32
    (E * G).sum().backward()
    assert inputs[0].grad.dtype == dtype
    bounds = [1e-4, UNIT_ROUNDOFF[dtype] + 1e-4, 1e-4, 1e-4]
    errors = _relative_errors([E.detach(), *(t.grad for t in inputs)], features["reference"])
    assert all(error <= bound for error, bound in zip(errors, bounds)), (errors, bounds)
    naive = _relative_errors(_naive_half(x, codewords, smoothing, G, dtype), features["reference"])
    assert all(not error <= 10 * bound for error, bound in zip(naive, bounds)), (naive, bounds)  # inf/NaN fail too


@pytest.fixture(scope="module")
def quick(tiny_config) -> TrainConfig:
    """2 epochs of 8 training images, 4 a batch (conftest's tiny_config), scored after the last; NCHW.

    NCHW rather than the preset's NHWC: on these tiny tensors a CPU's NHWC batch
    norm is several times slower, and the layout is not what these tests are about.
    """
    return dataclasses.replace(tiny_config, eval_every=2, channels_last=False)


@pytest.fixture(scope="module")
def float32_and_bf16(tmp_path_factory, quick):
    """The same run (seed, data, recipe) in float32 and under bf16 autocast, both written to folders."""
    runs = {}
    for amp in ("off", "bf16"):
        out = tmp_path_factory.mktemp(amp)
        runs[amp] = out, engine.train(dataclasses.replace(quick, amp=amp, out=str(out)), progress=False)
    return runs


def test_bf16_resumes_exactly(float32_and_bf16, quick, tmp_path, monkeypatch):
    """Stopped after its first epoch's checkpoint and resumed, a bf16 run ends exactly as the uninterrupted one."""
    _, whole = float32_and_bf16["bf16"]
    config = dataclasses.replace(quick, amp="bf16", out=str(tmp_path))
    save = engine._save

    def save_then_stop(run, record):
        save(run, record)
        raise Interrupted

    monkeypatch.setattr(engine, "_save", save_then_stop)
    with pytest.raises(Interrupted):
        engine.train(config, progress=False)
    monkeypatch.undo()
    checkpoint = str(tmp_path / "checkpoint.pt")
    assert load_checkpoint(checkpoint)["iteration"] == len(whole["losses"]) // 2
    with pytest.raises(UserError, match=r"amp='bf16' \(this run: 'off'\)"):  # another precision is another run
        engine.train(dataclasses.replace(config, amp="off", resume=checkpoint), progress=False)
    resumed = engine.train(dataclasses.replace(config, resume=checkpoint), progress=False)
    assert resumed["losses"] == whole["losses"]
    for name in ("pixAcc", "mIoU", "IoU"):
        torch.testing.assert_close(torch.tensor(resumed["metrics"][name]), torch.tensor(whole["metrics"][name]),
                                   rtol=0, atol=0, equal_nan=True)
    for name, tensor in whole["model"].state_dict().items():
        assert tensor.dtype == resumed["model"].state_dict()[name].dtype
        assert torch.equal(tensor, resumed["model"].state_dict()[name]), name


def test_bf16_lands_where_float32_does(float32_and_bf16, quick):
    """bf16 training follows float32's up to rounding: the losses, the models' probabilities, the scores.

    Measured on this run (float32 against bf16): the largest relative loss
    difference 7e-4; mIoU 0.06295 against 0.06289 (gap 6e-5); the largest
    difference of the two models' class probabilities on the validation images
    (both evaluated in float32) 0.0017. For scale, the float32 run from seed 1
    instead of 0: losses 10% apart, mIoU 0.095 (gap 0.032), probabilities 0.027
    apart. The bounds sit between: losses within 1%, mIoU and pixAcc within
    0.005, probabilities within 0.01. (At this size both models still give most
    pixels the majority class, which alone scores mIoU 0.08 here: the scores are
    the weakest of the three checks.) The weights stay float32.
    """
    (_, full), (out, bf16) = float32_and_bf16["off"], float32_and_bf16["bf16"]
    assert bf16["losses"] != full["losses"]  # autocast did run in bfloat16
    torch.testing.assert_close(torch.tensor(bf16["losses"]), torch.tensor(full["losses"]), rtol=0.01, atol=0)
    assert abs(bf16["metrics"]["mIoU"] - full["metrics"]["mIoU"]) <= 0.005
    assert abs(bf16["metrics"]["pixAcc"] - full["metrics"]["pixAcc"]) <= 0.005
    images = torch.stack([image for image, _ in whole_images("synthetic", "val", root=None,
                                                             options=quick.dataset_options)])
    probabilities = [predict(result["model"].eval(), images) for result in (full, bf16)]
    gap = (probabilities[0] - probabilities[1]).abs().max().item()
    assert gap <= 0.01, gap
    assert all(t.dtype == torch.float32 for t in bf16["model"].state_dict().values() if t.is_floating_point())
    assert "scaler" not in load_checkpoint(out / "checkpoint.pt")  # only fp16 scales the loss


def test_checkpoints_without_amp_or_a_scaler_still_resume(float32_and_bf16, quick, tmp_path):
    """A checkpoint written before ``amp`` and ``sync_bn`` existed resumes as a float32 run, without a scaler."""
    checkpoint = load_checkpoint(float32_and_bf16["off"][0] / "checkpoint.pt")
    for name in ("amp", "sync_bn"):
        del checkpoint["config"][name]
    del checkpoint["format"], checkpoint["checksum"]
    save_checkpoint(tmp_path / "old.pt", checkpoint)
    run = engine._prepare(dataclasses.replace(quick, resume=str(tmp_path / "old.pt")), 0, 1, torch.device("cpu"),
                          None, False)
    assert run.iteration == checkpoint["iteration"] and not run.scaler.is_enabled()


def test_fp16_trains_with_a_grad_scaler_that_the_checkpoint_restores(quick, tmp_path):
    config = dataclasses.replace(quick, amp="fp16", epochs=1, out=str(tmp_path))
    torch.manual_seed(config.seed)
    initial = config.build_model(17).state_dict()
    result = engine.train(config, progress=False)
    assert not torch.equal(result["model"].state_dict()[HEAD], initial[HEAD])  # the steps were taken
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["scaler"]
    assert 0 < saved["scale"] < float("inf")
    run = engine._prepare(dataclasses.replace(config, resume=str(tmp_path / "checkpoint.pt")), 0, 1,
                          torch.device("cpu"), None, False)
    assert run.scaler.is_enabled() and run.scaler.state_dict() == saved


def test_fp16_steps_skipped_for_overflow_are_not_divergence(quick, tmp_path, monkeypatch):
    """A loss scale of 2^40 overflows every float16 gradient: each step is skipped and the scale halved, no error."""
    scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *args, **kwargs: scaler(*args, init_scale=2.0**40, **kwargs))
    config = dataclasses.replace(quick, amp="fp16", epochs=1, out=str(tmp_path))
    result = engine.train(config, progress=False)  # no Diverged
    iterations = len(result["losses"])
    assert iterations == 2 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["scaler"]["scale"] == 2.0**40 / 2**iterations
    torch.manual_seed(config.seed)
    initial = config.build_model(17).state_dict()
    assert torch.equal(result["model"].state_dict()[HEAD], initial[HEAD])  # skipped: not updated


def test_unknown_amp_or_sync_bn_is_a_one_line_error(quick):
    for name, value in (("amp", "fp8"), ("sync_bn", "nccl")):
        with pytest.raises(UserError, match=f"{name} must be one of") as error:
            dataclasses.replace(quick, **{name: value})
        assert "\n" not in str(error.value) and value in str(error.value)


@pytest.mark.parametrize("choice, device, backend, kind", [
    ("auto", "cuda", "nccl", "torch"), ("auto", "cpu", "gloo", "encnet"), ("auto", "cuda", "gloo", "encnet"),
    ("encnet", "cuda", "nccl", "encnet"), ("torch", "cuda", "nccl", "torch"), ("off", "cuda", "nccl", "off"),
    ("off", "cpu", "gloo", "off"), ("encnet", "cpu", "gloo", "encnet"),
])
def test_sync_bn_choice_by_device_and_backend(choice, device, backend, kind):
    assert sync_bn_kind(choice, device, backend) == kind


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), ("cuda", "gloo")])
def test_torch_sync_bn_off_cuda_nccl_is_a_one_line_error(device, backend):
    with pytest.raises(UserError, match="--sync-bn torch needs CUDA and the NCCL backend") as error:
        sync_bn_kind("torch", device, backend)
    assert "\n" not in str(error.value)


def test_torch_sync_bn_reverts_to_the_classes_it_replaced():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(2), nn.BatchNorm1d(4))
    classes = [type(m) for m in model]
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    converted[1].reverts_to, converted[3].reverts_to = nn.BatchNorm2d, nn.BatchNorm1d
    weight = converted[3].weight
    assert isinstance(converted[3], nn.SyncBatchNorm)
    plain = plain_batch_norms(converted)
    assert [type(m) for m in plain] == classes and plain[3].weight is weight


def _convert_on_two_ranks(rank: int, world_size: int) -> dict[str, Any]:
    """On each of 2 gloo ranks: the batch norm classes each sync_bn choice gives, and whole-batch statistics."""
    torch.manual_seed(0)  # the same weights on both ranks
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(2), nn.BatchNorm1d(4))
    results: dict[str, Any] = {}
    for choice in ("auto", "encnet", "off"):
        converted = sync_batch_norms(copy.deepcopy(model), choice, torch.device("cpu"))
        results[choice] = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in converted.modules()
                                  if isinstance(m, _BatchNorm)})
    try:
        sync_batch_norms(copy.deepcopy(model), "torch", torch.device("cpu"))
    except UserError as error:
        results["torch"] = str(error)
    batch = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))  # rank 0: 2 images, rank 1: 3
    synced, alone = sync_batch_norms(copy.deepcopy(model), "auto", torch.device("cpu")), copy.deepcopy(model)
    synced(batch[:2] if rank == 0 else batch[2:])
    alone(batch)
    results["whole_batch"] = torch.allclose(synced[1].running_mean, alone[1].running_mean, atol=1e-6)
    results["reverted"] = [type(m).__name__ for m in plain_batch_norms(synced)]
    return results


def test_sync_bn_choices_on_two_gloo_ranks():
    for result in spawn(_convert_on_two_ranks, 2, timeout=120):
        assert result["auto"] == result["encnet"] == ["encnet.nn.syncbn.SyncBatchNorm"]
        assert result["off"] == ["torch.nn.modules.batchnorm.BatchNorm1d", "torch.nn.modules.batchnorm.BatchNorm2d"]
        assert "--sync-bn torch needs CUDA" in result["torch"] and "gloo" in result["torch"]
        assert result["whole_batch"]  # the statistics of both ranks' images
        assert result["reverted"] == ["Conv2d", "BatchNorm2d", "Flatten", "BatchNorm1d"]


def test_command_line_lists_the_choices_and_refuses_others(capsys):
    from encnet.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "--amp {off,bf16,fp16}" in usage and "--sync-bn {auto,encnet,torch,off}" in usage
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "synthetic-quick", "--amp", "fp8"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
