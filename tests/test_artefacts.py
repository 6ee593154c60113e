"""notebooks/artefacts.py: its recipe is the one of the committed artefacts, and it rebuilds them."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from encnet.checkpoint import load_checkpoint
from encnet.config import TrainConfig
from encnet.models import load_trained

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def artefacts():
    spec = importlib.util.spec_from_file_location("artefacts", NOTEBOOKS / "artefacts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipe_is_the_one_of_the_committed_files(artefacts):
    plan = artefacts.recipe(quick_run=False)
    for name, file in artefacts.SWEEPS.items():
        sweep = json.loads((NOTEBOOKS / "results" / file).read_text())
        assert TrainConfig.from_dict(sweep["config"]) == plan[name], f"{file}: rebuild with `make artefacts`"
        stages = plan[f"{name}_stages"]
        planned = {("fcn", 0.0, seed) for stage in stages if stage.get("with_fcn") for seed in stage["seeds"]}
        planned |= {(model, 0.0, seed) for stage in plan[f"{name}_stages"] for model in stage.get("models", {})
                    for seed in stage["seeds"]}
        planned |= {("encnet", alpha, seed) for stage in plan[f"{name}_stages"] for alpha in stage["alphas"]
                    for seed in stage["seeds"]}
        assert {(run["model"], run["se_weight"], run["seed"]) for run in sweep["runs"]} == planned, file
    for model, alpha in artefacts.MODELS.items():
        stored = TrainConfig.from_dict(load_checkpoint(NOTEBOOKS / "models" / f"{model}_synthetic.pt")["config"])
        assert stored == dataclasses.replace(plan["models"], model=model, se_weight=alpha, out=stored.out), model


def test_the_quick_rebuild_writes_every_artefact_elsewhere(artefacts, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENCNET_QUICK", "1")
    monkeypatch.setattr(sys, "argv", ["artefacts.py", "--out", str(tmp_path)])
    artefacts.main()
    plan = artefacts.recipe(quick_run=True)
    for model, alpha in artefacts.MODELS.items():
        _, config, checkpoint = load_trained(tmp_path / "models" / f"{model}_synthetic.pt")
        assert config == dataclasses.replace(plan["models"], model=model, se_weight=alpha)  # out None: no run folder
        assert (checkpoint["optimizer"], checkpoint["scheduler"], checkpoint["rng"]) == ({}, {}, [])
        assert checkpoint["iteration"] > 0 and len(checkpoint["history"]) == config.epochs
    for file in artefacts.SWEEPS.values():
        sweep = json.loads((tmp_path / "results" / file).read_text())
        runs = sorted((run["model"], run["se_weight"], run["seed"]) for run in sweep["runs"])
        expected = {"se_loss_sweep.json": [("encnet", 0.2, 0), ("fcn", 0.0, 0), ("pool", 0.0, 0)],
                    "se_loss_long.json": [("encnet", 0.2, 0), ("fcn", 0.0, 0)]}.get(file, [("encnet", 0.2, 0)])
        assert runs == expected, file
    # The shipped models are the main sweep's seed-0 runs, not trained twice: their records are the sweep's.
    main = json.loads((tmp_path / "results" / "se_loss_sweep.json").read_text())["runs"]
    for model in artefacts.MODELS:
        history = load_trained(tmp_path / "models" / f"{model}_synthetic.pt")[2]["history"]
        assert [record["mIoU"] for record in history] == next(
            [record["mIoU"] for record in run["history"]] for run in main if run["model"] == model)
    assert sorted(path.name for path in tmp_path.rglob("*")) == sorted([  # no temporary left
        "encnet_synthetic.pt", "fcn_synthetic.pt", "models", "results", *artefacts.SWEEPS.values()])
    assert "quick run" in capsys.readouterr().out
