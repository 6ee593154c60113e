"""Published EncNet checkpoints and ImageNet backbones, in the style of torchvision's weights API.

Every entry of :data:`PUBLISHED` is a file a publisher put online, with the
facts read from the publisher's own model-zoo files: its URL and hash, the
dataset (classes and palette), the backbone, the input normalisation, the
evaluation protocol and the figures the publisher reports. ::

    from encnet.models import zoo
    entry = zoo.get("encnet_resnet50s_ade")
    path = entry.fetch()                    # torch hub's cache, downloaded once
    model, entry = encnet.models.load_weights("encnet_resnet50s_ade")  # fetch + from_checkpoint

Downloads go through :func:`torch.hub.download_url_to_file` into
``<torch hub dir>/checkpoints`` (``TORCH_HOME`` moves it). Offline, the error
names the URL and the exact path to place the file at.

Hashes. mmsegmentation's file names end in the first 8 hex digits of the file's
SHA-256; PyTorch-Encoding publishes a SHA-1 of the ``.pth`` (inside a
``.zip``). :meth:`Published.fetch` checks the file against that hash every
time, wherever it came from (a download, a copy placed by hand, another
``TORCH_HOME``), so a wrong file under a published name is refused, not
loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..checkpoint import read_torch_file
from ..data import DATASETS
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from ..inference import Protocol

MMSEG_ADE20K = Protocol(fit=(2048, 512))
"""mmsegmentation's ADE20K test (``configs/_base_/datasets/ade20k.py``): fit in 2048 x 512, whole image,
logits resized to the original size; ``.multi_scale()`` (0.x ``--aug-test``, which produced the published
figures): fit in (2048 r, 512 r) for r in 0.5-1.75, + flip, softmax maps averaged."""

REFERENCE = Protocol(base_size=520, crop_size=480, edge="pad", align_corners=True, combine="exp")
"""PyTorch-Encoding's test (``experiments/segmentation/test.py``, ``MultiEvalModule``): long side
ceil(520 x scale), padded 480 windows at stride 320, exp(logits + flipped logits) averaged over windows
and summed over the scales 0.5-1.75. Its ``--model-zoo`` test uses base 520 / crop 480 for every model."""


@dataclass(frozen=True)
class Published:
    """One published file: a segmentation model (``kind="segmentation"``) or an ImageNet backbone."""

    name: str
    publisher: str
    url: str
    kind: str
    backbone: str
    dataset: str | None = None
    protocol: Protocol | None = None  # its single-scale test; .multi_scale() for the published ms figures
    sha1: str | None = None
    figures: dict[str, float] = field(default_factory=dict)
    source: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def file_name(self) -> str:
        return os.path.basename(urlparse(self.url).path)

    @property
    def path(self) -> Path:
        """Where the file lives in torch hub's cache."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name

    @property
    def classes(self) -> tuple[str, ...]:
        return DATASETS[self.dataset].classes if self.dataset else ()

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return DATASETS[self.dataset].palette if self.dataset else ()

    @property
    def published_hash(self) -> tuple[str, str]:
        """(hashlib algorithm, the published hex digest or its prefix) that the file must match.

        PyTorch-Encoding publishes the SHA-1 of the ``.pth`` its ``.zip`` holds;
        mmsegmentation's file names end in the first 8 hex digits of the file's SHA-256.
        """
        if self.sha1:
            return "sha1", self.sha1
        return "sha256", Path(self.file_name).stem.rsplit("-", 1)[-1]

    def fetch(self, *, progress: bool = True) -> Path:
        """The file in torch hub's cache, downloaded (with a progress bar) if it is not there.

        Whichever way the file came there (this download, an earlier one, a copy
        placed by hand, another ``TORCH_HOME``), it is checked against the
        published hash before it is returned; a file this call downloaded and
        found wrong is deleted, a file found there is left for the user to replace.
        """
        path = self.path
        downloaded = not path.is_file()
        if downloaded:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:  # torch.hub writes a temporary file and moves it into place when complete
                torch.hub.download_url_to_file(self.url, str(path), progress=progress)
            except (urllib.error.URLError, OSError) as error:
                raise WeightsNotCached(
                    f"the weights {self.name!r} are not in torch hub's cache and could not be downloaded from "
                    f"{self.url} ({error}). Without internet access, download that file on another machine and "
                    f"place it at {path} (TORCH_HOME moves the cache), or pass the file's path instead of the name"
                ) from None
        self._check_hash(path, downloaded=downloaded)
        return path

    def _check_hash(self, path: Path, *, downloaded: bool) -> None:
        """Raise :class:`UserError` unless ``path`` has the published hash (read in chunks, not whole)."""
        algorithm, expected = self.published_hash
        digest = hashlib.new(algorithm)
        try:
            with contextlib.ExitStack() as stack:
                stream = stack.enter_context(open(path, "rb"))
                if zipfile.is_zipfile(stream) and self.sha1:
                    archive = stack.enter_context(zipfile.ZipFile(stream))
                    if len(archive.namelist()) == 1:
                        stream = stack.enter_context(archive.open(archive.namelist()[0]))
                stream.seek(0)
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
        except (OSError, zipfile.BadZipFile) as error:
            raise UserError(f"cannot read {path} to check its hash ({error}); delete it and run "
                            f"`encnet fetch {self.name}`, or place the published file there") from None
        found = digest.hexdigest()
        if found.startswith(expected):
            return
        if downloaded:
            path.unlink()
        what = ("the download was deleted; run `encnet fetch` again" if downloaded else
                f"the file was left as it is: replace it with the published {self.file_name} ({self.url}), or "
                f"delete it and run `encnet fetch {self.name}`")
        name = algorithm.upper().replace("SHA", "SHA-")
        published = expected + ("..." if len(expected) < len(found) else "")  # mmsegmentation: a prefix
        raise UserError(f"{path} has {name} {found}, not the published {published} of {self.name!r}: it is "
                        f"corrupt, cut short or another file; {what}")


class WeightsNotCached(UserError):
    """Published weights that are neither in the cache nor downloadable (offline)."""


_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/encnet/"
_MMSEG_SOURCE = "mmsegmentation configs/encnet/metafile.yaml (figures: mIoU, single scale and ms + flip)"
_REFERENCE = "https://s3.us-west-1.wasabisys.com/encoding/models/"
_REFERENCE_SOURCE = ("PyTorch-Encoding encoding/models/model_store.py (SHA-1), "
                     "docs/source/model_zoo/segmentation.rst (pixAcc / mIoU, ms + flip)")


def _mmseg(config: str, stamp: str, backbone: str, miou: float, miou_ms: float) -> Published:
    return Published(
        name=config, publisher="mmsegmentation", url=f"{_MMSEG}{config}/{config}_{stamp}.pth",
        kind="segmentation", backbone=backbone, dataset="ade20k", protocol=MMSEG_ADE20K,
        figures={"mIoU": miou, "mIoU_ms": miou_ms}, source=_MMSEG_SOURCE,
    )


def _reference(name: str, sha1: str, kind: str, backbone: str, dataset: str | None = None,
               figures: dict[str, float] | None = None) -> Published:
    return Published(
        name=name, publisher="PyTorch-Encoding", url=f"{_REFERENCE}{name}-{sha1[:8]}.zip", kind=kind,
        backbone=backbone, dataset=dataset, protocol=REFERENCE if kind == "segmentation" else None,
        sha1=sha1, figures=figures or {}, source=_REFERENCE_SOURCE,
    )


_ENTRIES: list[Published] = [
    _reference("encnet_resnet50s_ade", "07ac287cd77e53ea583f37454e17d30ce1509a4a", "segmentation", "resnet50s",
               "ade20k", {"pixAcc_ms": 80.1, "mIoU_ms": 41.5}),
    _reference("encnet_resnet101s_ade", "3f54fa3b67bac7619cd9b3673f5c8227cf8f4718", "segmentation", "resnet101s",
               "ade20k", {"pixAcc_ms": 81.3, "mIoU_ms": 44.4}),
    _reference("encnet_resnet50s_pcontext", "4de91d5922d4d3264f678b663f874da72e82db00", "segmentation",
               "resnet50s", "pcontext", {"pixAcc_ms": 79.2, "mIoU_ms": 51.0}),
    _reference("encnet_resnet101s_pcontext", "9f27ea13d514d7010e59988341bcbd4140fcc33d", "segmentation",
               "resnet101s", "pcontext", {"pixAcc_ms": 80.7, "mIoU_ms": 54.1}),
    _mmseg("encnet_r50-d8_512x512_80k_ade20k", "20200622_042412-44b46b04", "resnet50_v1c", 39.53, 41.17),
    _mmseg("encnet_r101-d8_512x512_80k_ade20k", "20200622_101128-dd35e237", "resnet101_v1c", 42.11, 43.61),
    _mmseg("encnet_r50-d8_512x512_160k_ade20k", "20200622_101059-b2db95e0", "resnet50_v1c", 40.10, 41.71),
    _mmseg("encnet_r101-d8_512x512_160k_ade20k", "20200622_073348-7989641f", "resnet101_v1c", 42.61, 44.01),
    _reference("resnet50s", "a75c83cfc89a56a4e8ba71b14f1ec67e923787b3", "backbone", "resnet50s"),
    _reference("resnet101s", "03a0f310d6447880f1b22a83bd7d1aa7fc702c6e", "backbone", "resnet101s"),
    Published(name="resnet50_v1c", publisher="mmsegmentation",
              url="https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
              kind="backbone", backbone="resnet50_v1c", source="mmengine hub/openmmlab.json (open-mmlab://resnet50_v1c)"),
    Published(name="resnet101_v1c", publisher="mmsegmentation",
              url="https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
              kind="backbone", backbone="resnet101_v1c",
              source="mmengine hub/openmmlab.json (open-mmlab://resnet101_v1c)"),
]

PUBLISHED: dict[str, Published] = {entry.name: entry for entry in _ENTRIES}
"""Every published file encnet knows, by name."""


def get(name: str) -> Published:
    """The entry ``name``; an unknown name is an error listing the valid ones."""
    if name not in PUBLISHED:
        raise UserError(f"unknown published weights {name!r}; valid names: {', '.join(PUBLISHED)}")
    return PUBLISHED[name]


def published_backbone(backbone: str, name: Any) -> dict:
    """The state dict of the published ImageNet weights ``name`` of ``backbone`` (fetched if needed)."""
    names = [entry.name for entry in PUBLISHED.values() if entry.kind == "backbone" and entry.backbone == backbone]
    if name not in names:
        raise UserError(
            f"unknown weights {name!r} for backbone {backbone!r}; valid names: {', '.join(names) or 'none'}, "
            "or the path of a local file of this backbone"
        )
    return read_torch_file(PUBLISHED[name].fetch())
