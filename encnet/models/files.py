"""Reading weight files safely: ``torch.load(weights_only=True)`` with errors that say what is wrong.

Shared by the backbones (ImageNet files), :mod:`encnet.models.convert` and
:mod:`encnet.models.zoo`.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..errors import UserError


def read_file(path: str | os.PathLike, *, map_location: Any = "cpu", allow: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file.

    A zip archive holding a single ``.pth`` (how PyTorch-Encoding publishes its
    files) is read through. ``allow``: objects to let the unpickler rebuild
    besides tensors and plain containers (see :func:`torch.serialization.safe_globals`).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}; pass the path of a .pth/.pt file or a published name")
    source: Any = path
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if len(names) == 1 and names[0].endswith((".pth", ".pt")):  # a .zip holding the .pth
                source = io.BytesIO(archive.read(names[0]))
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"the object {blocked.group(1)}" if blocked else "an object other than tensors and plain containers"
        raise CheckpointError(
            f"refused to load {str(path)!r}: it pickles {what}, which torch.load(weights_only=True) does not "
            "rebuild because unpickling arbitrary objects can run code; nothing of the file was run. If you "
            "trust the file and that object is a plain type, allow it: from_checkpoint(path, allow=[<object>])"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{str(path)!r} is not a readable torch file (truncated or not saved by torch.save: "
            f"{str(error).splitlines()[0]}); download it again or pass another file"
        ) from None
