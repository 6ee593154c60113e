"""The real loaders on tiny fixture trees in the real layouts (8x8 images, built here)."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from encnet.data import ADE20K, PascalContext, PascalVOC, build_dataset, voc_colormap
from encnet.errors import UserError


def write_image(path: Path, seed: int, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette:  # VOC stores masks as palette PNGs
        image = image.convert("P")
        image.putpalette([c for colour in voc_colormap(256) for c in colour])
    image.save(path)


def label_grid(top_left: int, top_right: int) -> np.ndarray:
    """An 8x8 mask: left half ``top_left``, right half ``top_right``."""
    mask = np.empty((8, 8), dtype=np.int64)
    mask[:, :4], mask[:, 4:] = top_left, top_right
    return mask


# ---------------------------------------------------------------- ADE20K


def make_ade(root: Path) -> Path:
    base = root / "ADEChallengeData2016"
    for split, folder, count in (("train", "training", 3), ("val", "validation", 2)):
        for i in range(count):
            name = f"ADE_{split}_{i + 1:08d}"
            write_image(base / "images" / folder / f"{name}.jpg", seed=i)
            write_mask(base / "annotations" / folder / f"{name}.png", label_grid(0, 1 + 74 * i))
    return base


def test_ade20k_counts_and_label_shift(tmp_path):
    make_ade(tmp_path)
    train, val = ADE20K(tmp_path, "train"), ADE20K(tmp_path, "val")
    assert (len(train), len(val)) == (3, 2)
    assert train.num_classes == len(train.classes) == len(train.palette) == 150
    image, mask = train[2]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(label_grid(255, 148)))  # 0 -> 255, 149 -> 148
    assert torch.equal(train[0][1], torch.from_numpy(label_grid(255, 0)))  # 1 -> 0


def test_ade20k_applies_transforms_jointly(tmp_path):
    make_ade(tmp_path)
    calls = []

    def transforms(image, mask):
        calls.append((type(image), type(mask)))
        return image.flip(-1), mask.flip(-1)

    image, mask = ADE20K(tmp_path, "val", transforms=transforms)[1]
    assert calls == [(tv_tensors.Image, tv_tensors.Mask)]
    assert torch.equal(mask, torch.from_numpy(label_grid(74, 255)))  # stored 75 -> 74, flipped


def test_ade20k_missing_root_names_the_layout_and_the_source(tmp_path):
    with pytest.raises(UserError, match=r"ADEChallengeData2016/images/\{training,validation\}") as error:
        ADE20K(tmp_path / "nowhere", "train")
    assert "python -m encnet.data.prepare ade20k" in str(error.value)
    assert "ADEChallengeData2016.zip" in str(error.value)
    with pytest.raises(ValueError, match="splits train, val"):
        ADE20K(tmp_path, "test")


def test_ade20k_malformed_trees_and_files_are_named(tmp_path):
    base = make_ade(tmp_path)
    (base / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(UserError, match="1 of the 3 images .* ADE_train_00000002.png"):
        ADE20K(tmp_path, "train")
    corrupt = base / "images" / "validation" / "ADE_val_00000001.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match="ADE_val_00000001.jpg"):
        ADE20K(tmp_path, "val")[0]
    write_mask(base / "annotations" / "validation" / "ADE_val_00000002.png", label_grid(0, 151))
    with pytest.raises(ValueError, match="ADE_val_00000002.png holds the value 151"):
        ADE20K(tmp_path, "val")[1]


def test_missing_files_are_called_missing_and_masks_of_another_kind_are_named(tmp_path):
    base = make_ade(tmp_path)
    (base / "images" / "validation" / "ADE_val_00000001.jpg").unlink()
    with pytest.raises(UserError, match="1 annotations of .* have no image .*ADE_val_00000001.jpg"):
        ADE20K(tmp_path, "val")
    for mode, kind in (("RGB", "a colour image"), ("I;16", "16-bit")):
        Image.new(mode, (8, 8)).save(base / "annotations" / "training" / "ADE_train_00000001.png")
        with pytest.raises(UserError, match=rf"ADE_train_00000001.png is mode {mode} \({kind}\), but a mask must"):
            ADE20K(tmp_path, "train")[0]
    voc = make_voc(tmp_path / "voc")
    (voc / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(UserError, match="the image .*2007_000001.jpg does not exist") as error:
        PascalVOC(tmp_path / "voc", "train")[0]
    assert "corrupt" not in str(error.value)


def test_image_and_mask_of_different_sizes_are_an_error(tmp_path):
    base = make_ade(tmp_path)
    write_image(base / "images" / "validation" / "ADE_val_00000001.jpg", seed=0, size=(8, 9))
    with pytest.raises(ValueError, match="one of the two files is wrong"):
        ADE20K(tmp_path, "val")[0]


# ---------------------------------------------------------------- PASCAL-Context


def make_pcontext(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2010"
    splits = {"train": ["2008_000001", "2008_000002"], "val": ["2008_000003"]}
    for split, names in splits.items():
        for i, name in enumerate(names):
            write_image(base / "JPEGImages" / f"{name}.jpg", seed=i)
            write_mask(base / "SegmentationClassContext" / f"{name}.png", label_grid(0, 59 - i))
        lists = base / "ImageSets" / "SegmentationContext"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    write_image(base / "JPEGImages" / "2008_009999.jpg", seed=9)  # VOC images outside the lists are not used
    return base


def test_pcontext_counts_and_label_shift(tmp_path):
    make_pcontext(tmp_path)
    train, val = PascalContext(tmp_path, "train"), PascalContext(tmp_path, "val")
    assert (len(train), len(val)) == (2, 1)
    assert train.num_classes == len(train.classes) == 59
    assert torch.equal(train[0][1], torch.from_numpy(label_grid(255, 58)))  # background -> 255, 59 -> 58
    assert torch.equal(train[1][1], torch.from_numpy(label_grid(255, 57)))


def test_pcontext_missing_parts_are_named(tmp_path):
    with pytest.raises(UserError, match="VOC2010/SegmentationClassContext") as error:
        PascalContext(tmp_path, "train")
    assert "python -m encnet.data.prepare pcontext" in str(error.value)
    base = make_pcontext(tmp_path)
    (base / "SegmentationClassContext" / "2008_000003.png").unlink()
    with pytest.raises(UserError, match="1 of the 1 masks .*2008_000003.png"):
        PascalContext(tmp_path, "val")


# ---------------------------------------------------------------- PASCAL VOC (+ SBD)

VOC_SPLITS = {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]}


def make_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, names in VOC_SPLITS.items():
        for i, name in enumerate(names):
            write_image(voc / "JPEGImages" / f"{name}.jpg", seed=i)
            write_mask(voc / "SegmentationClass" / f"{name}.png", label_grid(255, 1 + i), palette=True)
        (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    (lists / "trainval.txt").write_text("\n".join(VOC_SPLITS["train"] + VOC_SPLITS["val"]) + "\n")
    return voc


def make_sbd(root: Path) -> Path:
    """SBD train: one VOC train image, the VOC val image, a new one; SBD val: another new one.

    The .mat masks are stored as .npy bytes, read by the fake scipy of :func:`fake_scipy`.
    """
    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    splits = {"train": ["2007_000002", "2007_000003", "2008_000100"], "val": ["2008_000200"]}
    for split, names in splits.items():
        for name in names:
            write_image(sbd / "img" / f"{name}.jpg", seed=7)
            with open(sbd / "cls" / f"{name}.mat", "wb") as file:
                np.save(file, label_grid(0, 20).astype(np.uint8))
        (sbd / f"{split}.txt").write_text("\n".join(names) + "\n")
    return sbd


@pytest.fixture
def fake_scipy(monkeypatch):
    """A stand-in for scipy.io.loadmat with the structure SBD's files have: ["GTcls"][0]["Segmentation"][0]."""
    scipy, io = types.ModuleType("scipy"), types.ModuleType("scipy.io")
    io.loadmat = lambda path: {"GTcls": [{"Segmentation": [np.load(path)]}]}
    scipy.io = io
    monkeypatch.setitem(sys.modules, "scipy", scipy)
    monkeypatch.setitem(sys.modules, "scipy.io", io)


def test_voc_counts_and_labels(tmp_path):
    make_voc(tmp_path)
    assert [len(PascalVOC(tmp_path, split)) for split in ("train", "val", "trainval")] == [2, 1, 3]
    voc = PascalVOC(tmp_path, "train")
    assert voc.num_classes == len(voc.classes) == len(voc.palette) == 21
    image, mask = voc[1]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 8, 8)
    assert torch.equal(mask, torch.from_numpy(label_grid(255, 2)))  # palette indices, 255 kept


def test_voc_aug_adds_sbd_images_outside_voc_val(tmp_path, fake_scipy):
    make_voc(tmp_path)
    make_sbd(tmp_path)
    aug = PascalVOC(tmp_path, "train", aug=True)
    # VOC train (2) + SBD images that are neither in VOC train nor in VOC val (2008_000100, 2008_000200)
    assert len(aug) == 4
    masks = [aug[i][1] for i in range(4)]
    assert torch.equal(masks[1], torch.from_numpy(label_grid(255, 2)))  # in both: the VOC mask wins
    assert all(torch.equal(mask, torch.from_numpy(label_grid(0, 20))) for mask in masks[2:])
    with pytest.raises(ValueError, match="split='train'"):
        PascalVOC(tmp_path, "val", aug=True)


def test_voc_aug_without_scipy_says_how_to_install_it(tmp_path, monkeypatch):
    make_voc(tmp_path)
    make_sbd(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy", None)  # makes `import scipy.io` fail
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        PascalVOC(tmp_path, "train", aug=True)


def test_voc_missing_or_corrupt_files_are_named(tmp_path):
    with pytest.raises(UserError, match="VOCdevkit/VOC2012") as error:
        PascalVOC(tmp_path, "train")
    assert "VOCtrainval_11-May-2012.tar" in str(error.value)
    voc = make_voc(tmp_path)
    with pytest.raises(UserError, match="benchmark_RELEASE/dataset"):
        PascalVOC(tmp_path, "train", aug=True)
    (voc / "JPEGImages" / "2007_000003.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UserError, match="2007_000003.jpg"):
        PascalVOC(tmp_path, "val")[0]
    write_mask(voc / "SegmentationClass" / "2007_000001.png", label_grid(0, 21), palette=True)
    with pytest.raises(ValueError, match="2007_000001.png is not a VOC label image"):
        PascalVOC(tmp_path, "train")[0]


# ---------------------------------------------------------------- build_dataset


def test_build_dataset_applies_the_split_transforms(tmp_path):
    make_ade(tmp_path)
    torch.manual_seed(0)
    train = build_dataset("ade20k", "train", root=tmp_path, crop_size=6, base_size=8)
    image, mask = train[0]
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, 6, 6)
    assert type(mask) is torch.Tensor and mask.dtype == torch.int64 and mask.shape == (6, 6)
    assert set(mask.unique().tolist()) <= {0, 255}
    image, mask = build_dataset("ade20k", "val", root=tmp_path, crop_size=4)[0]
    assert image.shape == (3, 4, 4) and torch.equal(mask, torch.from_numpy(label_grid(255, 0))[2:6, 2:6])
    with pytest.raises(ValueError, match="needs root="):
        build_dataset("voc", "train", crop_size=4, base_size=8)
    with pytest.raises(ValueError, match="needs crop_size"):
        build_dataset("ade20k", "train", root=tmp_path)
