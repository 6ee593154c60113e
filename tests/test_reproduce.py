"""What `make reproduce` rests on: runs side by side (sweep jobs), the NHWC layout, the ablation table and checks."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from encnet import ablation, engine
from encnet.config import preset
from encnet.errors import UserError
from encnet.evaluation import memory_format_of
from encnet.sweep import sweep

TINY = dataclasses.replace(preset("synthetic-quick"), epochs=1,
                           dataset_options={"image_size": 128, "train_samples": 16, "val_samples": 8})


def _without_speed(runs):
    """The sweep's records as JSON (NaN IoUs compare equal) keyed by run, without the measured speed and time."""
    timeless = [{k: v for k, v in run.items() if k != "seconds"} for run in runs]
    return {(run["model"], run["se_weight"], run["seed"]): json.dumps(
            {**run, "history": [{k: v for k, v in h.items() if k != "images_per_s"} for h in run["history"]]},
            sort_keys=True) for run in timeless}


def test_two_jobs_train_the_same_runs_as_one(monkeypatch):
    # Two 1-thread processes side by side give each run the result it has on one thread in this process.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # on any machine, jobs=2 gives each job 1 thread
    side_by_side = sweep(TINY, alphas=[0.2], seeds=[1], with_fcn=True, progress=False, jobs=2)
    monkeypatch.undo()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_by_one = sweep(TINY, alphas=[0.2], seeds=[1], with_fcn=True, progress=False, jobs=1)
    finally:
        torch.set_num_threads(before)
    assert len(side_by_side["runs"]) == 2
    assert _without_speed(side_by_side["runs"]) == _without_speed(one_by_one["runs"])


@pytest.mark.parametrize("jobs", [0, 1.5])
def test_jobs_must_be_a_positive_integer(jobs):
    with pytest.raises(UserError, match="jobs must be a positive integer"):
        sweep(TINY, alphas=[0.0], seeds=[0], progress=False, jobs=jobs)


def test_channels_last_is_the_same_computation_in_another_layout():
    # Without dropout (whose masks are drawn in memory order, so they differ between the layouts).
    nchw = engine.train(dataclasses.replace(TINY, channels_last=False, dropout=0.0), progress=False)
    nhwc = engine.train(dataclasses.replace(TINY, channels_last=True, dropout=0.0), progress=False)
    again = engine.train(dataclasses.replace(TINY, channels_last=True, dropout=0.0), progress=False)
    assert memory_format_of(nhwc["model"]) == torch.channels_last
    assert memory_format_of(nchw["model"]) == torch.contiguous_format
    assert nhwc["losses"] == again["losses"]  # same seed, same result
    assert nhwc["losses"] == pytest.approx(nchw["losses"], rel=1e-4)  # rounding apart, the same losses


def _sweep(miou):
    """A sweep file holding, for each (model, alpha) of ``miou``, one run per value (seed = position)."""
    config = preset("synthetic").to_dict()
    runs = [{"model": model, "se_weight": alpha, "seed": seed, "pixAcc": 0.9, "mIoU": value}
            for (model, alpha), values in miou.items() for seed, value in enumerate(values)]
    return {"config": config, "runs": runs}


def test_the_table_and_the_comparison_with_the_committed_spread():
    committed = _sweep({("fcn", 0.0): [0.50, 0.52, 0.54], ("encnet", 0.0): [0.60, 0.62, 0.64],
                        ("encnet", 0.2): [0.70, 0.72, 0.74]})
    recomputed = _sweep({("fcn", 0.0): [0.51, 0.52, 0.53], ("encnet", 0.0): [0.70, 0.70, 0.70],
                         ("encnet", 0.2): [0.71, 0.73, 0.75]})
    table = ablation.table(committed).splitlines()
    epochs = preset("synthetic").epochs
    assert f"SyntheticScenes (128x64, 2000 train / 500 val images, {epochs} epochs" in table[0]
    assert table[2].startswith("FCN") and "52.00 ± 2.00 (3 seeds)" in table[2] and table[2].endswith("73.4 / 41.0")
    lines = {line[:24].strip(): line for line in ablation.compare(recomputed, committed).splitlines()[1:]}
    assert lines["FCN               mIoU"].endswith("yes: 52.00 in [50.00, 54.00]")
    assert lines["EncNet            mIoU"].endswith("NO: 70.00 outside [60.00, 64.00]")
    missing = ablation.compare(_sweep({("fcn", 0.0): [0.5]}), committed)
    assert "cannot tell: no recomputed runs" in missing


def test_the_ordering_is_checked_seed_by_seed_with_a_margin_on_each_step():
    sweep = _sweep({("fcn", 0.0): [0.50, 0.50, 0.50], ("encnet", 0.0): [0.60, 0.53, 0.51],
                    ("encnet", 0.2): [0.70, 0.60, 0.70]})
    holds, first_step_short, second_step_short = ablation.ordering(sweep)
    assert holds.startswith("seed 0:") and holds.endswith("+10.00 and +10.00 points (each at least 5): holds")
    assert first_step_short.startswith("seed 1:") and first_step_short.endswith("DOES NOT HOLD")
    assert "+1.00 and +19.00" in second_step_short and second_step_short.endswith("DOES NOT HOLD")


def test_the_last_third_gain_reads_the_validation_curve():
    history = [{"epoch": epoch, "mIoU": value} for epoch, value in enumerate([0.2, 0.5, 0.6, 0.7, 0.71, 0.72], 1)]
    run = {"model": "fcn", "seed": 0, "history": history}
    assert ablation.last_third_gain(run) == pytest.approx(2.0)  # epoch 4 (= 2/3 of 6) to epoch 6
    with pytest.raises(UserError, match="eval_every=1"):
        ablation.last_third_gain({**run, "history": history[-1:]})
    iou = [0.5] * 17
    for c in (3, 4):
        iou[c] = 0.1
    assert ablation.ambiguous_iou({"IoU": iou}, (3, 4)) == pytest.approx(10.0)


def test_cost_counts_parameters_and_flops_of_the_built_model():
    config = preset("synthetic")
    fcn = ablation.cost(dataclasses.replace(config, model="fcn", se_weight=0.0), 17)
    encnet = ablation.cost(config, 17)
    assert fcn["parameters"] == sum(p.numel() for p in config.build_model(17, pretrained=False).parameters()) - (
        encnet["parameters"] - fcn["parameters"])
    assert 0 < fcn["flops"] < encnet["flops"] < 1.1 * fcn["flops"]  # the module is a small part of the cost
    # The stem alone: 7x7 conv, 3 -> 64 channels, on 64 x 32 outputs, 2 FLOPs a multiply-add.
    assert fcn["flops"] > 2 * 7 * 7 * 3 * 64 * 64 * 32


def test_a_sweep_file_that_is_not_one(tmp_path):
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a sweep file"):
        ablation.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="cannot read the sweep file"):
        ablation.load(tmp_path / "missing.json")


def test_the_context_table_sets_cost_beside_scores_for_every_method_the_sweep_holds():
    sweep = _sweep({("fcn", 0.0): [0.50, 0.52], ("pool", 0.0): [0.70, 0.74], ("encnet", 0.2): [0.80, 0.80]})
    sweep["models"] = {"pool": {}}
    for run in sweep["runs"]:
        run.update(IoU=[0.9] * 15 + [0.2, 0.4], seconds=120.0)
    header, *rows = ablation.context_table(sweep, (15, 16), 17).splitlines()
    assert header.split()[:3] == ["method", "mIoU", "%"]
    assert [row[:20].strip() for row in rows] == ["FCN", "FCN + image pooling", "EncNet + SE-loss"]  # no runs: no row
    pool = ablation.cost(dataclasses.replace(preset("synthetic"), model="pool", se_weight=0.0), 17)
    assert "72.00 ± 2.83 (2 seeds)" in rows[1] and "30.00 ± 0.00 (2 seeds)" in rows[1]
    assert f"{pool['parameters'] / 1e6:5.2f}M {pool['flops'] / 1e9:6.2f}     2.0" in rows[1]
