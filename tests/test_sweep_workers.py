"""A sweep's worker processes end with it: after SIGTERM (one line, exit 143), SIGINT (130) and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_failures import interruptible

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, ...
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _sweep_with_workers(tmp_path: Path) -> tuple[subprocess.Popen, set[int]]:
    """A two-job sweep of many short runs, once its two workers are training; (process, worker pids)."""
    command = [sys.executable, "-m", "encnet", "sweep", "--preset", "synthetic-quick", "--no-progress",
               "--se-weights", *[f"{alpha / 10:g}" for alpha in range(10)], "--seeds", "0", "1", "--jobs", "2",
               "--out", str(tmp_path / "sweep.json")]
    with open(tmp_path / "stderr.txt", "w") as stderr:  # a file: a worker left alive holds no pipe open
        process = subprocess.Popen(command, stderr=stderr, stdout=subprocess.DEVNULL, preexec_fn=interruptible,
                                   env={**os.environ, "OMP_NUM_THREADS": "2"})
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and process.poll() is None:
        workers = {pid for pid in _children(process.pid)
                   if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()}
        if len(workers) == 2 and (tmp_path / "sweep.json").exists():  # a run has finished: both are training
            return process, workers
        time.sleep(0.2)
    process.kill()
    _gone_within(workers, 0)
    error = (tmp_path / "stderr.txt").read_text()
    raise AssertionError(f"the sweep did not start two workers (exit {process.poll()}): {error}")


def _gone_within(pids: set[int], seconds: float) -> set[int]:
    """The pids still alive after ``seconds``; SIGKILLs them, so that a failing test leaks nothing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    left = {pid for pid in pids if _alive(pid)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.parametrize(("stop", "status", "said"), [
    (signal.SIGTERM, 143, "encnet: terminated (SIGTERM);"),
    (signal.SIGINT, 130, "encnet: interrupted;"),
], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_sweep_and_its_workers_in_one_line(tmp_path, stop, status, said):
    process, workers = _sweep_with_workers(tmp_path)
    try:
        process.send_signal(stop)
        process.wait(timeout=60)
    finally:
        process.kill()
        left = _gone_within(workers, 5)
    error = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == status, error
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith(said) and "keeps the finished runs" in error, error
    assert not left, f"sweep workers {sorted(left)} outlived the sweep"
    runs = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert 1 <= len(runs) < 20


def test_sigkill_of_the_sweep_takes_its_workers_along(tmp_path):
    process, workers = _sweep_with_workers(tmp_path)
    process.kill()  # no handler runs: the workers must notice on their own
    process.wait(timeout=60)
    left = _gone_within(workers, 5)
    assert not left, f"sweep workers {sorted(left)} outlived the sweep"
