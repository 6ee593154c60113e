"""No tracked file names a path outside the repository or of one machine.

A reader's clone has neither the development machine's folders (``/work/...``,
a home directory, ``/tmp/...``) nor files beside the repository (``../shared``):
cite the paper by its arXiv id and public projects by name instead. Every
tracked file is read as bytes, the checkpoints' pickles and the notebooks'
stored outputs included.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ../shared, then absolute folders of a machine: /work/, /root/, /home/, /tmp/, /Users/, C:\Users.
MACHINE_PATH = re.compile(rb"\.\./shared|/(?:work|root|home|tmp|Users)/|[A-Za-z]:\\\\?Users")


def tracked_files() -> list[str]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files")
    return [name for name in listing.decode().split("\0") if name]


def test_no_tracked_file_names_a_path_outside_the_repository():
    found = []
    for name in tracked_files():
        path = ROOT / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        data = path.read_bytes()
        for match in MACHINE_PATH.finditer(data):
            line = data.count(b"\n", 0, match.start()) + 1
            context = data[max(match.start() - 30, 0) : match.end() + 30].decode(errors="replace")
            found.append(f"{name}:{line}: {context!r}")
    assert not found, "paths outside the repository or of one machine:\n" + "\n".join(found)


@pytest.mark.parametrize("text", [b"see ../shared/REFERENCE.md", b"at /work/main/data", b"/home/me/x", b"/tmp/run",
                                  b"C:\\Users\\me", b"/Users/me/data"])
def test_the_pattern_catches_each_kind_of_path(text):
    assert MACHINE_PATH.search(text)


@pytest.mark.parametrize("text", [b"data/cifar-10-batches-py", b"arXiv:1803.08904", b"#!/usr/bin/env bash",
                                  b"notebooks/results/se_loss_sweep.json", b"https://github.com/zhanghang1989/PyTorch-Encoding"])
def test_the_pattern_lets_relative_paths_and_addresses_pass(text):
    assert not MACHINE_PATH.search(text)
