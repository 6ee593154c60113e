"""No tracked file names a path outside the repository or of one machine.

A reader's clone has neither the folders of the machine the project was
written on (its work folder, a home directory, the temporary folder) nor the
files beside the repository (a sibling "shared" folder): cite the paper by its
arXiv id and public projects by name instead. Every tracked file is read as
bytes, the checkpoints' pickles and the notebooks' stored outputs included.
The samples below are spelt in two pieces, so that this file passes its own test.
"""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A sibling "shared" folder, then absolute folders of one machine (work, root's and users' homes,
# the temporary folder, macOS and Windows homes).
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


# Each sample path is joined from its parts here, so that this file holds none of them.
@pytest.mark.parametrize("parts", [("see ..", "shared", "notes.md"), ("at ", "work", "main", "data"),
                                   ("", "home", "me", "x"), ("", "tmp", "run"), ("", "root", ".cache"),
                                   ("", "Users", "me", "data")])
def test_the_pattern_catches_each_kind_of_path(parts):
    assert MACHINE_PATH.search("/".join(parts).encode())


def test_the_pattern_catches_a_windows_home():
    assert MACHINE_PATH.search("\\".join(("C:", "Users", "me")).encode())


@pytest.mark.parametrize("text", [b"data/cifar-10-batches-py", b"arXiv:1803.08904", b"#!/usr/bin/env bash",
                                  b"notebooks/results/se_loss_sweep.json", b"https://github.com/zhanghang1989/PyTorch-Encoding"])
def test_the_pattern_lets_relative_paths_and_addresses_pass(text):
    assert not MACHINE_PATH.search(text)


def test_no_function_of_the_package_is_longer_than_60_lines():
    """A function a reader can hold in their head: none in encnet/ spans more than 60 lines."""
    long = []
    for path in sorted((ROOT / "encnet").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - start + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over 60 lines: {long}"
