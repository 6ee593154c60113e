"""Rebuild from scratch every cached artefact the notebooks read (what `make artefacts` does).

    python notebooks/artefacts.py                            # into notebooks/: hours on a 2-core CPU
    python notebooks/artefacts.py --out DIR                  # the same files under DIR instead
    ENCNET_QUICK=1 python notebooks/artefacts.py --out DIR   # tiny settings (a minute): checks the recipe

The artefacts, under ``notebooks/`` (or ``DIR``):

- ``models/fcn_synthetic.pt`` and ``models/encnet_synthetic.pt`` (notebooks 02
  and 05): an FCN and an EncNet with the SE-loss, trained on the synthetic
  scenes with the ``synthetic`` preset, seed 0. Each is its run's checkpoint
  with the optimiser's momentum, the scheduler and the random generators emptied
  (only resuming the training needs them; they would double the file) and no
  run folder (``config.out`` is None): ``encnet.models.load_trained`` and
  ``encnet evaluate`` read them like any checkpoint.
- ``results/se_loss_sweep.json`` (notebook 03): the sweep of
  ``encnet.sweep.sweep``: the ablation (FCN, EncNet, EncNet + SE-loss) and the
  two heads that get context by receptive field (ASPP, image pooling) for every
  seed, and EncNet at more SE-loss weights alpha (seed 0). The shipped models are its
  seed-0 runs of FCN and EncNet + SE-loss (the same config and seed train the same
  run): their records are written into the sweep file and not trained twice.
- ``results/se_loss_long.json`` (notebook 03): the ablation's three models
  trained for twice the epochs.
- ``results/num_codes_{K}.json`` (notebook 02): the K sweep, EncNet + SE-loss
  with K codewords for every seed, one file per K of :data:`CODEWORDS` (K = 32
  is in the first sweep).

How each was made is the table :data:`RECIPE` below, and only there: a preset of
``encnet.config`` and its overrides, and the sweep's stages (each a call of
``sweep`` on the same file: its alphas, seeds, and whether it adds the FCN and
other models). Change the table, then rebuild. Everything is trained afresh in a
temporary folder beside its target and moved into place when done, so an
interrupted rebuild leaves the previous files as they were and a finished one
holds nothing of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from encnet.checkpoint import load_checkpoint, save_checkpoint
from encnet.config import TrainConfig, preset
from encnet.engine import train
from encnet.sweep import sweep
from encnet.teaching.notebook import quick

NOTEBOOKS = Path(__file__).resolve().parent
MODELS = {"fcn": 0.0, "encnet": 0.2}  # models/{model}_synthetic.pt, with its SE-loss weight
CONTEXT_BY_RECEPTIVE_FIELD = {"aspp": {"rate": 5}, "pool": {}}  # rate 5: 3 x 5 x 8 = 120 px, the image's height

# The recipe of every artefact: edit here. "models" is one config for both models ("model" and
# "se_weight" are replaced), a sweep's config is its preset with its overrides.
RECIPE: dict[str, Any] = {
    "models": {"preset": "synthetic", "overrides": {}},
    "sweep": {
        "preset": "synthetic",
        "overrides": {},
        "stages": [
            {"alphas": [0.0, 0.2], "seeds": [0, 1, 2], "with_fcn": True, "models": CONTEXT_BY_RECEPTIVE_FIELD},
            {"alphas": [0.1, 0.4, 0.8, 1.6], "seeds": [0]},  # the SE-loss weight curve, one seed
        ],
    },
    "long": {
        "preset": "synthetic",
        "overrides": {"epochs": 16},
        "stages": [{"alphas": [0.0, 0.2], "seeds": [0], "with_fcn": True}],
    },
}
SWEEPS = {"sweep": "se_loss_sweep.json", "long": "se_loss_long.json"}  # results/{file}
# The K sweep (notebook 02): EncNet + SE-loss with K codewords, a file per K; K = 32, the paper's, is the
# sweep's own EncNet + SE-loss runs.
CODEWORDS = [4, 8, 16, 64]
for _k in CODEWORDS:
    RECIPE[f"num_codes_{_k}"] = {"preset": "synthetic", "overrides": {"model_options": {"num_codes": _k}},
                                 "stages": [{"alphas": [0.2], "seeds": [0, 1, 2]}]}
    SWEEPS[f"num_codes_{_k}"] = f"num_codes_{_k}.json"
JOBS = 2  # runs trained side by side, one thread each (faster than one run on two threads on 2 cores)
# The same under the quick switch (ENCNET_QUICK=1): tiny runs that check the recipe, not results.
_TINY = {"epochs": 1, "dataset_options": {"image_size": 128, "train_samples": 8, "val_samples": 8}}
QUICK_RECIPE: dict[str, Any] = {
    "models": {"preset": "synthetic-quick", "overrides": _TINY},
    "sweep": {"preset": "synthetic-quick", "overrides": _TINY,
              "stages": [{"alphas": [0.2], "seeds": [0], "with_fcn": True, "models": {"pool": {}}}]},
    "long": {"preset": "synthetic-quick", "overrides": {**_TINY, "epochs": 2},
             "stages": [{"alphas": [0.2], "seeds": [0], "with_fcn": True}]},
    **{f"num_codes_{k}": {"preset": "synthetic-quick", "overrides": {**_TINY, "model_options": {"num_codes": k}},
                          "stages": [{"alphas": [0.2], "seeds": [0]}]} for k in CODEWORDS},
}


def recipe(quick_run: bool | None = None) -> dict[str, Any]:
    """:data:`RECIPE` (or :data:`QUICK_RECIPE`, by default under the quick switch) with its configs built.

    ``{"models": config, "sweep": config, "long": config, ..., "sweep_stages": [...], "long_stages": [...], ...}``
    (a config and its stages for every entry of :data:`SWEEPS`).
    """
    table = QUICK_RECIPE if (quick() if quick_run is None else quick_run) else RECIPE
    built = {name: dataclasses.replace(preset(entry["preset"]), **entry["overrides"]) for name, entry in table.items()}
    for name in SWEEPS:
        built[f"{name}_stages"] = table[name]["stages"]
    return built


def shipped_model(config: TrainConfig, model: str, path: Path) -> dict[str, Any]:
    """Train ``model`` with ``config`` in a temporary folder and write its slimmed checkpoint to ``path``.

    Returns the run's record as a sweep file holds it.
    """
    config = dataclasses.replace(config, model=model, se_weight=MODELS[model])
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".artefacts-") as run:
        start = time.perf_counter()
        result = train(dataclasses.replace(config, out=run), progress=None)
        seconds = round(time.perf_counter() - start, 1)
        checkpoint = load_checkpoint(Path(run) / "checkpoint.pt")
    for written_again in ("format", "checksum"):  # save_checkpoint writes them
        checkpoint.pop(written_again)
    checkpoint["config"] = {**checkpoint["config"], "out": None}
    save_checkpoint(path, {**checkpoint, "optimizer": {}, "scheduler": {}, "rng": []})
    return {"model": model, "se_weight": config.se_weight, "seed": config.seed, **result["metrics"],
            "history": result["history"], "seconds": seconds}


def sweep_stages(config: TrainConfig, stages: list[dict[str, Any]], path: Path, runs: list[dict[str, Any]]) -> None:
    """Every stage of a sweep into ``path``, after the ``runs`` already trained (the shipped models' runs).

    ``path`` is rewritten after each run, so that a call on the same ``path`` continues an interrupted one.
    """
    if runs and not path.exists():
        path.write_text(json.dumps({"config": dataclasses.replace(config, out=None, resume=None).to_dict(),
                                    "alphas": [], "seeds": [], "runs": runs}, indent=1) + "\n")
    for stage in stages:
        sweep(config, alphas=stage["alphas"], seeds=stage["seeds"], with_fcn=stage.get("with_fcn", False),
              models=stage.get("models"), out=path, progress=None, jobs=JOBS)


def build(out: Path, plan: dict[str, Any], start: float) -> None:
    """Every artefact of ``plan`` into ``out`` (see the module's docstring)."""
    with tempfile.TemporaryDirectory(dir=out / "results", prefix=".artefacts-") as folder:
        shipped = []
        for model in MODELS:
            path = out / "models" / f"{model}_synthetic.pt"
            shipped.append(shipped_model(plan["models"], model, path))
            print(f"  {path.relative_to(out)}  ({time.perf_counter() - start:.0f} s)")
        for name, file in SWEEPS.items():
            fresh, path = Path(folder) / file, out / "results" / file
            # The shipped models' runs belong to a sweep whose config differs from theirs in model and alpha only.
            models = plan["models"]
            same = dataclasses.replace(plan[name], model=models.model, se_weight=models.se_weight) == models
            reused = shipped if same else []
            sweep_stages(plan[name], plan[f"{name}_stages"], fresh, reused)
            shutil.move(fresh, path)
            print(f"  {path.relative_to(out)}  ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=NOTEBOOKS,
                        help="folder of models/ and results/ (default: notebooks/, the files the notebooks read)")
    args = parser.parse_args()
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    print(("quick run" if quick() else "full run") + f": rebuilding the artefacts into {args.out}")
    build(args.out, recipe(), time.perf_counter())


if __name__ == "__main__":
    main()
