"""Export a segmentation model to ONNX, and run the exported file with ONNX Runtime.

::

    from encnet.export import export_onnx, load_onnx
    export_onnx(model, "encnet.onnx")             # model: any encnet segmentation model
    onnx_model = load_onnx("encnet.onnx")         # an ONNX Runtime session behind a callable
    probabilities = encnet.inference.predict(onnx_model, images, onnx_model.protocol)

or, on the command line, ``encnet export --weights NAME_OR_FILE --onnx encnet.onnx`` and
``encnet predict photo.jpg --onnx encnet.onnx --out predictions/``.

The graph. Input ``image``: float32 (B, 3, H, W), RGB scaled to [0, 1] and
normalised by the metadata's ``mean`` and ``std`` (:func:`encnet.inference.to_model_input`).
Outputs: ``logits`` (B, num_classes, H, W), the segmentation logits upsampled
to the input size, and, for a model with an SE branch (EncNet), ``se_logits``
(B, num_classes), whose sigmoid is the probability that each class is in the
image (``encnet predict`` reports the most probable). The auxiliary head's
logits, used in training only, are left out. B, H and W are dynamic axes: one
file serves every image size, the sliding windows and the multi-scale views.
The model is traced in eval mode under ``torch.no_grad()``, where the Encoding
Layer runs as plain tensor operations (:func:`encnet.nn.functional.encoding`).

The exporter is torch's default, ``torch.onnx.export(..., dynamo=True)``
(``torch.export`` + onnxscript): it keeps H and W symbolic through the backbone's
strided convolutions and the final bilinear resize to the input's size.

The metadata. ``metadata_props["encnet"]`` holds, as JSON, what ``encnet
predict`` needs besides the graph: the test protocol (:class:`encnet.inference.Protocol`
as a dict), the class names, the palette, the dataset name (or null), the
input's ``mean`` and ``std``, the output names and the weights exported.
:func:`load_onnx` reads it back.

``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional extra ``export``
(``pip install encnet[export]``), imported only when used.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .data import DATASETS
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import UserError
from .inference import Protocol, classes_and_palette

__all__ = [
    "METADATA_KEY", "OnnxModel", "export_onnx", "largest_difference", "load_onnx", "require_packages",
]

METADATA_KEY = "encnet"
"""The key of ``metadata_props`` whose value is the JSON :func:`export_onnx` writes."""

FORMAT = 1
"""Version of that JSON's layout."""


def require_packages(*modules: str) -> list[Any]:
    """Import the optional ``modules`` (default: all three), or raise a one-line :class:`UserError` saying how."""
    modules = modules or ("onnx", "onnxscript", "onnxruntime")
    try:
        return [importlib.import_module(module) for module in modules]
    except ImportError as error:
        raise UserError(f"ONNX export and inference need the packages onnx, onnxscript and onnxruntime "
                        f"({error.name or error} is missing): pip install encnet[export]") from None


class _Outputs(nn.Module):
    """The exported graph: ``image -> (logits,)`` or ``(logits, se_logits)``; the auxiliary head left out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(image)
        return (outputs["out"], outputs["se"]) if "se" in outputs else (outputs["out"],)


def _metadata(model: nn.Module, outputs: list[str], num_classes: int, protocol: Protocol | None, entry: Any,
              weights: str | None) -> dict[str, Any]:
    classes, palette = classes_and_palette(model, entry, num_classes)
    if len(classes) != num_classes:
        raise UserError(f"the model predicts {num_classes} classes but has {len(classes)} class names; "
                        "give it one name per class (model.classes)")
    dataset = entry.dataset if entry is not None else next(
        (name for name, dataset in DATASETS.items() if dataset.classes == classes), None)
    return {
        "format": FORMAT,
        "input": "image: float32 (B, 3, H, W), RGB in [0, 1] normalised by mean and std",
        "outputs": outputs,
        "num_classes": len(classes),
        "protocol": dataclasses.asdict(protocol or getattr(model, "protocol", None) or Protocol()),
        "dataset": dataset,
        "classes": list(classes),
        "palette": [list(colour) for colour in palette],
        "mean": list(entry.mean if entry is not None else IMAGENET_MEAN),
        "std": list(entry.std if entry is not None else IMAGENET_STD),
        "weights": weights,
    }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = 18,
    example_size: tuple[int, int] = (256, 320),
    protocol: Protocol | None = None,
    entry: Any = None,
    weights: str | None = None,
) -> Path:
    """Write ``model`` (an encnet segmentation model) to the ONNX file ``path``, with its metadata.

    Args:
        model: returns ``{"out", "aux"?, "se"?}``; traced in eval mode (its mode is restored after).
        path: the ``.onnx`` file to write (one file, the weights inside).
        opset: the ONNX opset (18 or newer).
        example_size: (H, W) of the example image traced; any size runs afterwards.
        protocol: the test protocol to store (default: ``model.protocol``, else the whole image).
        entry: the published entry (:mod:`encnet.models.zoo`) the weights are, for its
            classes, palette, dataset and normalisation; None for a file.
        weights: the name or file the weights came from, stored as is.

    Returns the path written. See the module's docstring for the graph and the metadata.
    """
    onnx, _ = require_packages("onnx", "onnxscript")
    if opset < 18:
        raise UserError(f"opset {opset} is too old for the exporter; pass 18 or newer")
    names = ["logits", "se_logits"]
    wrapper, training = _Outputs(model).eval(), model.training
    example = torch.randn(1, 3, *example_size, generator=torch.Generator().manual_seed(0))
    example = example.to(next(model.parameters()).device)
    axes = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # ContextEncoding keeps its last attention in .gamma, for plots; nothing the graph needs.
            warnings.filterwarnings("ignore", message=".*gamma was assigned during export")
            traced = wrapper(example)
            program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=opset, verbose=False,
                                        input_names=["image"], output_names=names[:len(traced)],
                                        dynamic_shapes={"image": axes})
    finally:
        model.train(training)
    metadata = _metadata(model, names[:len(traced)], traced[0].size(1), protocol, entry, weights)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


class OnnxModel:
    """An exported file run by ONNX Runtime, called like an encnet model: ``images -> {"out", "se"?}``.

    Takes normalised float (B, 3, H, W) images (any device) and returns CPU
    tensors, so :func:`encnet.inference.predict` and :func:`~encnet.inference.segment`
    run it under any protocol. Its ``metadata`` (the stored JSON) gives ``protocol``,
    ``classes``, ``palette``, ``num_classes`` and ``dataset``.
    """

    def __init__(self, session: Any, metadata: dict[str, Any]) -> None:
        self.session, self.metadata = session, metadata
        protocol = dict(metadata["protocol"])
        protocol["scales"] = tuple(protocol["scales"])
        protocol["fit"] = tuple(protocol["fit"]) if protocol["fit"] is not None else None
        self.protocol = Protocol(**protocol)
        self.classes: tuple[str, ...] = tuple(metadata["classes"])
        self.palette: tuple[tuple[int, ...], ...] = tuple(tuple(colour) for colour in metadata["palette"])
        self.num_classes: int = metadata["num_classes"]
        self.dataset: str | None = metadata["dataset"]
        self.output_names: Sequence[str] = metadata["outputs"]

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        values = self.session.run(list(self.output_names), {"image": array})
        outputs = dict(zip(self.output_names, (torch.from_numpy(value) for value in values)))
        return {"out": outputs["logits"], **({"se": outputs["se_logits"]} if "se_logits" in outputs else {})}


def load_onnx(
    path: str | os.PathLike, *, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None
) -> OnnxModel:
    """An :class:`OnnxModel` of a file written by :func:`export_onnx` (or ``encnet export``).

    ``providers``: ONNX Runtime's execution providers, in order of preference;
    ``threads``: its intra-op threads (default: ONNX Runtime's, one per physical core).
    """
    (ort,) = require_packages("onnxruntime")
    if not Path(path).is_file():
        raise UserError(f"--onnx {str(path)!r} is not a file; pass a .onnx file written by `encnet export`")
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own types for a file that is no ONNX model
        raise UserError(f"{str(path)!r} is not a model ONNX Runtime can load ({_first_line(error)}); "
                        "pass a .onnx file written by `encnet export`") from None
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise UserError(f"{str(path)!r} has no {METADATA_KEY!r} metadata (test protocol, classes, palette), so it "
                        "was not written by `encnet export`; export the weights with `encnet export`")
    metadata = json.loads(text)
    if metadata.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} holds encnet metadata of format {metadata.get('format')!r}, this encnet "
                        f"reads format {FORMAT}; export the weights again with this version")
    return OnnxModel(session, metadata)


@torch.no_grad()
def largest_difference(model: nn.Module, onnx_model: OnnxModel, images: Tensor) -> float:
    """max |ONNX Runtime's logits - PyTorch's| / max |PyTorch's| on ``images``, over ``"out"`` and ``"se"``."""
    training = model.training
    expected = model.eval()(images)
    model.train(training)
    found = onnx_model(images)
    return max(float((found[key] - expected[key].cpu()).abs().max() / expected[key].abs().max()) for key in found)


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (ONNX Runtime's run over several)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
