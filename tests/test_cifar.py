import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encnet.cifar.models import EncodingGate, cifar_encnet, cifar_resnet, cifar_se_resnet
from encnet.nn import Encoding, EncodingDrop


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "builder, kwargs, paper_millions",
    [
        (cifar_resnet, {}, 2.7),
        (cifar_se_resnet, {}, 2.8),
        (cifar_encnet, {}, 3.5),
        (cifar_encnet, {"num_codes": 32, "width": 128}, 16.8),
    ],
)
def test_parameter_count_within_5_percent_of_the_paper(builder, kwargs, paper_millions):
    millions = _count(builder(**kwargs)) / 1e6
    assert abs(millions / paper_millions - 1) < 0.05, f"{millions:.2f}M vs {paper_millions}M in the paper"


@pytest.mark.parametrize("builder", [cifar_resnet, cifar_se_resnet, cifar_encnet])
def test_fourteen_layers(builder):
    """13 3x3 convs (stem + 6 blocks x 2) and the linear classifier."""
    model = builder()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 13
    assert model.classifier.in_features == 256 and model.classifier.out_features == 10


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "builder, kwargs",
    [(cifar_resnet, {}), (cifar_se_resnet, {}), (cifar_encnet, {}), (cifar_encnet, {"dropout_encoding": True})],
)
def test_logits_shape(builder, kwargs, training):
    model = builder(width=16, **kwargs).train(training)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_encnet_gates_every_block_with_an_encoding_layer():
    model = cifar_encnet(num_codes=8, width=16)
    gates = [m for m in model.modules() if isinstance(m, EncodingGate)]
    assert len(gates) == 6
    assert [(g.encoding.channels, g.encoding.num_codes) for g in gates] == [(4, 8)] * 2 + [(8, 8)] * 2 + [(16, 8)] * 2


def test_gradients_reach_codewords_and_smoothing():
    torch.manual_seed(0)
    model = cifar_encnet(num_codes=4, width=16).train()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    for gate in (m for m in model.modules() if isinstance(m, EncodingGate)):
        assert type(gate.encoding) is Encoding
        for param in (gate.encoding.codewords, gate.encoding.smoothing):
            assert param.grad is not None and param.grad.abs().sum() > 0


def test_dropout_encoding_redraws_smoothing_in_training_only():
    torch.manual_seed(0)
    model = cifar_encnet(num_codes=4, width=16, dropout_encoding=True)
    encodings = [m.encoding for m in model.modules() if isinstance(m, EncodingGate)]
    assert all(type(e) is EncodingDrop for e in encodings)
    assert not any("smoothing" in name for name, _ in model.named_parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()
        first, second = model(x), model(x)
        model.eval()
        fixed_first, fixed_second = model(x), model(x)
    assert not torch.allclose(first, second)  # smoothing re-drawn at every forward
    torch.testing.assert_close(fixed_first, fixed_second, rtol=0, atol=0)


def test_learned_encoding_is_deterministic_in_training():
    """The control for the test above: without dropout_encoding, two training forwards agree."""
    torch.manual_seed(0)
    model = cifar_encnet(num_codes=4, width=16).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_bad_width_and_codes_are_explained():
    with pytest.raises(ValueError, match="width must be a positive multiple of 4"):
        cifar_resnet(width=30)
    with pytest.raises(ValueError, match="num_codes must be a positive int"):
        cifar_encnet(num_codes=0)
