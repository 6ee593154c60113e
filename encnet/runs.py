"""The run folder: one training run per folder, and the rules that keep its files safe.

A run folder (``encnet train --out DIR``) holds::

    checkpoint.pt   the state after the last finished epoch (atomic, checksummed: encnet.checkpoint)
    log.jsonl       one JSON record per evaluated epoch, up to the checkpoint's iteration
    metrics.json    the last evaluation, with per-class IoU (written when the run ends)
    .lock           the lock file; it names the last process that held it (pid, host, start time)

Its rules (:class:`RunFolder`):

1. **One run at a time.** A run holds an exclusive OS lock (``flock``) on
   ``.lock`` for its whole life. The OS releases it when the process ends,
   even by ``kill -9``, so a killed run never blocks its own resume. A second
   ``train``, ``train --resume`` or ``sweep`` writing there fails at once,
   naming the holder.
2. **Nothing of an earlier run is deleted or overwritten.** A new run starts
   only in a folder that holds none of the three files above, whether or not
   the earlier run's checkpoint is still there.
3. **A resume continues its own run.** It writes to the folder its checkpoint
   is in, or to a folder holding none of a run's files (a branch of the run);
   never into another run's folder.
4. **Consistent after a kill at any moment.** Under the lock, the stray
   temporary files of an interrupted write (``.checkpoint.pt.*.tmp``) are
   removed; a resume rewrites ``log.jsonl`` from the checkpoint's history, so
   it holds exactly one record per evaluated epoch up to the checkpoint's
   iteration, wherever the previous process was killed.

Only rank 0 of a ``torchrun`` job opens the folder; see :mod:`encnet.engine`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .checkpoint import save_checkpoint, write_atomically
from .errors import UserError

RUN_FILES = ("checkpoint.pt", "log.jsonl", "metrics.json")
LOCK = ".lock"


class RunFolder:
    """The folder of one run, locked while this object is open (``with RunFolder.open(...) as folder``).

    ``RunFolder.open(path, resume=None)`` takes the lock and applies the rules
    of this module; ``RunFolder(path).lock()`` takes the lock only (a sweep's
    folder, whose JSON file has rules of its own).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock: int | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, resume: str | os.PathLike | None) -> RunFolder:
        """Lock ``path`` for a new run (``resume=None``) or for resuming the checkpoint ``resume``.

        Raises:
            UserError: another process holds the folder, ``path`` is not a
                folder, or it holds files of another run (rules 2 and 3).
        """
        folder = cls(path).lock()
        try:
            folder._check_owner(resume)
            folder.remove_temporaries(RUN_FILES)
        except BaseException:
            folder.release()
            raise
        return folder

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def lock(self) -> RunFolder:
        """Take the folder's exclusive lock (creating the folder), or fail at once naming its holder."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {str(self.path)!r} is a file, but a run writes a folder there; "
                            "pass a folder path (new or empty)")
        check_writable(self.path, "--out")
        try:
            descriptor = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(f"--out {str(self.path)!r} cannot hold the run's lock file ({error.strerror}); "
                            "pass an --out in a folder you can write") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 4096).decode(errors="replace").strip()
            os.close(descriptor)
            raise UserError(
                f"{str(self.path)!r} is in use by another run ({holder or 'a process that has just started'}); "
                "one run writes to a folder at a time: wait for it to end, or pass another --out"
            ) from None
        os.ftruncate(descriptor, 0)
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(descriptor, f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n".encode())
        self._lock = descriptor
        return self

    def release(self) -> None:
        """Release the lock (the OS does it too when the process ends)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def _check_owner(self, resume: str | os.PathLike | None) -> None:
        """Rules 2 and 3: refuse a folder that holds another run's files."""
        found = [name for name in RUN_FILES if (self.path / name).exists()]
        if not found:
            return
        if resume is not None and Path(resume).resolve().parent == self.path.resolve():
            return
        if resume is None:
            advice = (f"continue that run with --resume {self.checkpoint}" if self.checkpoint.exists()
                      else "its checkpoint.pt is gone, so it cannot be continued")
            raise UserError(
                f"--out {str(self.path)!r} holds {', '.join(found)} of an earlier run, and a new run never "
                f"deletes or overwrites them; {advice}, or pass another --out (a new or empty folder)"
            )
        raise UserError(
            f"--out {str(self.path)!r} holds another run's files ({', '.join(found)}); a resume writes to the "
            f"folder of its checkpoint ({str(Path(resume).parent)!r}) or to a new or empty folder: "
            "leave --out out, or pass a new folder"
        )

    def remove_temporaries(self, names: tuple[str, ...]) -> list[Path]:
        """Delete the temporary files ``.NAME.*.tmp`` of an interrupted atomic write of ``names``."""
        stray = [path for name in names for path in self.path.glob(f".{name}.*.tmp")]
        for path in stray:
            path.unlink(missing_ok=True)
        return stray

    def save_checkpoint(self, checkpoint: dict[str, Any]) -> Path:
        """Write ``checkpoint.pt`` (atomic, checksummed; see :func:`encnet.checkpoint.save_checkpoint`)."""
        with self._writing("checkpoint.pt"):
            save_checkpoint(self.checkpoint, checkpoint)
        return self.checkpoint

    def append_log(self, record: dict[str, Any]) -> None:
        """Add one line to ``log.jsonl`` and flush it to disk."""
        with self._writing("log.jsonl"), open(self.path / "log.jsonl", "a") as log:
            log.write(json.dumps(json_safe(record)) + "\n")
            log.flush()
            os.fsync(log.fileno())

    def rewrite_log(self, history: list[dict[str, Any]]) -> None:
        """Replace ``log.jsonl`` by ``history``, one record a line (atomic): rule 4, on resume."""
        with self._writing("log.jsonl"):
            _write_atomic(self.path / "log.jsonl",
                          "".join(json.dumps(json_safe(record)) + "\n" for record in history))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        with self._writing("metrics.json"):
            write_json(self.path / "metrics.json", metrics)

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """A failed write of ``name`` (full disk, read-only folder) as one line that says what is safe."""
        try:
            yield
        except OSError as error:
            if self.checkpoint.is_file():
                safe = (f"the last checkpoint, {str(self.checkpoint)!r}, is intact (every write is atomic): free "
                        f"space or fix the folder, then continue with `encnet train --resume {self.checkpoint}`")
            else:
                safe = "no checkpoint had been written yet: free space or fix the folder, then start the run again"
            raise UserError(f"cannot write {name} in {str(self.path)!r} ({error.strerror or error}); {safe}") from None


def check_writable(folder: str | os.PathLike, flag: str) -> None:
    """Create ``folder`` if needed and write (then delete) a file in it, so that a run fails before its work.

    Raises :class:`UserError` naming ``flag`` when the folder cannot be created or written
    (read-only, no permission, full disk).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".encnet-write-check.", dir=folder)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"{flag} {str(folder)!r} cannot be written ({error.strerror or error}); "
                        f"pass a {flag} in a folder you can write") from None


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as JSON atomically (temporary file, then rename); NaN becomes null."""
    _write_atomic(Path(path), json.dumps(json_safe(value), indent=1) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`encnet.checkpoint.write_atomically`)."""
    if path.is_dir():
        raise UserError(f"{str(path)!r} is a folder; pass a file path for the JSON output")
    write_atomically(path, lambda file: file.write(text.encode()))
