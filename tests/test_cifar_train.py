import pickle

import numpy as np
import pytest
import torch

from encnet.cifar.data import CIFAR10_MEAN, CIFAR10_STD, SyntheticCifar10, cifar10, eval_transforms
from encnet.cifar.models import cifar_encnet, cifar_resnet
from encnet.cifar.train import evaluate_classifier, train_classifier

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions: one thread is faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The stand-in


def test_stand_in_is_a_pure_function_of_seed_split_and_index():
    first, again = SyntheticCifar10("train", num_samples=50, seed=3), SyntheticCifar10("train", num_samples=50, seed=3)
    for index in (0, 17, 49):
        image, label = first[index]
        torch.testing.assert_close(image, again[index][0], rtol=0, atol=0)
        assert label == again[index][1] == index % 10
    other_seed = SyntheticCifar10("train", num_samples=50, seed=4)
    other_split = SyntheticCifar10("test", num_samples=50, seed=3)
    assert not torch.equal(first[5][0], other_seed[5][0])
    assert not torch.equal(first[5][0], other_split[5][0])


def test_stand_in_item_format():
    dataset = SyntheticCifar10("test", num_samples=20)
    image, label = dataset[13]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.shape == () and label.item() == 3
    assert len(dataset.classes) == dataset.num_classes == 10 and len(dataset) == 20
    images = torch.stack([dataset[i][0] for i in range(20)])
    assert images.mean().abs() < 0.5 and 0.5 < images.std() < 1.5  # roughly normalised


def test_colour_statistics_alone_do_not_solve_the_stand_in():
    """Nearest class centroid on per-channel colour statistics: above chance (10%), far from solved."""

    def features(dataset):
        items = [dataset[i] for i in range(len(dataset))]
        pixels = torch.stack([image for image, _ in items]).flatten(2)  # (N, 3, 1024)
        stats = torch.cat([pixels.mean(2), pixels.std(2), pixels.quantile(0.9, dim=2), pixels.quantile(0.1, dim=2)], 1)
        return stats, torch.stack([label for _, label in items])

    train_x, train_y = features(SyntheticCifar10("train", num_samples=300))
    test_x, test_y = features(SyntheticCifar10("test", num_samples=300))
    centroids = torch.stack([train_x[train_y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(test_x, centroids).argmin(1) == test_y).float().mean().item()
    assert 0.15 < accuracy < 0.55, accuracy


def test_stand_in_rejects_bad_arguments():
    with pytest.raises(ValueError, match="splits train, test"):
        SyntheticCifar10("val")
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticCifar10("train", num_samples=0)
    with pytest.raises(IndexError, match="out of range"):
        SyntheticCifar10("train", num_samples=5)[5]


# CIFAR-10 on a fixture tree in the real python-version format


def _write_batch(path, images: np.ndarray, labels: list[int]) -> None:
    """images uint8 (N, 3, 32, 32) -> the pickled dict of the CIFAR-10 python version."""
    entry = {
        "batch_label": path.name,
        "labels": labels,
        "data": images.reshape(len(images), 3072),  # rows: red plane, green plane, blue plane
        "filenames": [f"image_{i}.png" for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(entry, protocol=2))


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        _write_batch(folder / name, rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), [1, 8])
    test_images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    test_images[2, 0], test_images[2, 1], test_images[2, 2] = 255, 0, 51  # an orange-red square
    _write_batch(folder / "test_batch", test_images, [3, 5, 9])
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": CLASSES, "num_cases_per_batch": 2, "num_vis": 3072}, protocol=2)
    )
    return tmp_path


def test_cifar10_reads_the_python_version(cifar_root):
    train, test = cifar10(cifar_root, "train"), cifar10(cifar_root, "test")
    assert len(train) == 10 and len(test) == 3
    assert train.classes == tuple(CLASSES) and train.num_classes == 10
    assert train.labels.tolist() == [1, 8] * 5 and test.labels.tolist() == [3, 5, 9]
    image, label = test[2]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert label.dtype == torch.int64 and label.item() == 9
    expected = (torch.tensor([255, 0, 51]) / 255 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    torch.testing.assert_close(image[:, 7, 11], expected)  # channel planes in RGB order, normalised


def test_cifar10_training_split_is_augmented(cifar_root):
    train = cifar10(cifar_root, "train")
    plain = eval_transforms()(train.images[0])
    torch.manual_seed(0)
    views = [train[0][0] for _ in range(8)]
    assert all(view.shape == (3, 32, 32) and view.dtype == torch.float32 for view in views)
    assert any(not torch.equal(view, plain) for view in views)  # crops and flips move the pixels
    assert cifar10(cifar_root, "train", transforms=eval_transforms())[0][0].equal(plain)


def test_cifar10_missing_root_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download=True.*python version"):
        cifar10(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="valid splits: train, test"):
        cifar10(tmp_path, "val")


# Training


def test_training_lowers_the_loss():
    train_set = SyntheticCifar10("train", num_samples=256)
    test_set = SyntheticCifar10("test", num_samples=128)
    torch.manual_seed(0)
    model = cifar_resnet(width=8)
    before = evaluate_classifier(model, train_set)["loss"]
    result = train_classifier(model, train_set, test_set, epochs=4, batch_size=32, lr=0.1, seed=0)
    after = evaluate_classifier(model, train_set)["loss"]
    assert after < 0.85 * before, (before, after)  # about 2.30 -> 1.63
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history[-1]["lr"] == pytest.approx(0, abs=1e-9)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result["test_error"] == history[-1]["test_error"] < 0.8  # chance: 0.9


def test_same_seed_same_run():
    """Shuffling and EncodingDrop's smoothing draws both follow the seed."""
    train_set = SyntheticCifar10("train", num_samples=64)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = cifar_encnet(num_codes=4, width=8, dropout_encoding=True)
        runs.append(train_classifier(model, train_set, train_set, epochs=2, batch_size=32, seed=1)["history"])
    assert runs[0] == runs[1]
    torch.manual_seed(0)
    other = train_classifier(cifar_encnet(num_codes=4, width=8, dropout_encoding=True), train_set, train_set,
                             epochs=2, batch_size=32, seed=2)["history"]
    assert other[0]["train_loss"] != runs[0][0]["train_loss"]


def test_train_classifier_rejects_bad_arguments():
    dataset = SyntheticCifar10("train", num_samples=16)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(cifar_resnet(width=8), dataset, dataset, epochs=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_classifier(cifar_resnet(width=8), dataset, dataset, epochs=1, batch_size=32)
