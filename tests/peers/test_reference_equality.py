"""encnet's models equal the authors' PyTorch-Encoding models on the same weights.

The reference's own ``EncNet`` (``encoding/models/sseg/encnet.py`` of
PyTorch-Encoding 1.2.1, imported by ``tests/peers/pytorch_encoding.py``) gets
random weights, BN statistics and Encoding parameters; its ``state_dict()`` is
saved as the model zoo's files are, read back with ``encnet.models.from_checkpoint``
and both models run on the same input in eval mode. The reference returns the
tuple ``(out, se, aux)`` (``out`` and ``aux`` upsampled with
``align_corners=True``; ``se`` only with ``se_loss``, ``aux`` only with ``aux``)::

    python tests/peers/get_pytorch_encoding.py
    python -m pytest tests/peers/test_reference_equality.py -s   # -s prints the differences

Skips when the reference's source (``build/peers/``) or its pure-Python
requirements are missing.
"""

from __future__ import annotations

import pytest
import pytorch_encoding
import torch
from torch import Tensor, nn

from encnet.models import dilated_resnet, from_checkpoint
from encnet.nn.functional import encoding_direct

REASON = pytorch_encoding.missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

RTOL = 1e-4
"""Largest allowed ``max|ours - reference| / max|reference|`` (float32 rounding)."""


@pytest.fixture(autouse=True)
def seeded():
    """The reference's own initialisation draws from the global generator."""
    torch.manual_seed(0)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """New BN parameters and statistics, Encoding codewords and scales, fitted to one random input.

    Random statistics alone let the activations grow block after block, until the
    soft assignments and the gates are all 0 or 1 and the Encoding would go
    untested. So each BN and Encoding layer is set, in a forward pass and in
    order, from the input it receives (pre-forward hooks, eval mode):

    - BN: ``running_mean`` = the input's mean per channel, ``running_var`` = its
      variance times U(0.5, 1.5), ``weight`` ~ U(0.5, 1.5), ``bias`` ~ N(0, 0.1^2);
    - Encoding: codewords = K random descriptors of its input plus noise, and
      ``scale_k = -U(0.5, 1.5) / std(||x_i - d_k||^2)``, so that the logits
      ``scale_k ||x_i - d_k||^2`` differ by a few units between codewords.

    The reference's own initialisation draws the convolutions and linear layers.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, low: float = 0.5, high: float = 1.5) -> Tensor:
        return torch.rand(shape, generator=generator) * (high - low) + low

    def fit_batchnorm(module: nn.Module, inputs: tuple[Tensor]) -> None:
        x = inputs[0].transpose(0, 1).flatten(1)  # (C, everything else)
        module.running_mean.copy_(x.mean(1))
        module.running_var.copy_(x.var(1) * uniform(module.running_var.shape))
        module.weight.copy_(uniform(module.weight.shape))
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
        module.num_batches_tracked.fill_(1000)

    def fit_encoding(module: nn.Module, inputs: tuple[Tensor]) -> None:
        X = inputs[0].flatten(2).transpose(1, 2).flatten(0, 1)  # (B * N, D)
        picks = torch.randint(len(X), (module.codewords.shape[0],), generator=generator)
        noise = torch.randn(module.codewords.shape, generator=generator) * X.std(0)
        module.codewords.copy_(X[picks] + 0.5 * noise)
        distances = torch.cdist(X, module.codewords).square()  # (B * N, K)
        module.scale.copy_(-uniform(module.scale.shape) / distances.std())

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            hooks.append(module.register_forward_pre_hook(fit_batchnorm))
        elif hasattr(module, "codewords") and hasattr(module, "scale"):
            hooks.append(module.register_forward_pre_hook(fit_encoding))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 80, generator=generator))
    for hook in hooks:
        hook.remove()
    return model


def differences(ours: Tensor, reference: Tensor) -> tuple[float, float]:
    """(max absolute difference, that divided by the reference's largest magnitude)."""
    assert ours.shape == reference.shape
    largest = (ours - reference).abs().max().item()
    return largest, largest / reference.abs().max().item()


def assert_close(name: str, ours: Tensor, reference: Tensor) -> None:
    absolute, relative = differences(ours, reference)
    print(f"{name}: max abs diff {absolute:.3g}, relative {relative:.3g}")
    assert relative < RTOL, f"{name} differs from the reference by {relative:.3g} (relative) > {RTOL}"


def test_encoding_stand_in_is_the_encoding_layer_with_smoothing_minus_scale():
    """The reference's Encoding, on the stand-in kernels, is e_k = sum_i a_ik (x_i - d_k), s = -scale."""
    encoding = pytorch_encoding.import_encoding()
    layer = encoding.nn.Encoding(D=16, K=8)
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        assert_close("Encoding", encoding_direct(x, layer.codewords, -layer.scale), layer(x))


@pytest.mark.parametrize(
    "dataset, options",
    [("ade20k", {}), ("pcontext", {}), ("ade20k", {"aux": False, "se_loss": False})],
    ids=["ade20k-plain", "pcontext-lateral", "ade20k-no-aux-no-se"],
)
def test_encnet_resnet50s_equals_reference(dataset, options, tmp_path):
    reference = randomize(pytorch_encoding.build_encnet(dataset, "resnet50s", **options), seed=1)
    path = tmp_path / f"encnet_resnet50s_{dataset}.pth"
    torch.save(reference.state_dict(), path)
    ours = from_checkpoint(path, num_classes=reference.nclass)
    assert ours.publisher == "PyTorch-Encoding"

    x = torch.randn(2, 3, 97, 129, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = list(reference(x))
        got = ours(x)
    names = ["out", *(["se"] if reference.se_loss else []), *(["aux"] if reference.aux else [])]
    assert sorted(got) == sorted(names)
    for name, tensor in zip(names, expected):
        assert_close(f"{dataset} {options or 'aux+se'} {name}", got[name], tensor)

    if reference.se_loss:  # the comparison sees a 1% error in the smoothing factors
        state = reference.state_dict()
        state["head.encmodule.encoding.3.scale"] = state["head.encmodule.encoding.3.scale"] * 1.01
        with torch.no_grad():
            wrong = from_checkpoint(state)(x)["se"]
        assert differences(wrong, expected[1])[1] > 10 * RTOL


def test_fcn_resnet50s_equals_reference(tmp_path):
    """The model zoo's ``fcn_resnet50s_ade`` (FCNHead + auxiliary FCNHead; tuple ``(out, aux)``)."""
    reference = randomize(pytorch_encoding.build_zoo_model("fcn_resnet50s_ade"), seed=5)
    path = tmp_path / "fcn_resnet50s_ade.pth"
    torch.save(reference.state_dict(), path)
    ours = from_checkpoint(path, num_classes=150)

    x = torch.randn(2, 3, 97, 129, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out, aux = reference(x)
        got = ours(x)
    assert sorted(got) == ["aux", "out"]
    assert_close("fcn ade20k out", got["out"], out)
    assert_close("fcn ade20k aux", got["aux"], aux)


def test_resnet50s_imagenet_file_loads_as_the_reference_backbone(tmp_path):
    """A backbone file of the model zoo (the ImageNet classifier, with ``fc``) gives the reference's stages.

    The reference's segmentation models load that file with ``strict=False``
    into its dilated ``resnet50s``; encnet's ``dilated_resnet("resnet50s", weights=file)``
    must return the same ``layer2`` / ``layer3`` / ``layer4`` outputs.
    """
    encoding = pytorch_encoding.import_encoding()
    classifier = randomize(pytorch_encoding.build_zoo_model("resnet50s"), seed=3)
    path = tmp_path / "resnet50s.pth"
    torch.save(classifier.state_dict(), path)
    dilated = encoding.models.backbone.resnet50s(pretrained=False, dilated=True)
    dilated.load_state_dict(classifier.state_dict())
    base = encoding.models.sseg.BaseNet(1, "resnet50s", aux=False, se_loss=False, norm_layer=nn.BatchNorm2d)
    base.pretrained = dilated.eval()
    ours = dilated_resnet("resnet50s", weights=path).eval()

    x = torch.randn(1, 3, 97, 129, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, c2, c3, c4 = base.base_forward(x)
        got = ours(x)
    for name, tensor in (("c2", c2), ("c3", c3), ("c4", c4)):
        assert_close(f"resnet50s {name}", got[name], tensor)
