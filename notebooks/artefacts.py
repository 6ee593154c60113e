"""Rebuild from scratch every cached artefact the notebooks read (what `make artefacts` does).

    python notebooks/artefacts.py                            # into notebooks/: over an hour on a 2-core CPU
    python notebooks/artefacts.py --out DIR                  # the same files under DIR instead
    ENCNET_QUICK=1 python notebooks/artefacts.py --out DIR   # tiny settings (a minute): checks the recipe

The artefacts, under ``notebooks/`` (or ``DIR``):

- ``models/fcn_synthetic.pt`` and ``models/encnet_synthetic.pt`` (notebooks 02
  and 05): an FCN and an EncNet with the SE-loss, trained on the synthetic
  scenes. Each is its run's checkpoint with the optimiser's momentum, the
  scheduler and the random generators emptied (only resuming the training needs
  them; they would double the file) and no run folder (``config.out`` is None):
  ``encnet.models.load_trained`` and ``encnet evaluate`` read them like any checkpoint.
- ``results/se_loss_sweep.json`` (notebook 03): the SE-loss sweep of
  ``encnet.sweep.sweep``, an FCN and an EncNet for every SE-loss weight alpha,
  for every seed.
- ``results/se_loss_long.json`` (notebook 03): the same three models of the
  ablation (FCN, EncNet, EncNet + SE-loss) trained for 3x the epochs.

How each was made is the table :data:`RECIPE` below, and only there: a preset of
``encnet.config`` and its overrides, and the sweep's alphas and seeds. Change
the table, then rebuild. Everything is trained afresh in a temporary folder
beside its target and moved into place when done, so an interrupted rebuild
leaves the previous files as they were and a finished one holds nothing of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
MODELS = ("fcn", "encnet")  # models/{model}_synthetic.pt

# The recipe of every artefact: edit here. "models" is one config for both models ("model" is
# replaced; an FCN has no SE-loss), "sweep" the base config of every run of the sweep.
RECIPE: dict[str, Any] = {
    "models": {
        "preset": "synthetic",
        "overrides": {"dataset_options": {"image_size": 128, "train_samples": 2000, "val_samples": 200},
                      "eval_every": 1, "device": "cpu", "channels_last": False},
    },
    "sweep": {
        "preset": "synthetic",
        "overrides": {},
        "alphas": [0.0, 0.1, 0.2, 0.4, 0.8, 1.6],
        "seeds": [0, 1, 2],
    },
    "long": {
        "preset": "synthetic",
        "overrides": {"epochs": 9},
        "alphas": [0.0, 0.2],
        "seeds": [0],
    },
}
SWEEPS = {"sweep": "se_loss_sweep.json", "long": "se_loss_long.json"}  # results/{file}
JOBS = 2  # runs trained side by side, one thread each (faster than one run on two threads on 2 cores)
# The same under the quick switch (ENCNET_QUICK=1): tiny runs that check the recipe, not results.
_TINY = {"epochs": 1, "dataset_options": {"image_size": 128, "train_samples": 8, "val_samples": 8}}
QUICK_RECIPE: dict[str, Any] = {
    "models": {"preset": "synthetic-quick", "overrides": {**_TINY, "device": "cpu"}},
    "sweep": {"preset": "synthetic-quick", "overrides": _TINY, "alphas": [0.2], "seeds": [0]},
    "long": {"preset": "synthetic-quick", "overrides": {**_TINY, "epochs": 2}, "alphas": [0.2], "seeds": [0]},
}


def recipe(quick_run: bool | None = None) -> dict[str, Any]:
    """:data:`RECIPE` (or :data:`QUICK_RECIPE`, by default under the quick switch) with its configs built."""
    table = QUICK_RECIPE if (quick() if quick_run is None else quick_run) else RECIPE
    built = {name: dataclasses.replace(preset(entry["preset"]), **entry["overrides"]) for name, entry in table.items()}
    for name in SWEEPS:
        built[f"{name}_alphas"], built[f"{name}_seeds"] = table[name]["alphas"], table[name]["seeds"]
    return built


def shipped_model(config: TrainConfig, model: str, path: Path) -> None:
    """Train ``model`` with ``config`` in a temporary folder and write its slimmed checkpoint to ``path``."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".artefacts-") as run:
        train(dataclasses.replace(config, model=model, out=run), progress=None)
        checkpoint = load_checkpoint(Path(run) / "checkpoint.pt")
    for written_again in ("format", "checksum"):  # save_checkpoint writes them
        checkpoint.pop(written_again)
    checkpoint["config"] = {**checkpoint["config"], "out": None}
    save_checkpoint(path, {**checkpoint, "optimizer": {}, "scheduler": {}, "rng": []})


def sweep_file(config: TrainConfig, alphas: list[float], seeds: list[int], path: Path) -> None:
    """The whole sweep into a fresh file, then moved to ``path`` (no run of an earlier file is reused)."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".artefacts-") as folder:
        fresh = Path(folder) / path.name
        sweep(config, alphas=alphas, seeds=seeds, with_fcn=True, out=fresh, progress=None, jobs=JOBS)
        os.replace(fresh, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=NOTEBOOKS,
                        help="folder of models/ and results/ (default: notebooks/, the files the notebooks read)")
    args = parser.parse_args()
    plan = recipe()
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    print(("quick run" if quick() else "full run") + f": rebuilding the artefacts into {args.out}")
    start = time.perf_counter()
    for model in MODELS:
        path = args.out / "models" / f"{model}_synthetic.pt"
        shipped_model(plan["models"], model, path)
        print(f"  {path.relative_to(args.out)}  ({time.perf_counter() - start:.0f} s)")
    for name, file in SWEEPS.items():
        path = args.out / "results" / file
        sweep_file(plan[name], plan[f"{name}_alphas"], plan[f"{name}_seeds"], path)
        print(f"  {path.relative_to(args.out)}  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
