"""Download, verify, extract and convert the real datasets into the layouts the loaders read.

    python -m encnet.data.prepare ade20k   --root data/
    python -m encnet.data.prepare pcontext --root data/
    python -m encnet.data.prepare voc      --root data/

For each file of the dataset (:data:`ARCHIVES`): if ``<root>/downloads/<file>``
is not there, download it (without internet: put it there by hand, and run the
command again); check its SHA-1 against the published one; extract it into
``<root>``, unless the folder it holds is already there. PASCAL-Context then has
its JSON annotations converted to PNG masks (:func:`convert_pcontext`). The
layouts, sizes and checksums are listed in ``data/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from . import ade20k, pcontext, voc


class Archive(NamedTuple):
    """One published file: where to get it, its SHA-1, and what it extracts to (None: not an archive)."""

    url: str
    sha1: str
    extracts_to: str | None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# SHA-1 sums as published by the reference implementation's preparation scripts (PyTorch-Encoding).
ARCHIVES: dict[str, list[Archive]] = {
    "ade20k": [Archive(ade20k.URL, "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7", "ADEChallengeData2016")],
    "pcontext": [
        Archive(pcontext.IMAGES_URL, "bf9985e9f2b064752bf6bd654d89f017c76c395a", "VOCdevkit/VOC2010"),
        Archive(pcontext.ANNOTATIONS_URL, "169325d9f7e9047537fedca7b04de4dddf10b881", None),
    ],
    "voc": [
        Archive(voc.VOC_URL, "4e443f8a2eca6b1dac8a6c57641b67dd40621a49", "VOCdevkit/VOC2012"),
        Archive(voc.SBD_URL, "7129e0a480c2d6afb02b517bb18ac54283bfaa35", "benchmark_RELEASE"),
    ],
}


def sha1sum(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(archive: Archive, path: Path) -> None:
    """Download ``archive`` to ``path`` (through a ``.part`` file, so a broken download leaves nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    print(f"downloading {archive.url} -> {path}")
    try:
        with urllib.request.urlopen(archive.url) as response, open(partial, "wb") as file:
            shutil.copyfileobj(response, file, length=1 << 20)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download {archive.url}: {error}. Without internet access, fetch the file on "
            f"another machine, copy it to {path} and run this command again"
        ) from error
    partial.rename(path)


def verify(path: Path, sha1: str) -> None:
    """Raise ValueError if the SHA-1 of ``path`` is not ``sha1``."""
    actual = sha1sum(path)
    if actual != sha1:
        raise ValueError(
            f"checksum mismatch for {path}: SHA-1 {actual}, expected {sha1}. The file is incomplete or "
            "not the published one: delete it and run the command again to download it afresh"
        )


def extract(path: Path, destination: Path) -> None:
    """Extract a .zip, .tar or .tgz archive into ``destination``, refusing members that would land outside."""
    destination = destination.resolve()

    def checked(name: str) -> str:
        if not (destination / name).resolve().is_relative_to(destination):
            raise ValueError(f"the archive {path} holds {name!r}, which would extract outside {destination}")
        return name

    print(f"extracting {path} -> {destination}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                checked(name)
            archive.extractall(destination)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            members = [member for member in archive.getmembers() if checked(member.name)]
            unsafe = [member.name for member in members if not (member.isfile() or member.isdir())]
            if unsafe:
                raise ValueError(f"the archive {path} holds links or devices ({unsafe[0]!r}); refusing to extract")
            archive.extractall(destination, members=members)
    else:
        raise ValueError(f"{path} is neither a zip nor a tar archive; delete it and download it again")


def fetch(archive: Archive, root: Path) -> Path:
    """Make sure ``archive`` is downloaded to ``<root>/downloads``, verified, and extracted into ``root``."""
    path = root / "downloads" / archive.filename
    if not path.is_file():
        download(archive, path)
    verify(path, archive.sha1)
    if archive.extracts_to is not None:
        if (root / archive.extracts_to).is_dir():
            print(f"{root / archive.extracts_to} exists, not extracting {path} again")
        else:
            extract(path, root)
    return path


def decode_rle(segmentation: dict) -> np.ndarray:
    """A COCO run-length-encoded mask -> bool (H, W).

    ``counts`` alternate runs of 0s and 1s over the pixels in column-major
    order, starting with 0s. In the compressed (string) form each count is a
    variable-length integer in 5-bit groups, each character ``48 + group``,
    bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the
    sign; from the third count on, the stored value is the difference to the
    count two places earlier.
    """
    height, width = segmentation["size"]
    counts = segmentation["counts"]
    if isinstance(counts, str):
        chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
        last = (chars & 0x20) == 0  # the last character of each count
        starts = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
        lengths = np.diff(np.append(starts, chars.size))
        group = np.arange(chars.size) - np.repeat(starts, lengths)  # 5-bit group index within its count
        values = np.add.reduceat((chars & 0x1F) << (5 * group), starts)
        negative = (chars[last] & 0x10) != 0
        values[negative] -= np.int64(1) << (5 * lengths[negative])
        # count[m] = value[m] + count[m - 2] for m > 2: running sums over odd m, and over even m from 2.
        values[1::2] = np.cumsum(values[1::2])
        values[2::2] = np.cumsum(values[2::2])
        counts = values
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {counts.sum()}, not height x width = {height * width}")
    runs = np.repeat(np.arange(counts.size) % 2, counts).astype(bool)
    return runs.reshape(width, height).T


def convert_pcontext(annotations: Path, voc2010: Path) -> dict[str, int]:
    """``trainval_merged.json`` -> ``SegmentationClassContext/<id>.png`` and the split lists.

    For each image of phase "train" or "val": paint its segments, in file
    order, with their category ids (later segments win where they overlap);
    map the 59 ids of :data:`pcontext.CATEGORY_IDS` to 1..59 and every other
    id to 0 (background); save as an 8-bit PNG. Returns the number of images per split.
    """
    data = json.loads(Path(annotations).read_text())
    images = {image["image_id"]: image for image in data["images"] if image["phase"] in pcontext.SPLITS}
    segments: dict[int, list[dict]] = {image_id: [] for image_id in images}
    for segment in data["annos_segmentation"]:
        if segment["image_id"] in segments:
            segments[segment["image_id"]].append(segment)
    largest = max([category["category_id"] for category in data["categories"]] + list(pcontext.CATEGORY_IDS))
    to_label = np.zeros(largest + 1, dtype=np.uint8)
    to_label[list(pcontext.CATEGORY_IDS)] = np.arange(1, len(pcontext.CATEGORY_IDS) + 1)

    mask_dir = voc2010 / "SegmentationClassContext"
    list_dir = voc2010 / "ImageSets" / "SegmentationContext"
    mask_dir.mkdir(parents=True, exist_ok=True)
    list_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {split: [] for split in pcontext.SPLITS}
    for image_id, image in images.items():
        categories = np.zeros((image["height"], image["width"]), dtype=np.int64)
        for segment in segments[image_id]:
            categories[decode_rle(segment["segmentation"])] = segment["category_id"]
        name = Path(image["file_name"]).stem
        Image.fromarray(to_label[categories]).save(mask_dir / f"{name}.png")
        splits[image["phase"]].append(name)
    for split, names in splits.items():
        (list_dir / f"{split}.txt").write_text("".join(f"{name}\n" for name in sorted(names)))
    return {split: len(names) for split, names in splits.items()}


def prepare(dataset: str, root: Path) -> None:
    """Fetch every file of ``dataset`` into ``root`` and convert what needs it."""
    if dataset not in ARCHIVES:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(ARCHIVES)}")
    paths = [fetch(archive, root) for archive in ARCHIVES[dataset]]
    if dataset == "pcontext":
        counts = convert_pcontext(paths[1], root / "VOCdevkit" / "VOC2010")
        print(f"converted PASCAL-Context masks: {counts}")
    print(f"{dataset} is ready in {root}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m encnet.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=sorted(ARCHIVES))
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder to put the dataset in")
    args = parser.parse_args(argv)
    prepare(args.dataset, args.root)


if __name__ == "__main__":
    main()
