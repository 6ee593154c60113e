"""pyproject.toml, environment.yml and constraints.txt describe the same environment; licence and citation."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
NOT_PACKAGES = {"python", "pip"}


def pyproject_requirements() -> dict[str, Requirement]:
    """The dependencies and every extra of pyproject.toml, by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines}


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name."""
    pinned = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, separator, version = line.partition("==")
            assert separator and version, f"{path.name}: {line!r} is not a 'name==version' pin"
            pinned[canonicalize_name(name)] = version
    return pinned


def conda_dependencies() -> tuple[dict[str, str | None], list[str]]:
    """environment.yml: ({PyPI name: pinned version or None}, [pip entries other than pinned packages])."""
    conda, pip_entries, section, in_pip_section = {}, [], None, False
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
        elif line.startswith("      - ") and in_pip_section:
            entry = line.strip()[2:].split("#")[0].strip()
            name, separator, version = entry.partition("==")
            if separator:  # a package that conda-forge lacks, pinned like the others
                conda[canonicalize_name(name)] = version
            else:
                pip_entries.append(entry)
        elif line.startswith("  - "):
            in_pip_section = False
            entry = re.fullmatch(r"([\w.-]+)\s*(?:(==|=|>=|<=|>|<)\s*(\S+))?", line[4:].strip())
            assert entry, f"environment.yml: {line.strip()!r} is not 'name', 'name==version' or 'name>=version'"
            name, operator, version = entry.groups()
            if name not in NOT_PACKAGES:
                conda[canonicalize_name(CONDA_NAMES.get(name, name))] = version if operator == "==" else None
    return conda, pip_entries


def test_environment_yml_lists_the_pyproject_packages():
    conda, pip_entries = conda_dependencies()
    pyproject = set(pyproject_requirements())
    assert set(conda) == pyproject, (
        f"only in environment.yml: {set(conda) - pyproject}; only in pyproject: {pyproject - set(conda)}"
    )
    assert pip_entries == ["-e ."], f"unexpected pip entries in environment.yml: {pip_entries}"


def test_constraints_pin_every_package_at_a_version_pyproject_allows():
    pinned = pins(ROOT / "constraints.txt")
    assert "encnet" not in pinned, "constraints.txt pins encnet itself; remake it with `make lock`"
    for name, requirement in pyproject_requirements().items():
        assert name in pinned, f"constraints.txt has no pin for {name}; run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's {requirement}; run `make lock`"
        )


def test_environment_yml_pins_the_versions_of_constraints():
    pinned = pins(ROOT / "constraints.txt")
    conda, _ = conda_dependencies()
    differ = {name: (version, pinned.get(name)) for name, version in conda.items() if version != pinned.get(name)}
    assert not differ, (
        "environment.yml and constraints.txt pin different versions, {name: (environment.yml, constraints.txt)}: "
        f"{differ}; copy constraints.txt's versions into environment.yml"
    )


def test_licence_and_citation():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", citation, re.M)
    preferred = citation[citation.index("\npreferred-citation:") :]
    assert 'title: "Context Encoding for Semantic Segmentation"' in preferred
    assert "arXiv:1803.08904" in preferred
