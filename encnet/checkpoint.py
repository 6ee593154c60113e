"""Checkpoints you can trust: atomic writes, safe loads, exact resumption.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python
containers::

    {"format": "encnet-checkpoint-1",
     "config": TrainConfig.to_dict(),       # the run's settings
     "num_classes": int, "classes": [str],  # the dataset the model was built for
     "iteration": int,                      # optimiser steps taken
     "model", "optimizer", "scheduler": state dicts,
     "rng": [per-rank random states],       # see :func:`rng_state`
     "history": [evaluation records], "losses": tensor of per-iteration losses}

- **Atomic.** :func:`save_checkpoint` writes a temporary file in the same folder,
  flushes it to disk and renames it over the old one: a crash mid-write leaves
  the previous checkpoint intact, never a truncated file.
- **Safe.** :func:`load_checkpoint` uses ``torch.load(weights_only=True)``,
  which rebuilds tensors and plain containers only. A file that carries any
  other pickled object (the way arbitrary code hides in a pickle) is refused
  with :class:`CheckpointError` before any of it runs.
- **Exact.** The random states of torch (CPU and CUDA), numpy and Python are
  saved per rank, so a resumed run draws the same dropout masks as an
  uninterrupted one.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "encnet-checkpoint-1"
_REQUIRED = ("format", "config", "num_classes", "classes", "iteration", "model", "optimizer", "scheduler", "rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unsafe, unreadable, or for another model."""


def rng_state() -> dict[str, Any]:
    """This process's random states, as tensors and plain types (weights_only-safe)."""
    numpy_kind, numpy_keys, numpy_pos, has_gauss, cached_gauss = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(numpy_keys.astype(np.int64)), "pos": numpy_pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached_gauss, "kind": numpy_kind},
        "python": {"version": python_version, "internal": list(python_internal), "gauss": python_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save({"format": FORMAT, **checkpoint}, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates it private (0600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything but plain data.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file holds pickled objects other than tensors and
            plain containers (nothing of it is run), is not a readable torch file,
            or is not an encnet checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; pass the checkpoint.pt a training run wrote")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{str(path)!r} is not a readable torch checkpoint (torch.save writes a zip archive; "
            "this file is not one, or it is truncated); pass the checkpoint.pt written by `encnet train`"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        reason = " ".join(line.strip() for line in str(error).splitlines()
                          if line.strip() and not line.startswith(boilerplate))
        raise CheckpointError(
            f"refused to load {str(path)!r}: it holds pickled objects other than tensors and plain "
            f"containers, and unpickling them could run arbitrary code (torch.load with weights_only=True: "
            f"{reason}). Nothing of the file was run. Load only checkpoints written by encnet, "
            "from a source you trust."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{str(path)!r} is not a readable torch checkpoint ({error})") from None
    missing = [key for key in _REQUIRED if key not in checkpoint] if isinstance(checkpoint, dict) else list(_REQUIRED)
    if missing or checkpoint["format"] != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an encnet checkpoint (format {FORMAT!r}): missing {missing or ['format']}; "
            "pass the checkpoint.pt written by `encnet train`"
        )
    return checkpoint


def check_compatible(checkpoint: dict[str, Any], *, model: str, backbone: str, num_classes: int) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint holds this model for this class count."""
    saved = checkpoint["config"]
    wanted = {"model": model, "backbone": backbone, "num_classes": num_classes}
    found = {"model": saved["model"], "backbone": saved["backbone"], "num_classes": checkpoint["num_classes"]}
    differences = [f"{key} {found[key]!r} (this run: {wanted[key]!r})" for key in wanted if found[key] != wanted[key]]
    if differences:
        raise CheckpointError(
            f"the checkpoint was trained with {', '.join(differences)}; "
            "use a checkpoint of this model and dataset, or the settings it was trained with"
        )


def load_model_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state)`` with an error that names the mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        details = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
                   for label, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
                   if keys]
        raise CheckpointError(
            f"the checkpoint's weights do not fit this model ({'; '.join(details)}); "
            "it was saved from another architecture (model, backbone, lateral, aux, se_weight or num_codes)"
        )
    module.load_state_dict(state)
