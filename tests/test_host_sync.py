"""One host synchronisation per training step, and the weights' NaN check that rides along with it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from encnet import engine
from encnet.checkpoint import load_checkpoint, non_finite
from encnet.config import TrainConfig

# Tensor methods that copy a value to the host: on a GPU, each waits for the device.
READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def run(tiny_config):
    """A prepared run of the tiny config, one process, and one batch of it."""
    prepared = engine._prepare(tiny_config, 0, 1, torch.device("cpu"), None, False)
    images, masks = next(iter(torch.utils.data.DataLoader(prepared.augmented, batch_size=4,
                                                          sampler=[(0, index) for index in range(4)])))
    return prepared, images, masks


def _count_reads_and_collectives(monkeypatch, step):
    """(host reads, collectives) made while ``step()`` runs, as if under 2 processes (the collectives are counted
    and return their input unchanged: a rank that sees only itself)."""
    reads, collectives = [], []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *args, **kwargs: collectives.append(tensor.numel()))
    step()
    monkeypatch.undo()
    return reads, collectives


def test_a_training_step_reads_the_host_once(monkeypatch, run):
    """The loss, its parts and the NaN count in one collective and one read; the labelled-pixel count in another."""
    prepared, images, masks = run
    engine._train_step(prepared, images, masks)  # the first step learns the loss's part names
    reads, collectives = _count_reads_and_collectives(monkeypatch, lambda: engine._train_step(prepared, images, masks))
    assert reads == ["tolist"], reads
    assert collectives == [1, 5], collectives  # labelled pixels; loss, out, aux, se and the NaN count


def test_the_naive_step_of_before_read_the_host_three_times_or_more(monkeypatch, run):
    """What the count guards against: the loss's own label check and the separate weight check each read the host."""
    prepared, images, masks = run
    prepared.criterion.check_labels = True
    engine._train_step(prepared, images, masks)

    def step_then_check():
        engine._train_step(prepared, images, masks)
        engine._check_finite_state(prepared)

    reads, _ = _count_reads_and_collectives(monkeypatch, step_then_check)
    assert len(reads) >= 3, reads


@pytest.mark.parametrize("check_every", [1, 3])
def test_a_nan_buffer_is_caught_before_any_checkpoint_whatever_check_every(tmp_path, monkeypatch, tiny_config,
                                                                           check_every):
    """A running variance that overflows at the 3rd training pass (iteration 3 of 4, epoch 2): check_every=1 names
    it at iteration 3 (read with step 4's loss); with check_every=3 the check of iteration 3 finds it as well, and
    the epoch's last check would; the checkpoint of epoch 1 stays finite."""
    build = TrainConfig.build_model

    def overflowing(config, num_classes, **options):
        model = build(config, num_classes, **options)
        norm, calls = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)), []

        def hook(module, inputs, output):
            calls.append(module.training)
            if sum(calls) == 3:
                module.running_var = torch.full_like(module.running_var, float("inf"))

        norm.register_forward_hook(hook)
        return model

    monkeypatch.setattr(TrainConfig, "build_model", overflowing)
    config = dataclasses.replace(tiny_config, out=str(tmp_path), check_every=check_every)
    with pytest.raises(engine.Diverged, match=r"diverged at iteration 3 of 4 \(epoch 2\): 1 parameter\(s\) or "
                                              r"buffer\(s\) hold NaN or infinite values"):
        engine.train(config, progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == 2 and non_finite(checkpoint) == []


def test_with_checks_rarer_than_an_epoch_the_checkpoint_is_still_guarded(tmp_path, monkeypatch, tiny_config):
    """check_every=100 never checks within the run: the check before the epoch's checkpoint stops it."""
    build = TrainConfig.build_model

    def overflowing(config, num_classes, **options):
        model = build(config, num_classes, **options)
        norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        norm.register_forward_hook(lambda module, inputs, output: setattr(
            module, "running_var", torch.full_like(module.running_var, float("nan"))) if module.training else None)
        return model

    monkeypatch.setattr(TrainConfig, "build_model", overflowing)
    config = dataclasses.replace(tiny_config, out=str(tmp_path), check_every=100)
    with pytest.raises(engine.Diverged, match=r"diverged at iteration 2 of 4 \(epoch 1\).*there is no good "
                                              r"checkpoint yet"):
        engine.train(config, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
