"""Every dataset of encnet.data.DATASETS keeps the contract SegmentationDataset; its options come from its signature."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from test_data_real import make_ade, make_pcontext, make_voc
from torchvision import tv_tensors

from encnet import data
from encnet.config import preset
from encnet.data import ADE20K, DATASETS, SegmentationDataset, build_dataset, dataset_options
from encnet.data.transforms import IGNORE_INDEX
from encnet.errors import UserError

# How to lay out a tiny tree of each real dataset (the fixture builders of test_data_real).
TREES = {"ade20k": make_ade, "pcontext": make_pcontext, "voc": make_voc}


def raw_instance(name: str, root: Path):
    """A small instance of the class ``DATASETS[name]`` itself, without transforms."""
    if name == "synthetic":
        return DATASETS[name]("val", num_samples=3, image_size=128)
    TREES[name](root)
    return DATASETS[name](root, "val")


def built(name: str, root: Path):
    """The "val" split of ``name`` as build_dataset gives it (crops of 4 x 4 for the 8 x 8 fixture images)."""
    if name == "synthetic":
        return build_dataset(name, "val", crop_size=128, val_samples=3)
    TREES[name](root)
    return build_dataset(name, "val", root=root, crop_size=4)


def check_class_members(dataset) -> None:
    assert isinstance(dataset, SegmentationDataset)
    assert isinstance(dataset.num_classes, int) and dataset.num_classes > 1
    assert len(dataset.classes) == dataset.num_classes == len(dataset.palette)
    assert all(isinstance(name, str) and name for name in dataset.classes)
    assert len(set(dataset.classes)) == dataset.num_classes, "class names must be unique"
    for colour in dataset.palette:
        assert len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour), colour


def check_labels(mask: torch.Tensor, num_classes: int) -> None:
    labelled = mask[mask != IGNORE_INDEX]
    assert labelled.numel() > 0, "a fixture item should hold some labelled pixels"
    assert labelled.min() >= 0 and labelled.max() < num_classes


def test_every_dataset_has_a_fixture():
    assert set(DATASETS) == {"synthetic", *TREES}, "a new dataset needs a small instance in this file"


@pytest.mark.parametrize("name", list(DATASETS))
def test_the_classes_keep_the_contract(name, tmp_path):
    dataset = raw_instance(name, tmp_path)
    check_class_members(dataset)
    assert len(dataset) >= 1
    image, mask = dataset[len(dataset) - 1]
    assert mask.dtype == torch.int64 and mask.ndim == 2
    assert image.ndim == 3 and image.shape[0] == 3 and tuple(image.shape[1:]) == tuple(mask.shape)
    check_labels(mask, dataset.num_classes)
    if name == "synthetic":  # rendered at its final size, normalised, nothing ignored
        assert image.dtype == torch.float32 and image.shape == (3, 128, 64)
        assert not (mask == IGNORE_INDEX).any()
    else:  # the files as read, to be transformed
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 8, 8)
        assert isinstance(mask, tv_tensors.Mask)


@pytest.mark.parametrize("name", list(DATASETS))
def test_build_dataset_gives_normalised_images_and_int64_masks(name, tmp_path):
    dataset = built(name, tmp_path)
    check_class_members(dataset)
    image, mask = dataset[0]
    size = (128, 64) if name == "synthetic" else (4, 4)
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, *size)
    assert type(mask) is torch.Tensor and mask.dtype == torch.int64 and mask.shape == size
    check_labels(mask, dataset.num_classes)
    assert image.min() < 0 < image.max(), "normalised with the ImageNet mean and std, not in [0, 1]"


def test_the_protocol_rejects_a_dataset_without_a_palette():
    class NoPalette(torch.utils.data.Dataset):
        classes, num_classes = ("a", "b"), 2

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return torch.zeros(3, 2, 2), torch.zeros(2, 2, dtype=torch.int64)

    assert not isinstance(NoPalette(), SegmentationDataset)
    NoPalette.palette = ((0, 0, 0), (255, 255, 255))
    assert isinstance(NoPalette(), SegmentationDataset)


def test_dataset_options_are_read_from_the_signatures():
    assert {name: dataset_options(name) for name in DATASETS} == {
        "synthetic": {"train_samples": 2000, "val_samples": 500, "image_size": None, "seed": 0},
        "ade20k": {},
        "pcontext": {},
        "voc": {"aug": False},
    }
    assert list(dataset_options("synthetic")) == ["train_samples", "val_samples", "image_size", "seed"]
    with pytest.raises(ValueError, match="unknown dataset 'cityscapes'; valid datasets: synthetic, ade20k"):
        dataset_options("cityscapes")


class ADE20KByYear(ADE20K):
    """A throwaway dataset: ADE20K with one more keyword parameter, and nothing else changed."""

    def __init__(self, root, split="train", transforms=None, *, year: int = 2016) -> None:
        super().__init__(root, split, transforms)
        self.year = year


def test_a_new_keyword_parameter_is_a_dataset_option_with_no_list_to_update(tmp_path, monkeypatch):
    config = dataclasses.replace(preset("ade20k-encnet-r50"), data_root=str(tmp_path))
    with pytest.raises(UserError, match=r"\['year'\] are not options of the ade20k dataset \(its options: none\)"):
        dataclasses.replace(config, dataset_options={"year": 2017})

    monkeypatch.setitem(data.DATASETS, "ade20k", ADE20KByYear)
    assert dataset_options("ade20k") == {"year": 2016}
    assert dataclasses.replace(config, dataset_options={"year": 2017}).dataset_options == {"year": 2017}
    with pytest.raises(UserError, match=r"\['month'\] are not options of the ade20k dataset \(its options: year\)"):
        dataclasses.replace(config, dataset_options={"month": 3})
    make_ade(tmp_path)  # and build_dataset hands it on to the class
    dataset = build_dataset("ade20k", "val", root=tmp_path, crop_size=4, year=2017)
    assert type(dataset) is ADE20KByYear and dataset.year == 2017
    check_class_members(dataset)


def test_the_protocol_is_exported():
    assert {"SegmentationDataset", "dataset_options"} <= set(data.__all__)
    assert inspect.isclass(SegmentationDataset) and getattr(SegmentationDataset, "_is_runtime_protocol", False)
