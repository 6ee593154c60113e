import math
from pathlib import Path

import matplotlib
import pytest
import torch

from encnet.data import SyntheticScenes
from encnet.inference import Protocol, predict
from encnet.models import load_trained
from encnet.teaching.scenes import ambiguous_accuracy, draw_scene, scene_picker
from encnet.viz import present_classes

matplotlib.use("Agg")
MODELS = Path(__file__).resolve().parents[1] / "notebooks" / "models"


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    return {name: load_trained(MODELS / f"{name.lower()}_synthetic.pt")[0] for name in ("FCN", "EncNet")}


def test_ambiguous_accuracy_counts_only_boxes_and_discs():
    dataset = SyntheticScenes("val", num_samples=4)
    car, boat = dataset.label(0, "box"), dataset.label(1, "box")
    mask = torch.tensor([[0, car], [car, 1]])
    assert ambiguous_accuracy(torch.tensor([[5, car], [boat, 0]]), mask, dataset) == 0.5  # ground errors ignored
    assert math.isnan(ambiguous_accuracy(mask, torch.zeros(2, 2, dtype=torch.long), dataset))


def test_draw_scene_scores_each_model_on_the_shipped_checkpoints(shipped):
    import matplotlib.pyplot as plt

    dataset = SyntheticScenes("val", num_samples=200)
    fig, accuracy = draw_scene(shipped, dataset, scene=2, layout=7)
    assert len(fig.axes) == 4 and set(accuracy) == {"FCN", "EncNet"}
    image, mask = dataset.render(7, scene=2)
    shown = [mask, *(predict(model, image[None], Protocol(crop_size=128)).argmax(1) for model in shipped.values())]
    (legend,) = fig.legends  # the classes of the ground truth and of both models' labels, no others
    assert [text.get_text() for text in legend.get_texts()] == [dataset.classes[c] for c in present_classes(*shown)]
    assert {"oven", "plate", "boat", "buoy"} <= {text.get_text() for text in legend.get_texts()}  # truth and FCN's
    assert all(0 <= a <= 1 for a in accuracy.values())
    assert accuracy["EncNet"] > accuracy["FCN"]  # the kitchen objects: the FCN calls them cars and boats
    with pytest.raises(ValueError, match="layout must be in"):
        draw_scene(shipped, dataset, scene=0, layout=200)
    plt.close("all")


def test_the_picker_redraws_when_a_control_changes(shipped):
    import matplotlib.pyplot as plt

    box = scene_picker(shipped, SyntheticScenes("val", num_samples=200), scene=0, layout=7)
    (scene_choice, layout_choice), scores = box.children[0].children, box.children[-1]
    first = scores.value
    assert first.startswith("FCN ") and "EncNet" in first
    scene_choice.value = 3  # no timing asserted here: a unit test on a shared machine is no benchmark
    after_scene = scores.value
    layout_choice.value = 11
    assert len({first, after_scene, scores.value}) == 3
    plt.close("all")
