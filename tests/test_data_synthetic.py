import numpy as np
import pytest
import torch

from encnet.data import SyntheticScenes, build_dataset
from encnet.data.synthetic import SCENES


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes("train", num_samples=64, image_size=128, seed=0)


def test_items_are_normalised_images_and_full_label_masks(scenes):
    images, masks = zip(*(scenes[i] for i in range(32)))
    images, masks = torch.stack(images), torch.stack(masks)
    assert images.dtype == torch.float32 and images.shape == (32, 3, 128, 64)  # twice as tall as wide
    assert masks.dtype == torch.int64 and masks.shape == (32, 128, 64)
    assert 0 <= masks.min() and masks.max() < scenes.num_classes  # no ignored pixels
    assert abs(images.mean().item()) < 0.5 and 0.5 < images.std().item() < 1.5
    assert scenes.num_classes == len(scenes.classes) == len(scenes.palette) == 17
    assert len(scenes) == 64


def test_same_seed_split_and_index_give_the_same_sample():
    a = SyntheticScenes("train", num_samples=8, image_size=128, seed=3)
    b = SyntheticScenes("train", num_samples=8, image_size=128, seed=3)
    for index in (0, 7):
        torch.testing.assert_close(a[index][0], b[index][0], rtol=0, atol=0)
        assert torch.equal(a[index][1], b[index][1])
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], SyntheticScenes("val", num_samples=8, image_size=128, seed=3)[0][0])
    assert not torch.equal(a[0][0], SyntheticScenes("train", num_samples=8, image_size=128, seed=4)[0][0])


def test_scene_of_names_the_scene_the_mask_shows(scenes):
    for index in range(len(scenes)):
        scene = scenes.scene_of(index)
        labels = set(scenes[index][1].unique().tolist())
        own = {0} | {scenes.classes.index(name) for name in SCENES[scene][1:]}
        assert labels <= own, (index, scene, labels)
        assert scenes.classes.index(SCENES[scene].backdrop) in labels
    assert {scenes.scene_of(i) for i in range(len(scenes))} == set(range(len(SCENES)))


def test_decode_and_label_give_each_class_its_scene_and_part_by_name():
    scene, part = SyntheticScenes.decode(torch.arange(SyntheticScenes.num_classes).reshape(1, 17))
    assert scene.shape == part.shape == (1, 17)
    named = {SyntheticScenes.classes[c]: (s, SyntheticScenes.parts[p]) for c, (s, p) in
             enumerate(zip(scene[0].tolist(), part[0].tolist()))}
    assert named["ground"] == (-1, "ground")
    for s, row in enumerate(SCENES):  # the names of SCENES, matched by name, not by position
        for part_name in SyntheticScenes.parts[1:]:
            name = getattr(row, part_name)
            assert named[name] == (s, part_name)
            assert SyntheticScenes.classes[SyntheticScenes.label(s, part_name)] == name
    ambiguous = sorted(SyntheticScenes.classes.index(name) for row in SCENES for name in (row.box, row.disc))
    assert list(SyntheticScenes.ambiguous) == ambiguous and len(ambiguous) == 8
    with pytest.raises(ValueError, match=r"labels of SyntheticScenes are in \[0, 17\), got values from 0 to 255"):
        SyntheticScenes.decode(torch.tensor([0, 255]))
    with pytest.raises(ValueError, match="a part in"):
        SyntheticScenes.label(0, "ground")


def test_ambiguous_objects_are_pixel_identical_across_scenes_and_far_from_the_cues(scenes):
    size = scenes.image_size
    lower = int(0.15 * size) + 5  # below the backdrop and landmarks, far above the objects' region
    ambiguous = set(scenes.ambiguous)
    for index in range(8):
        renders = [scenes.render(index, scene=s) for s in range(len(SCENES))]
        for image, mask in renders[1:]:
            torch.testing.assert_close(image[:, lower:], renders[0][0][:, lower:], rtol=0, atol=0)
            assert torch.equal(mask[lower:] == 0, renders[0][1][lower:] == 0)  # same object pixels
        for s, (_, mask) in enumerate(renders):
            rows = torch.nonzero(torch.isin(mask, torch.tensor(sorted(ambiguous))))[:, 0]
            cues = torch.nonzero((mask != 0) & ~torch.isin(mask, torch.tensor(sorted(ambiguous))))[:, 0]
            assert rows.numel() > 0 and rows.min() >= int(0.7 * size)
            assert cues.max() < lower
            object_labels = set(mask[mask != 0].tolist()) & ambiguous
            assert object_labels <= {scenes.label(s, "box"), scenes.label(s, "disc")}
            scene, part = scenes.decode(mask)
            assert torch.equal(torch.isin(mask, torch.tensor(scenes.ambiguous)), part >= scenes.parts.index("box"))
            assert set(scene[mask != 0].tolist()) == {s}


def test_bad_arguments_say_what_is_expected():
    with pytest.raises(ValueError, match="splits train, val"):
        SyntheticScenes("test")
    with pytest.raises(ValueError, match="at least 128 pixels"):
        SyntheticScenes(image_size=96)
    with pytest.raises(IndexError, match="out of range"):
        SyntheticScenes(num_samples=4)[4]
    with pytest.raises(ValueError, match=r"scene must be in \[0, 4\)"):
        SyntheticScenes(num_samples=4).render(0, scene=4)


def test_build_dataset_synthetic_takes_one_set_of_options_for_both_splits():
    options = {"train_samples": 12, "val_samples": 5, "seed": 1}
    train = build_dataset("synthetic", "train", crop_size=128, base_size=128, **options)
    val = build_dataset("synthetic", "val", crop_size=128, base_size=128, **options)
    assert (len(train), len(val)) == (12, 5)
    assert train[0][0].shape == (3, 128, 64) and val.split == "val" and train.seed == 1
    assert build_dataset("synthetic", "val", val_samples=1)[0][0].shape == (3, 128, 64)  # the default size
    with pytest.raises(ValueError, match="set them equal"):
        build_dataset("synthetic", "train", crop_size=128, image_size=160)
    with pytest.raises(ValueError, match="valid datasets: synthetic, ade20k, pcontext, voc"):
        build_dataset("cityscapes", "train")


def test_palette_colours_are_distinct(scenes):
    assert len(set(scenes.palette)) == scenes.num_classes
    assert np.asarray(scenes.palette).max() <= 255
