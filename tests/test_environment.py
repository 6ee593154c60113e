"""pyproject.toml and environment.yml must list the same packages."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_pyproject_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        pyproject |= {_name(r) for r in extra}

    conda, section, in_pip_section = set(), None, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            section = line.split(":")[0]
            continue
        if section != "dependencies":
            continue
        if line.startswith("  - pip:"):
            in_pip_section = True
            continue
        if line.startswith("      - ") and in_pip_section:
            assert line.strip() == "- -e .", f"unexpected pip entry in environment.yml: {line.strip()}"
            continue
        if line.startswith("  - "):
            in_pip_section = False
            name = _name(line[4:])
            if name not in NOT_PACKAGES:
                conda.add(CONDA_NAMES.get(name, name))
    assert conda == pyproject, f"only in environment.yml: {conda - pyproject}; only in pyproject: {pyproject - conda}"
