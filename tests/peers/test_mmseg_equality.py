"""encnet, loaded from an mmsegmentation checkpoint, computes what mmsegmentation's own EncNet computes.

For each variant of mmsegmentation's EncNet (ResNetV1c-50 + ``EncHead`` +
``FCNHead``; lateral or not, SE branch or not, auxiliary head or not), the test
builds mmsegmentation's model from its own config (``tests/peers/mmseg_cpu.py``:
BN for SyncBN, CPU, eval mode), gives every parameter and buffer random values
(BN statistics and affine, Encoding codewords and scale included), saves it as
mmsegmentation saves checkpoints (``{"meta", "state_dict"}``), loads the file
with :func:`encnet.models.from_checkpoint`, and compares on the same float32
input (2 x 3 x 96 x 128, already normalised):

- ``"out"`` with mmsegmentation's ``EncoderDecoder.inference`` (whole-image mode:
  decode-head logits resized bilinearly to the input, ``align_corners=False``);
- ``"se"`` with the second output of ``EncHead.forward``;
- ``"aux"`` with ``FCNHead.predict`` (the same resize);

and the backbone alone: ``dilated_resnet("resnet50_v1c" / "resnet101_v1c",
weights=file)`` stages c2, c3, c4 against ResNetV1c's outputs 1, 2, 3.

The measure is ``max |ours - mmseg| / max |mmseg|`` per output; it must stay
below 1e-4 (float32 rounding: the two Encoding layers compute the same
distances in a different order). The measured values are printed at the end of
the module. Needs mmsegmentation: ``make peers`` installs it beside the project
and runs this file; elsewhere it is skipped.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "mmseg", reason="mmsegmentation is not installed here; `make peers` creates .venv-peers with it and runs this test"
)

import mmseg_cpu  # noqa: E402
import torch  # noqa: E402

from encnet.models import dilated_resnet, from_checkpoint  # noqa: E402

R50 = "encnet/encnet_r50-d8_4xb4-80k_ade20k-512x512.py"
TOLERANCE = 1e-4
HEIGHT, WIDTH = 96, 128

VARIANTS = {
    # name: (add_lateral, use_se_loss, aux, classes)
    "published (SE, aux)": (False, True, True, 150),
    "lateral, SE, aux": (True, True, True, 59),
    "no SE, aux": (False, False, True, 150),
    "SE, no aux": (False, True, False, 150),
    "lateral, no SE, no aux": (True, False, False, 59),
}

MEASURED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def report(request):
    """Print the measured differences after the module, whatever pytest captures."""
    yield
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\nencnet vs {mmseg_cpu.versions()}, input 2x3x{HEIGHT}x{WIDTH} float32, CPU:")
        for line in MEASURED:
            print("  " + line)


def difference(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """(max absolute difference, that divided by the largest magnitude of ``theirs``)."""
    assert ours.shape == theirs.shape
    largest = (ours - theirs).abs().max().item()
    return largest, largest / theirs.abs().max().item()


def compare(label: str, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    measured = {name: difference(*pair) for name, pair in outputs.items()}
    MEASURED.append(f"{label:<24}" + "  ".join(
        f"{name}: max abs {absolute:.1e}, rel {relative:.1e}" for name, (absolute, relative) in measured.items()))
    for name, (_, relative) in measured.items():
        assert relative < TOLERANCE, f"{label}: {name} differs from mmsegmentation's by {relative:.1e} (relative)"


def image(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_encnet_matches_mmseg(variant, tmp_path):
    lateral, se_loss, aux, classes = VARIANTS[variant]
    theirs = mmseg_cpu.build_encnet(R50, aux=aux, add_lateral=lateral, use_se_loss=se_loss, num_classes=classes)
    mmseg_cpu.randomize_(theirs, seed=len(MEASURED))
    path = tmp_path / "encnet_mmseg.pth"
    torch.save({"meta": {"mmseg_version": mmseg_cpu.versions(), "CLASSES": tuple(map(str, range(classes)))},
                "state_dict": theirs.state_dict()}, path)
    ours = from_checkpoint(path, num_classes=classes)

    x = image(seed=1)
    metas = [{"ori_shape": (HEIGHT, WIDTH), "img_shape": (HEIGHT, WIDTH), "pad_shape": (HEIGHT, WIDTH)}] * len(x)
    with torch.no_grad():
        outputs = ours(x.clone())
        features = theirs.extract_feat(x)
        pairs = {"out": (outputs["out"], theirs.inference(x, metas))}
        if se_loss:
            pairs["se"] = (outputs["se"], theirs.decode_head.forward(features)[1])
        if aux:
            pairs["aux"] = (outputs["aux"], theirs.auxiliary_head.predict(features, metas, theirs.test_cfg))
    assert set(outputs) == set(pairs)
    compare(variant, pairs)


@pytest.mark.parametrize("depth", [50, 101])
def test_backbone_matches_resnet_v1c(depth, tmp_path):
    theirs = mmseg_cpu.randomize_(mmseg_cpu.build_resnet_v1c(depth), seed=depth)
    path = tmp_path / f"resnet{depth}_v1c.pth"
    torch.save({"state_dict": theirs.state_dict()}, path)  # the layout of open-mmlab://resnet50_v1c
    ours = dilated_resnet(f"resnet{depth}_v1c", weights=path).eval()

    x = image(seed=2)
    with torch.no_grad():
        stages = ours(x.clone())
        reference = theirs(x)
    compare(f"ResNetV1c-{depth} backbone", {name: (stages[name], reference[index + 1])
                                           for index, name in enumerate(("c2", "c3", "c4"))})
