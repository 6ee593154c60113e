"""The notebooks show the model's code from the package, not a copy of it ("paper, then code").

For each piece of the model a notebook introduces, the notebook has a code cell that prints the
package's source with ``inspect.getsource(...)``, the committed output of that cell shows it, the
piece exists in the package, and no cell of any notebook pastes its code (its ``def`` line and its
body), which would drift from what runs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import textwrap
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"

SHOWN = {
    "01_encoding_layer": [
        "encnet.nn.Encoding.forward",
        "encnet.nn.functional.encoding_direct",
        "encnet.nn.functional.squared_distances",
        "encnet.nn.functional._Encoding.backward",
    ],
    "02_context_encoding_module": [
        "encnet.models.backbones._resnet",
        "encnet.models.segmentation.EncHead.forward",
        "encnet.models.segmentation.SegmentationModel.forward",
        "encnet.models.segmentation.FCNHead.forward",
        "encnet.nn.Encoding.forward",
        "encnet.nn.ContextEncoding.forward",
        "encnet.losses.se_target",
        "encnet.losses.EncNetLoss.forward",
        "encnet.engine._train_step",
    ],
    "04_sync_bn_multi_gpu": [
        "encnet.nn.syncbn._statistics_once",
        "encnet.nn.syncbn._statistics_twice",
    ],
}
"""Notebook (file name without .ipynb) -> the dotted names of the package objects it shows."""

PAIRS = [(notebook, name) for notebook, names in SHOWN.items() for name in names]
GETSOURCE = re.compile(r"\bgetsource\(\s*([\w.]+)\s*\)")
WINDOW = 4  # this many consecutive code lines of an object (or all of them, if fewer) in a cell make a copy


def _cells(notebook: str) -> list[dict]:
    return json.loads((NOTEBOOKS_DIR / f"{notebook}.ipynb").read_text())["cells"]


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


def _resolve(name: str):
    """The object a dotted name names: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(name)


def _qualname(name: str) -> str:
    obj = _resolve(name)
    return getattr(obj, "__qualname__", name.rsplit(".", 1)[-1])


def _names_the_object(argument: str, qualname: str) -> bool:
    """``Encoding.forward``, ``nn.Encoding.forward`` or ``encnet.nn.Encoding.forward`` name ``Encoding.forward``."""
    return argument == qualname or argument.endswith("." + qualname)


def _normalise(text: str) -> list[str]:
    """Code lines without indentation, trailing comments, blank and comment-only lines."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _code_lines(name: str) -> list[str]:
    """The object's signature and body, normalised, without its docstring and decorators."""
    source = textwrap.dedent(inspect.getsource(_resolve(name)))
    function = ast.parse(source).body[0]
    lines = source.splitlines()
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        signature = lines[function.lineno - 1:body[0].lineno - 1]
        rest = lines[body[0].end_lineno:] if len(body) > 1 else []
    else:
        signature, rest = lines[function.lineno - 1:body[0].lineno - 1], lines[body[0].lineno - 1:]
    return _normalise("\n".join(signature + rest))


def _contains_run(haystack: list[str], needle: list[str]) -> bool:
    size = len(needle)
    return any(haystack[i:i + size] == needle for i in range(len(haystack) - size + 1))


@pytest.mark.parametrize(("notebook", "name"), PAIRS, ids=[f"{n[:2]}-{o}" for n, o in PAIRS])
def test_the_notebook_prints_the_package_source(notebook, name):
    qualname = _qualname(name)  # imports it: the object exists in the package
    shown = [cell for cell in _cells(notebook) if cell["cell_type"] == "code"
             and any(_names_the_object(argument, qualname) for argument in GETSOURCE.findall(_text(cell["source"])))]
    assert shown, f"{notebook} has no code cell calling inspect.getsource({qualname})"
    definition = textwrap.dedent(inspect.getsource(_resolve(name))).splitlines()[0].strip()
    printed = "".join(_text(output.get("text", "")) for cell in shown for output in cell.get("outputs", []))
    assert definition in printed, (
        f"the committed output of {notebook}'s getsource({qualname}) cell does not show {definition!r}: "
        "execute the notebook again"
    )


@pytest.mark.parametrize("name", sorted({name for _, name in PAIRS}))
def test_no_notebook_pastes_the_source(name):
    code = _code_lines(name)
    needles = [code] if len(code) <= WINDOW else [code[i:i + WINDOW] for i in range(len(code) - WINDOW + 1)]
    for path in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")):
        for index, cell in enumerate(_cells(path.stem)):
            lines = _normalise(_text(cell["source"]))
            assert not any(_contains_run(lines, needle) for needle in needles), (
                f"cell {index} of {path.name} holds a copy of {name}'s code: print it with inspect.getsource instead"
            )


def test_the_copy_check_finds_a_copy():
    # A pasted forward, reindented and with its comments changed, is still found.
    pasted = "\n".join("  " + line + "  # pasted" for line in _code_lines("encnet.nn.ContextEncoding.forward"))
    lines = _normalise(pasted)
    code = _code_lines("encnet.nn.ContextEncoding.forward")
    assert len(code) > WINDOW and _contains_run(lines, code[:WINDOW])
    assert _code_lines("encnet.nn.Encoding.forward") == [
        "def forward(self, x: Tensor) -> Tensor:", "return encoding(x, self.codewords, self.smoothing)"]
