"""Write the key layouts of PyTorch-Encoding's published models to ``tests/fixtures/layouts/``.

Each published file of the authors' model zoo is the ``state_dict()`` of the
module that ``encoding.models.get_model(name)`` builds (``get_encnet`` loads it
with a strict ``load_state_dict``; the ImageNet backbones are loaded with
``strict=False`` into the classifier ResNet). This script builds those modules
with the reference's own code (``tests/peers/pytorch_encoding.py``, on CPU, no
weights downloaded) and records every key with its shape, so that the default
test suite (``tests/test_layouts_reference.py``) checks the conversion against
the real layouts without the reference installed::

    python tests/peers/get_pytorch_encoding.py      # once: the source into build/peers/
    python tests/peers/make_layouts_reference.py    # -> tests/fixtures/layouts/reference_*.json
    python tests/peers/make_layouts_reference.py --check   # only compare with the committed files

Each fixture is ``{"publisher", "source", "kind", "num_classes", "state_dict": {key: shape}}``.
What the source says about the published files:

- ``encnet_*`` files: a plain state dict (an ``OrderedDict`` of tensors, no
  ``"state_dict"`` wrapper, no ``module.`` prefix), since ``get_encnet`` passes
  ``torch.load(file)`` straight to a strict ``load_state_dict`` of ``EncNet``:
  tensors only, which ``torch.load(weights_only=True)`` reads. Keys
  ``pretrained.*`` (the backbone without ``fc``: ``BaseNet`` sets
  ``pretrained.fc = None``), ``head.*``, ``auxlayer.*``. The model zoo
  publishes them zipped (``<name>-<sha1[:8]>.zip`` holding ``<name>-<sha1[:8]>.pth``).
- PASCAL-Context models have 59 outputs (``ContextSegmentation.NUM_CLASS = 59``;
  its labels are shifted by -1, so the background is ignored) and the lateral
  head (``get_encnet`` sets ``lateral`` for dataset names starting with "p").
- ``resnet50s`` / ``resnet101s``: the ImageNet classifier, with ``fc.weight``
  (1000 x 2048) and ``fc.bias`` (inferred: the loader is ``strict=False``, so the
  file's exact keys are not pinned by the code).
- Whether a file has ``num_batches_tracked`` counters depends on the PyTorch that
  saved it (>= 0.4.1 does); the layouts here have them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_encoding
from layout_json import dump

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "layouts"

MODELS = {
    # fixture name: (model-zoo name, kind, what the model zoo calls it)
    "reference_encnet_resnet50s_ade": ("encnet_resnet50s_ade", "segmentation", "EncNet_ResNet50s_ADE"),
    "reference_encnet_resnet101s_ade": ("encnet_resnet101s_ade", "segmentation", "EncNet_ResNet101s_ADE"),
    "reference_encnet_resnet50s_pcontext": (
        "encnet_resnet50s_pcontext", "segmentation", "EncNet_ResNet50s_PContext"),
    "reference_encnet_resnet101s_pcontext": (
        "encnet_resnet101s_pcontext", "segmentation", "EncNet_ResNet101s_PContext"),
    "reference_resnet50s": ("resnet50s", "backbone", "ResNet-50s, ImageNet"),
    "reference_resnet101s": ("resnet101s", "backbone", "ResNet-101s, ImageNet"),
}


def layout(zoo_name: str, kind: str, title: str) -> dict:
    """The fixture of one model-zoo entry, built with the reference's own builder."""
    model = pytorch_encoding.build_zoo_model(zoo_name)
    return {
        "publisher": "PyTorch-Encoding",
        "source": f"{pytorch_encoding.VERSION}: {title}, "
                  f"encoding.models.get_model({zoo_name!r}, pretrained=False).state_dict()",
        "kind": kind,
        "num_classes": model.nclass if kind == "segmentation" else None,
        "state_dict": {key: list(value.shape) for key, value in model.state_dict().items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed fixtures instead of writing them; fail if any differs")
    args = parser.parse_args(argv)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, entry in MODELS.items():
        path = FIXTURES / f"{name}.json"
        fixture = layout(*entry)
        if args.check:
            if not path.is_file() or path.read_text() != dump(fixture):
                stale.append(path.name)
            continue
        path.write_text(dump(fixture))
        print(f"{path.name}: {len(fixture['state_dict'])} keys, {fixture['num_classes']} classes")
    if stale:
        raise SystemExit(f"fixtures differ from PyTorch-Encoding's layouts: {', '.join(stale)}; "
                         "rerun `python tests/peers/make_layouts_reference.py` and review the diff")
    if args.check:
        print(f"{len(MODELS)} PyTorch-Encoding layouts match tests/fixtures/layouts/")


if __name__ == "__main__":
    main()
