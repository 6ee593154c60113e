"""`--compile`: training and validation through torch.compile land where eager PyTorch does (slow: compiles once)."""

from __future__ import annotations

import dataclasses

import torch

from encnet import engine


def test_a_compiled_run_follows_the_eager_one(tiny_config):
    # dropout off: compiled code draws its masks from another random stream than eager PyTorch
    config = dataclasses.replace(tiny_config, epochs=1, channels_last=False, dropout=0.0)
    eager = engine.train(config, progress=False)
    compiled = engine.train(dataclasses.replace(config, compile=True), progress=False)
    # Inductor fuses and reorders float operations: the same maths, rounded differently.
    torch.testing.assert_close(torch.tensor(compiled["losses"]), torch.tensor(eager["losses"]), rtol=1e-3, atol=1e-4)
    assert abs(compiled["metrics"]["pixAcc"] - eager["metrics"]["pixAcc"]) < 1e-3
    state = compiled["model"].state_dict()
    assert not any(key.startswith("_orig_mod") for key in state)  # the saved model is the plain module
    for key, value in eager["model"].state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=1e-3, atol=1e-4)


def test_encnet_compiles_into_one_graph_without_breaks():
    """What README says: the Encoding Layer's autograd Function is traced, nothing falls back to Python."""
    from encnet.models import build_model

    model = build_model("encnet", "small", num_classes=17).train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
