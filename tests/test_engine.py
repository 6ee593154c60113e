"""The training engine: recipe, determinism, resumption, the NaN guard, safe checkpoints, 2 ranks."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from encnet import engine
from encnet.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_model_state
from encnet.config import preset
from encnet.data.wrappers import KeyedAugmentation, whole_images
from encnet.errors import UserError
from encnet.evaluation import evaluate
from encnet.inference import Protocol, predict, sliding_window
from encnet.models import build_model, load_trained

ITERATIONS_PER_EPOCH = 8 // 4  # tiny_config (conftest.py): 8 training images, 4 per batch


class Interrupted(Exception):
    """Stands for a crash (a killed job) in the middle of training."""


def _sabotage(monkeypatch, *, after: int, action: str) -> None:
    """From the ``after``-th training sample on, crash (``"crash"``) or return NaN images (``"nan"``)."""
    build = engine.build_dataset

    class Sabotaged(torch.utils.data.Dataset):
        def __init__(self, dataset):
            self.dataset, self.loaded = dataset, 0
            self.num_classes, self.classes = dataset.num_classes, dataset.classes

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, index):
            self.loaded += 1
            image, mask = self.dataset[index]
            if self.loaded > after:
                if action == "crash":
                    raise Interrupted
                image = torch.full_like(image, float("nan"))
            return image, mask

    def sabotaged_build(name, split, **options):
        dataset = build(name, split, **options)
        return Sabotaged(dataset) if split == "train" else dataset

    monkeypatch.setattr(engine, "build_dataset", sabotaged_build)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_config):
    """One tiny_config run written to a folder, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("finished")
    return out, engine.train(dataclasses.replace(tiny_config, out=str(out)), progress=False)


def test_train_writes_checkpoint_log_and_metrics(finished, tiny_config):
    out, result = finished
    assert len(result["losses"]) == 2 * ITERATIONS_PER_EPOCH
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]
    assert set(log[0]["loss_parts"]) == {"out", "aux", "se"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["pixAcc"] <= 1 and 0 <= metrics["mIoU"] <= 1
    assert len(metrics["IoU"]) == len(metrics["classes"]) == 17
    assert metrics["pixAcc"] == result["metrics"]["pixAcc"]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["iteration"] == 2 * ITERATIONS_PER_EPOCH
    assert checkpoint["losses"].tolist() == result["losses"]
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    # The recipe: lr scaled by batch / 16, head at 10x, poly schedule per iteration.
    base_lr = tiny_config.lr * tiny_config.batch_size / 16
    expected = base_lr * (1 - ITERATIONS_PER_EPOCH / (2 * ITERATIONS_PER_EPOCH)) ** 0.9
    assert log[0]["lr"] == pytest.approx(expected)
    assert checkpoint["optimizer"]["param_groups"][1]["initial_lr"] == pytest.approx(10 * base_lr)
    model, config, _ = load_trained(out / "checkpoint.pt")
    assert config == dataclasses.replace(tiny_config, out=str(out))
    val_set = whole_images("synthetic", "val", root=None, options=tiny_config.dataset_options)
    again = evaluate(model, val_set, Protocol(crop_size=tiny_config.crop_size), batch_size=4)
    assert again["mIoU"] == pytest.approx(metrics["mIoU"])


def test_resume_repeats_the_uninterrupted_run(finished, tmp_path, monkeypatch, tiny_config):
    _, whole = finished
    _sabotage(monkeypatch, after=(ITERATIONS_PER_EPOCH + 1) * tiny_config.batch_size, action="crash")  # mid-epoch 2
    with pytest.raises(Interrupted):
        engine.train(dataclasses.replace(tiny_config, out=str(tmp_path)), progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == ITERATIONS_PER_EPOCH
    resumed = engine.train(
        dataclasses.replace(tiny_config, out=str(tmp_path), resume=str(tmp_path / "checkpoint.pt")), progress=False
    )
    assert resumed["losses"] == whole["losses"]  # exactly: the same images, augmentation and dropout masks
    for name in ("pixAcc", "mIoU", "IoU"):
        torch.testing.assert_close(torch.tensor(resumed["metrics"][name]), torch.tensor(whole["metrics"][name]),
                                   rtol=0, atol=0, equal_nan=True)
    for name, tensor in whole["model"].state_dict().items():
        assert torch.equal(tensor, resumed["model"].state_dict()[name]), name
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_another_recipe_or_model(finished, tiny_config):
    path = str(finished[0] / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"model 'encnet' \(this run: 'fcn'\)"):
        engine.train(dataclasses.replace(tiny_config, model="fcn", resume=path), progress=False)
    with pytest.raises(CheckpointError, match=r"lr=0\.01 \(this run: 0\.02\)"):
        engine.train(dataclasses.replace(tiny_config, lr=0.02, resume=path), progress=False)
    model = build_model("encnet", "small", num_classes=17, lateral=True)
    with pytest.raises(CheckpointError, match=r"missing \[.head\.fusion"):
        load_model_state(model, load_checkpoint(path)["model"])


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, tiny_config):
    _sabotage(monkeypatch, after=ITERATIONS_PER_EPOCH * tiny_config.batch_size, action="nan")
    stopped = f"iteration {ITERATIONS_PER_EPOCH + 1} of {2 * ITERATIONS_PER_EPOCH} \\(epoch 2\\)"
    with pytest.raises(FloatingPointError, match=stopped):
        engine.train(dataclasses.replace(tiny_config, out=str(tmp_path)), progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == ITERATIONS_PER_EPOCH
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["model"].values() if tensor.is_floating_point())


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_pickled_code_is_refused_and_not_run(tmp_path, tiny_config):
    marker, path = tmp_path / "pwned", tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "model": {}, "config": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused.*Nothing of the file was run"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        engine.train(dataclasses.replace(tiny_config, resume=str(path)), progress=False)
    assert not marker.exists()


def test_files_that_are_not_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an encnet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_torchrun_two_ranks_with_half_batches_equal_one_process_on_the_whole_batch(tmp_path):
    # Dropout draws its masks per rank, so it cannot match one process's: switched off here.
    config = dataclasses.replace(preset("synthetic-quick"), epochs=1, dropout=0.0)
    single = engine.train(config, progress=False)
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", "-m", "encnet", "train",
               "--preset", "synthetic-quick", "--epochs", "1", "--dropout", "0", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pixAcc") == 1  # only rank 0 prints
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "checkpoint.pt", "log.jsonl", "metrics.json"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1  # only rank 0 writes
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert len(checkpoint["rng"]) == 2  # one random state per rank
    # Equal up to float32 rounding: sums split over two ranks add up in another order. The
    # gradients of the early batch norms nearly cancel, so there rounding shows most: their
    # updates differ by up to 2% (the median tensor's by 1e-4). Without SyncBatchNorm (each rank
    # normalising its half batch alone) the losses differ by up to 2% and this test fails.
    torch.testing.assert_close(checkpoint["losses"], torch.tensor(single["losses"], dtype=torch.float64),
                               rtol=1e-4, atol=0)
    torch.manual_seed(config.seed)
    initial = config.build_model(17).state_dict()
    for name, tensor in single["model"].state_dict().items():
        if tensor.is_floating_point():
            update = (tensor - initial[name]).norm()
            assert (checkpoint["model"][name] - tensor).norm() <= 0.05 * update + 1e-7, name
        else:
            assert torch.equal(checkpoint["model"][name], tensor), name


def test_batch_size_must_split_over_ranks_and_fit_the_data(monkeypatch, tiny_config):
    with pytest.raises(UserError, match="fewer than one batch of 64"):
        engine.train(dataclasses.replace(tiny_config, batch_size=64), progress=False)
    # As rank 0 of 2 processes: the check comes before any collective, so no process group is needed.
    monkeypatch.setattr(engine, "setup_process", lambda device: (0, 2, torch.device("cpu")))
    with pytest.raises(UserError, match=r"batch_size 3 is the global batch and must split evenly over the 2 "
                                        r"processes; pass a multiple of 2, e\.g\. --batch-size 2"):
        engine.train(dataclasses.replace(tiny_config, batch_size=3), progress=False)


def test_keyed_augmentation_depends_only_on_the_key():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, index):
            return torch.rand(3) + index

    keyed = KeyedAugmentation(Noisy(), seed=0)
    first = [keyed[(0, i)] for i in range(10)]
    state = torch.get_rng_state()
    reverse = [keyed[(0, i)] for i in reversed(range(10))][::-1]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert all(torch.equal(a, b) for a, b in zip(first, reverse))
    assert not torch.equal(keyed[(1, 0)], first[0])  # another epoch, another draw
    assert not torch.equal(KeyedAugmentation(Noisy(), seed=1)[(0, 0)], first[0])


def test_runs_with_random_augmentation_do_not_depend_on_the_number_of_workers(tmp_path):
    from PIL import Image

    # A two-image ADE20K: random scaling, cropping and flipping are drawn for every sample.
    generator, root = np.random.default_rng(0), tmp_path / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for index in range(2):
            image = generator.integers(0, 256, (70, 90, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{prefix}_{index:08d}.jpg")
            mask = generator.integers(0, 151, (70, 90), dtype=np.uint8)
            Image.fromarray(mask).save(root / "annotations" / split / f"{prefix}_{index:08d}.png")
    config = dataclasses.replace(preset("ade20k-encnet-r50"), backbone="small", weights_backbone=None,
                                 data_root=str(tmp_path), crop_size=48, base_size=64, batch_size=2, epochs=1)
    in_process = engine.train(dataclasses.replace(config, workers=0), progress=False)
    in_workers = engine.train(dataclasses.replace(config, workers=2), progress=False)
    assert in_process["losses"] == in_workers["losses"]


def test_param_groups_put_the_backbone_at_lr_and_the_head_at_10x():
    model = build_model("encnet", "small", num_classes=5)
    backbone, head = engine.param_groups(model, 0.1, 10.0)
    assert backbone["lr"] == 0.1 and head["lr"] == 1.0
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert any(p is model.head.enc_module.encoding.codewords for p in head["params"])
    assert len(backbone["params"]) + len(head["params"]) == len(list(model.parameters()))


class _PixelwiseModel(nn.Module):
    """A 1x1 conv: every output pixel depends on its input pixel only, like a network far from the borders."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_sliding_window_and_flip_agree_with_one_pass_for_a_pixelwise_model():
    torch.manual_seed(0)
    model, images = _PixelwiseModel(), torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        whole = model(images)["out"]
        for edge in ("shift", "pad"):
            windows = sliding_window(lambda x: model(x)["out"], images, crop_size=20, stride=13, edge=edge)
            torch.testing.assert_close(windows, whole)
        probabilities = predict(model, images, Protocol(crop_size=20, flip=True))
    torch.testing.assert_close(probabilities, whole.softmax(1))
    multi = predict(model, images, Protocol(crop_size=32).multi_scale((0.5, 1.0, 1.5)))
    assert multi.shape == (2, 4, 50, 70)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 50, 70))
    with pytest.raises(ValueError, match="positive factors"):
        Protocol(crop_size=20, scales=(0.0,))
