"""Checkpoints you can trust: atomic writes, safe loads, checked contents, exact resumption.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python
containers::

    {"format": "encnet-checkpoint-2",
     "checksum": str,                       # see :func:`checksum`
     "config": TrainConfig.to_dict(),       # the run's settings
     "num_classes": int, "classes": [str],  # the dataset the model was built for
     "iteration": int,                      # optimiser steps taken
     "model", "optimizer", "scheduler": state dicts,
     "scaler": state dict,                  # only in runs with amp="fp16" (torch.amp.GradScaler)
     "rng": [per-rank random states],       # see :func:`rng_state`
     "history": [evaluation records], "losses": tensor of per-iteration losses}

- **Atomic.** :func:`save_checkpoint` writes a temporary file in the same folder,
  flushes it to disk and renames it over the old one: a crash mid-write leaves
  the previous checkpoint intact, never a truncated file.
- **Safe.** :func:`load_checkpoint` reads with :func:`read_torch_file`, the
  package's one reader of weight files: ``torch.load(weights_only=True)``,
  which rebuilds tensors and plain containers only. A file that carries any
  other pickled object (the way arbitrary code hides in a pickle) is refused
  with :class:`CheckpointError` before any of it runs.
- **Checked.** :func:`save_checkpoint` stores the SHA-256 of the contents
  (every tensor's bytes, dtype and shape, and every plain value, in a fixed
  order) and :func:`load_checkpoint` recomputes it: a file changed after it was
  written (a flipped bit on disk, a bad copy) is refused with an error naming
  it, where ``torch.load`` alone would return the altered weights. A checkpoint
  holding a NaN or infinite tensor is never written. Files of format
  ``encnet-checkpoint-1`` (written before checksums) are read without the check.
- **Exact.** The random states of torch (CPU and CUDA), numpy and Python are
  saved per rank, so a resumed run draws the same dropout masks as an
  uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .errors import UserError

FORMAT = "encnet-checkpoint-2"
UNCHECKED_FORMAT = "encnet-checkpoint-1"  # written before checksums: loaded without the check
_REQUIRED = ("format", "config", "num_classes", "classes", "iteration", "model", "optimizer", "scheduler", "rng")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, unsafe, unreadable, corrupted, or for another model."""


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


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every tensor and plain value in ``value``, dict keys in sorted order."""
    if isinstance(value, dict):
        yield f"{path}{{}}", len(value)
        for key in sorted(value, key=repr):
            yield from _leaves(value[key], f"{path}/{key!r}")
    elif isinstance(value, (list, tuple)):  # torch.load may return either for the other
        yield f"{path}[]", len(value)
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def checksum(checkpoint: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``checkpoint`` without its "checksum" entry: every leaf's path, then its bytes.

    A tensor contributes its dtype, shape and raw bytes (moved to the CPU); a
    plain value (int, float, str, bool, None) its ``repr``, which pickling
    preserves exactly.
    """
    digest = hashlib.sha256()
    for path, leaf in _leaves({key: value for key, value in checkpoint.items() if key != "checksum"}):
        if isinstance(leaf, torch.Tensor):
            tensor = leaf.detach().cpu().contiguous()
            digest.update(f"{path}:{tensor.dtype}{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        else:
            digest.update(f"{path}={leaf!r};".encode())
    return digest.hexdigest()


def non_finite(checkpoint: dict[str, Any]) -> list[str]:
    """Paths of the floating-point tensors in ``checkpoint`` that hold a NaN or an infinity."""
    return [path for path, leaf in _leaves(checkpoint)
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and not torch.isfinite(leaf).all()]


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` and its :func:`checksum` to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        ValueError: a tensor of ``checkpoint`` is not finite (nothing is written).
    """
    path = Path(path)
    bad = non_finite(checkpoint)
    if bad:
        raise ValueError(
            f"refused to write {str(path)!r}: {len(bad)} tensor(s) hold NaN or infinite values "
            f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); a checkpoint is only written from a finite state"
        )
    checkpoint = {"format": FORMAT, **checkpoint}
    checkpoint["checksum"] = checksum(checkpoint)
    write_atomically(path, lambda file: torch.save(checkpoint, file))


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """``write(file)`` into a temporary ``.NAME.*.tmp`` beside ``path``, flush it to disk, rename it to ``path``.

    A crash at any moment leaves either the old file or the new one, never a
    truncated one; a stray temporary file is removed by the next run of the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates it private (0600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_torch_file(path: str | os.PathLike, *, map_location: Any = "cpu", allow: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file.

    The one reader of weight files: this package's checkpoints, the publishers'
    files, ImageNet backbones. A zip archive holding a single ``.pth`` (how
    PyTorch-Encoding publishes its files) is read through. ``allow``: objects to
    let the unpickler rebuild besides tensors and plain containers (see
    :func:`torch.serialization.safe_globals`).

    Raises:
        CheckpointError: there is no file at ``path``; it pickles an object other than tensors and plain
            containers (nothing of it is run); or it is not a readable torch file (empty, truncated, other bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}; pass the path of a .pth/.pt file or a published name")
    source: Any = path
    unreadable = ("not a readable torch file (empty, truncated, or not written by torch.save{}); download or copy it "
                  "again, or pass another file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if len(names) == 1 and names[0].endswith((".pth", ".pt")):  # a .zip holding the .pth
                    source = io.BytesIO(archive.read(names[0]))
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(error))
        if blocked is None:  # bytes that are no pickle at all
            raise CheckpointError(f"{str(path)!r} is {unreadable.format('')}") from None
        raise CheckpointError(
            f"refused to load {str(path)!r}: it pickles the object {blocked.group(1)}, which "
            "torch.load(weights_only=True) does not rebuild because unpickling arbitrary objects can run code. "
            "Nothing of the file was run. Load only files from a source you trust; if you trust this one and that "
            "object is a plain type, allow it: from_checkpoint(path, allow=[<object>])"
        ) from None
    except (RuntimeError, EOFError, OSError, IndexError, zipfile.BadZipFile) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{str(path)!r} is {unreadable.format(': ' + detail)}") from None


def check_checkpoint(checkpoint: Any, source: str) -> dict[str, Any]:
    """The one rule for what a checkpoint of this package holds, for ``train``, ``evaluate`` and ``predict`` alike.

    Every key of :data:`_REQUIRED`, a known format, and (format :data:`FORMAT`)
    contents that match the checksum stored when it was written. ``source``
    names the file in the error. Returns ``checkpoint``.

    Raises:
        CheckpointError: a key is missing, the format is unknown, or the contents changed.
    """
    missing = [key for key in _REQUIRED if key not in checkpoint] if isinstance(checkpoint, dict) else list(_REQUIRED)
    if missing or checkpoint["format"] not in (FORMAT, UNCHECKED_FORMAT):
        raise CheckpointError(
            f"{source} is not an encnet checkpoint (format {FORMAT!r}): missing {missing or ['format']}; "
            "pass the checkpoint.pt written by `encnet train`"
        )
    if checkpoint["format"] == FORMAT and checkpoint.get("checksum") != checksum(checkpoint):
        raise CheckpointError(
            f"{source} is corrupted: its contents differ from the checksum stored when it was written "
            "(the file changed on disk or in a copy); use another copy of it, or an earlier checkpoint"
        )
    return checkpoint


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (with :func:`read_torch_file`), and check it.

    Raises:
        CheckpointError: :func:`read_torch_file` refuses the file, or :func:`check_checkpoint` does.
    """
    return check_checkpoint(read_torch_file(path, map_location=map_location), repr(str(path)))


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


def load_model_state(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    what: str = "the checkpoint's weights",
    target: str = "this model",
    hint: str = "it was saved from another architecture (model, backbone, lateral, aux, se_weight or num_codes)",
    counters_optional: bool = False,
) -> None:
    """``module.load_state_dict(state)``, strictly, with an error that names the mismatch.

    Every key of ``state`` must be used and every tensor of ``module`` filled, at
    its shape. With ``counters_optional`` a missing ``num_batches_tracked``
    counter (which files written by older torch versions lack) is set to 0.
    ``what``, ``target`` and ``hint`` go into the error: what was loaded, into what, and what to do.
    """
    own = module.state_dict()
    optional = {key for key in own if counters_optional and key.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})"
                      for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        details = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
                   for label, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
                   if keys]
        raise CheckpointError(f"{what} do not fit {target} ({'; '.join(details)}); {hint}")
    module.load_state_dict({**{key: torch.zeros_like(own[key]) for key in optional - set(state)}, **state})
