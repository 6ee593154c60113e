"""Fetch the authors' PyTorch-Encoding source (release 1.2.1) into ``build/peers/``.

The EncNet checks against the authors' code (``tests/peers/test_reference_equality.py``,
``tests/peers/make_layouts_reference.py``) import PyTorch-Encoding's own Python
modules. This script downloads its source distribution from PyPI, checks the
file's SHA-256, and unpacks it, compiling nothing::

    python tests/peers/get_pytorch_encoding.py          # -> build/peers/torch-encoding-1.2.1/
    python tests/peers/get_pytorch_encoding.py --url URL_OF_A_MIRROR_COPY

Why not ``pip download torch-encoding==1.2.1``: pip prepares an sdist's metadata
by running its ``setup.py``, which stamps today's date into the version
(``1.2.1b<date>``), so pip rejects the file it just downloaded. Why not ``pip
install``: the package JIT-compiles C++/CUDA ops at import. The unpacked tree is
read by ``tests/peers/pytorch_encoding.py``, which supplies stand-ins for those ops.

Release 1.2.1 (tag ``v1.2.1`` of zhanghang1989/PyTorch-Encoding, 2020-06-28)
holds the same Python files as that tag; its model definitions
(``encoding/models/sseg/encnet.py``, ``base.py``, ``backbone/resnet.py``,
``resnet_variants.py``, ``model_store.py``) are unchanged on the repository's
default branch since. Its model store lists the EncNet checkpoints by SHA-1
(``encnet_resnet50s_ade`` ... unchanged since release 0.5.0, 2018), and
``get_encnet(pretrained=True)`` loads them strictly into this ``EncNet``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

RELEASE = "torch-encoding-1.2.1"
URL = (
    "https://files.pythonhosted.org/packages/77/15/"
    "0eed418a66090f44f71381c1a1ace2cc9a3ea188540e4b1132de84681296/torch-encoding-1.2.1.tar.gz"
)
SHA256 = "8c87eafcf695a8bccced32059170ee880ec344591e7eab403482b4e190a36ca7"
PEERS = Path(__file__).resolve().parents[2] / "build" / "peers"


def fetch(url: str = URL, dest: Path = PEERS) -> Path:
    """Download, verify and unpack the sdist; return the unpacked ``torch-encoding-1.2.1`` folder.

    Does nothing when the folder already holds the verified release (a ``SHA256``
    stamp file records which archive it came from).
    """
    target = dest / RELEASE
    stamp = target / "SHA256"
    if stamp.is_file() and stamp.read_text().strip() == SHA256:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / f"{RELEASE}.tar.gz"
        with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as file:
            shutil.copyfileobj(response, file)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(
                f"{url} has SHA-256 {digest}, expected {SHA256} ({RELEASE}.tar.gz from PyPI); "
                "check the URL or download the file from https://pypi.org/project/torch-encoding/1.2.1/"
            )
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(Path(tmp) / RELEASE), target)
    stamp.write_text(SHA256 + "\n")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=URL, help="where to download the sdist (default: PyPI)")
    parser.add_argument("--dest", type=Path, default=PEERS, help="folder to unpack into")
    args = parser.parse_args(argv)
    print(fetch(args.url, args.dest))


if __name__ == "__main__":
    sys.exit(main())
