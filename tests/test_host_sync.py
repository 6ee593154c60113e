"""One host synchronisation per training step, and the weights' NaN check that rides along with it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
from test_run_folder import overflow_statistics

from encnet import engine
from encnet.checkpoint import load_checkpoint, non_finite

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


def test_a_nan_buffer_found_by_a_check_is_named_before_the_next_update(tmp_path, monkeypatch, tiny_config):
    """A running variance that overflows at the 3rd training pass (iteration 3 of 4, epoch 2), with check_every=3:
    the check after iteration 3 finds it, step 4's read names it; the checkpoint of epoch 1 stays finite.
    (check_every=1 is tests/test_run_folder.py's case.)"""
    overflow_statistics(monkeypatch, at_pass=3)
    config = dataclasses.replace(tiny_config, out=str(tmp_path), check_every=3)
    with pytest.raises(engine.Diverged, match=r"diverged at iteration 3 of 4 \(epoch 2\): 1 parameter\(s\) or "
                                              r"buffer\(s\) hold NaN or infinite values"):
        engine.train(config, progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == 2 and non_finite(checkpoint) == []


def test_with_checks_rarer_than_an_epoch_the_checkpoint_is_still_guarded(tmp_path, monkeypatch, tiny_config):
    """check_every=100 never checks within the run: the check before the epoch's checkpoint stops it."""
    overflow_statistics(monkeypatch, at_pass=1, value=float("nan"))
    config = dataclasses.replace(tiny_config, out=str(tmp_path), check_every=100)
    with pytest.raises(engine.Diverged, match=r"diverged at iteration 2 of 4 \(epoch 1\).*there is no good "
                                              r"checkpoint yet"):
        engine.train(config, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
