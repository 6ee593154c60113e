"""Notebook 03's widgets (encnet.teaching.sweep), the alpha explorer and the training panel, on a tiny sweep."""

import dataclasses
import json

import matplotlib.pyplot as plt
import pytest

from encnet.config import preset
from encnet.sweep import sweep
from encnet.teaching.sweep import (
    alpha_explorer,
    alpha_view,
    evaluations,
    plan,
    training_images,
    training_panel,
)

# 2 iterations of 8 images per run: three runs train in about a second.
TINY = dataclasses.replace(preset("synthetic-quick"), dataset_options={"image_size": 128, "train_samples": 16,
                                                                       "val_samples": 8}, epochs=1)


@pytest.fixture(scope="module")
def tiny_sweep():
    return sweep(TINY, alphas=[0.0, 0.2], seeds=[0], with_fcn=True, progress=False)


def test_alpha_explorer_redraws_figure_and_numbers_when_alpha_changes(tiny_sweep):
    explorer = alpha_explorer(tiny_sweep)
    first_figure, first_lines = explorer.output.outputs[0]["data"]["image/png"], explorer.lines
    assert explorer.alpha.options == (0.0, 0.2) and explorer.alpha.value == 0.2
    explorer.alpha.value = 0.0
    assert explorer.output.outputs[0]["data"]["image/png"] != first_figure
    assert explorer.lines != first_lines and explorer.lines[0].startswith("seed 0: pixAcc")
    assert explorer.output.outputs[1]["text"] == "\n".join(explorer.lines) + "\n"
    assert len(explorer.seconds) == 2
    plt.close("all")


def test_alpha_view_and_explorer_refuse_an_alpha_the_sweep_does_not_hold(tiny_sweep):
    with pytest.raises(ValueError, match=r"no EncNet runs at alpha=0.4; it has 0, 0.2"):
        alpha_view(tiny_sweep, 0.4)
    with pytest.raises(ValueError, match=r"alpha=0.4 is not in the sweep"):
        alpha_explorer(tiny_sweep, alpha=0.4)


def test_training_images_and_evaluations_count_what_the_engine_runs():
    config = dataclasses.replace(TINY, dataset_options={"image_size": 128, "train_samples": 20, "val_samples": 8},
                                 epochs=5, batch_size=8, eval_every=2)
    assert training_images(config) == 5 * 2 * 8  # the last incomplete batch of 4 images is dropped
    assert evaluations(config) == 3  # after epochs 2, 4 and 5


def test_plan_estimates_the_time_and_says_plainly_when_there_is_nothing_to_compare(tiny_sweep):
    estimate, same_run = plan(tiny_sweep, TINY, 0.2, 0, images_per_s=4.0, basis="a test")
    assert "16 training images; at 4 images/s (a test) about 4 s, plus 1 evaluation(s) of 8" in estimate
    assert same_run.startswith("the sweep holds this very run (alpha=0.2, seed 0")
    assert plan(tiny_sweep, TINY, 0.2, 3, images_per_s=4.0, basis="")[1].startswith(
        "compared with the sweep's runs at alpha=0.2 (seeds [0], not 3)")
    assert plan(tiny_sweep, TINY, 0.05, 0, images_per_s=4.0, basis="")[1].startswith(
        "no comparison: the sweep has no runs at alpha=0.05 (its EncNet runs have alpha 0, 0.2)")
    other = dataclasses.replace(TINY, epochs=2)
    assert plan(tiny_sweep, other, 0.2, 0, images_per_s=4.0, basis="")[1].startswith(
        "no comparison: these settings")
    with pytest.raises(ValueError, match="images_per_s must be a positive speed"):
        plan(tiny_sweep, TINY, 0.2, 0, images_per_s=0.0, basis="")


def test_training_panel_shows_the_plan_and_trains_on_click_reproducing_the_sweeps_run(tiny_sweep, capsys):
    panel = training_panel(tiny_sweep, TINY, images_per_s=4.0, basis="a test")
    assert 0.05 in panel.alpha.options and 3.2 in panel.alpha.options
    panel.alpha.value = 3.2
    assert "no comparison: the sweep has no runs at alpha=3.2" in panel.output.outputs[0]["text"]
    panel.alpha.value = 0.2
    capsys.readouterr()
    panel.button.click()
    printed = capsys.readouterr().out  # outside a kernel the output widget captures nothing: it is printed
    assert "the sweep holds this very run" in printed and "EncNet alpha=0.2 seed 0: pixAcc" in printed
    stored = next(run for run in tiny_sweep["runs"] if run["model"] == "encnet" and run["se_weight"] == 0.2)
    assert f"mIoU {100 * stored['mIoU']:.2f}%" in panel.lines[0]  # the same run, trained again: the same numbers
    assert panel.lines[1].startswith("  sweep, seed 0:") and not panel.button.disabled


def test_training_panel_redraws_its_output_with_the_printed_lines_once_trained(tiny_sweep, monkeypatch, capsys):
    from encnet.teaching import sweep as module

    panel = training_panel(tiny_sweep, TINY, images_per_s=4.0, basis="a test")

    def train_with_bars(*args, **kwargs):  # in a kernel, tqdm's bars (widgets, closed when done) go here
        print("epoch 1/1: a progress bar")
        return {}, ["EncNet alpha=0.2 seed 0: done"]

    monkeypatch.setattr(module, "train_and_compare", train_with_bars)
    capsys.readouterr()
    panel.button.click()
    before, clear, after = capsys.readouterr().out.rpartition("\x1b[2K\r")  # what clear_output prints outside a kernel
    assert clear and "a progress bar" in before and "a progress bar" not in after
    assert after.splitlines() == [*plan(tiny_sweep, TINY, 0.2, 0, images_per_s=4.0, basis="a test"),
                                  "EncNet alpha=0.2 seed 0: done"]


def test_a_sweep_trains_other_models_once_per_seed_and_keeps_them_on_resume(tmp_path):
    out = tmp_path / "sweep.json"
    first = sweep(TINY, alphas=[0.2], seeds=[0], models={"pool": {}, "aspp": {"rate": 2}}, out=out, progress=False)
    assert sorted((run["model"], run["se_weight"]) for run in first["runs"]) == [
        ("aspp", 0.0), ("encnet", 0.2), ("pool", 0.0)]
    assert first["models"] == {"pool": {}, "aspp": {"rate": 2}}
    assert all(run["seconds"] > 0 for run in first["runs"])
    again = sweep(TINY, alphas=[0.2], seeds=[0], models={"pool": {}, "aspp": {"rate": 2}}, out=out, progress=False)
    assert json.dumps(again["runs"]) == json.dumps(json.loads(out.read_text())["runs"])  # the file's runs: nothing
    assert [run["seconds"] for run in again["runs"]] == [run["seconds"] for run in first["runs"]]  # trained again
    more = sweep(TINY, alphas=[0.0], seeds=[0], out=out, progress=False)  # a later call without models
    assert more["models"] == json.loads(out.read_text())["models"] == {"pool": {}, "aspp": {"rate": 2}}
    assert more["alphas"] == [0.0, 0.2] and len(more["runs"]) == 4
