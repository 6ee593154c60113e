"""Write the key layouts of mmsegmentation's EncNet checkpoints to ``tests/fixtures/layouts/mmseg_*.json``.

mmsegmentation publishes EncNet as the ``state_dict`` of its ``EncoderDecoder``
(ResNetV1c + ``EncHead`` + ``FCNHead`` auxiliary head). This script builds those
models with mmsegmentation's own code and configs (``tests/peers/mmseg_cpu.py``:
plain BN for SyncBN, which has the same parameters and buffers; on the CPU; no
weights downloaded) and records every key with its shape, so that the default
test suite (``tests/test_layouts_mmseg.py``) checks the conversion against the
real layouts without mmsegmentation installed. Run it in the peers environment::

    make peers                                          # creates .venv-peers and runs this with --check
    .venv-peers/bin/python tests/peers/make_layouts_mmseg.py          # rewrite the fixtures
    .venv-peers/bin/python tests/peers/make_layouts_mmseg.py --check  # fail if they are out of date

Each fixture is ``{"publisher", "source", "kind", "num_classes", "state_dict": {key: shape}}``.

What is known about the published files, and how:

- Full EncNet checkpoints (``configs/encnet/metafile.yaml``:
  ``encnet_r50-d8_512x512_80k_ade20k_20200622_042412-44b46b04.pth`` and the R-101 / 160k ones,
  all trained with mmsegmentation v0.5 in June 2020).
  They were saved by mmcv's ``save_checkpoint``: ``{"meta": ..., "state_dict": ...}``
  (plus ``"optimizer"`` unless stripped by ``tools/publish_model.py``, which also
  appends the first 8 hex digits of the file's SHA-256 to its name). ``meta`` is
  what mmseg 0.x's ``tools/train.py`` put in ``checkpoint_config.meta``
  (``mmseg_version`` and ``config`` strings, ``CLASSES`` a tuple of strings,
  ``PALETTE`` a list of lists of ints) plus mmcv's ``mmcv_version``, ``time``
  (strings), ``epoch``, ``iter`` (ints) and the runner's own entries (``env_info``
  string, ``seed``, ...): plain types only, so ``torch.load(weights_only=True)``
  reads the file. Read from the source code; not checked on the files
  themselves (no network here). The keys are those of mmseg 1.2.2's model,
  which has the same module names as v0.5's (``backbone.stem.*``,
  ``decode_head.bottleneck/enc_module/se_layer/conv_seg``, ``auxiliary_head.convs.0/conv_seg``);
  SyncBN's buffers are BN's.
- Backbone-only ImageNet files (``open-mmlab://resnet50_v1c`` = ``pretrain/third_party/resnet50_v1c-2cccc1ad.pth``,
  ``resnet101_v1c-e67eebb6.pth``, from mmcv's ``model_zoo/open_mmlab.json``).
  Third-party code that reads these files indexes ``checkpoint["state_dict"]["stem.0.weight"]``
  and ``checkpoint["state_dict"]["layer1.0.bn1.weight"]``: tensors under
  ``"state_dict"``, keys without a ``backbone.`` prefix, mmseg's ResNetV1c names
  (``stem.0..7``, ``layerN.i.convK/bnK/downsample.0/1``), which is also what mmengine's
  ``Pretrained`` init needs to load them into ``ResNetV1c``. Whether they also
  hold an ImageNet classifier ``fc.weight`` (1000 x 2048) / ``fc.bias`` is not
  pinned by anything found (mmengine loads them non-strictly); the fixtures record
  the backbone's keys and the test also tries them with ``fc.*`` added.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mmseg_cpu
from layout_json import dump

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "layouts"

R50 = "encnet/encnet_r50-d8_4xb4-80k_ade20k-512x512.py"
R101 = "encnet/encnet_r101-d8_4xb4-80k_ade20k-512x512.py"

SEGMENTATION = {
    # fixture name: (config, EncHead overrides, what it is)
    "mmseg_encnet_r50_ade20k": (R50, {}, "EncNet R-50-D8 ADE20K (as published)"),
    "mmseg_encnet_r101_ade20k": (R101, {}, "EncNet R-101-D8 ADE20K (as published)"),
    "mmseg_encnet_r50_lateral": (
        R50, {"add_lateral": True, "num_classes": 59}, "EncNet R-50-D8, add_lateral=True, 59 classes"),
    "mmseg_encnet_r50_no_se": (R50, {"use_se_loss": False}, "EncNet R-50-D8 ADE20K, use_se_loss=False"),
}
BACKBONES = {
    "mmseg_resnet50_v1c": (50, "open-mmlab://resnet50_v1c (pretrain/third_party/resnet50_v1c-2cccc1ad.pth)"),
    "mmseg_resnet101_v1c": (101, "open-mmlab://resnet101_v1c (pretrain/third_party/resnet101_v1c-e67eebb6.pth)"),
}


def segmentation_layout(config: str, overrides: dict, title: str) -> dict:
    model = mmseg_cpu.build_encnet(config, **overrides)
    settings = ", ".join(f"{key}={value!r}" for key, value in overrides.items())
    return {
        "publisher": "mmsegmentation",
        "source": f"{mmseg_cpu.versions()}: {title}; configs/{config}"
                  f"{' with ' + settings if settings else ''}, norm_cfg BN; EncoderDecoder.state_dict()",
        "kind": "segmentation",
        "num_classes": model.decode_head.num_classes,
        "state_dict": {key: list(value.shape) for key, value in model.state_dict().items()},
    }


def backbone_layout(depth: int, title: str) -> dict:
    backbone = mmseg_cpu.build_resnet_v1c(depth)
    return {
        "publisher": "mmsegmentation",
        "source": f"{mmseg_cpu.versions()}: {title}; ResNetV1c(depth={depth}) of "
                  "configs/_base_/models/encnet_r50-d8.py, norm_cfg BN; state_dict() "
                  "(the published file holds it under 'state_dict')",
        "kind": "backbone",
        "num_classes": None,
        "state_dict": {key: list(value.shape) for key, value in backbone.state_dict().items()},
    }


def fixtures() -> dict[str, dict]:
    layouts = {name: segmentation_layout(*entry) for name, entry in SEGMENTATION.items()}
    layouts.update({name: backbone_layout(*entry) for name, entry in BACKBONES.items()})
    return layouts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed fixtures instead of writing them; exit 1 if any differs")
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, fixture in fixtures().items():
        path, text = FIXTURES / f"{name}.json", dump(fixture)
        if args.check:
            if not path.is_file() or json.loads(path.read_text())["state_dict"] != fixture["state_dict"]:
                stale.append(path.name)
            continue
        path.write_text(text)
        print(f"{path.name}: {len(fixture['state_dict'])} keys, {fixture['num_classes']} classes, {len(text)} bytes")
    if stale:
        print(f"out of date with mmsegmentation's models: {', '.join(stale)}; "
              "rerun tests/peers/make_layouts_mmseg.py without --check", file=sys.stderr)
        return 1
    if args.check:
        print(f"the {len(SEGMENTATION) + len(BACKBONES)} mmsegmentation layouts match the fixtures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
