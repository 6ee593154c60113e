"""The JSON form of the layout fixtures, shared by ``make_layouts_mmseg.py`` and ``make_layouts_reference.py``."""

from __future__ import annotations

import json


def dump(fixture: dict) -> str:
    """JSON with one state-dict key per line, so that a change of layout reads as a small diff."""
    head = {key: value for key, value in fixture.items() if key != "state_dict"}
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items()]
    keys = [f"    {json.dumps(key)}: {json.dumps(shape)}" for key, shape in fixture["state_dict"].items()]
    return "{\n" + "\n".join(lines) + '\n  "state_dict": {\n' + ",\n".join(keys) + "\n  }\n}\n"
