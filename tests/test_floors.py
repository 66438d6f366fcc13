"""The dependency floors in pyproject.toml are the versions CI tests: each equals its pin in constraints-lowest.txt."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# pins that are not direct dependencies, and why they are there
EXTRA_PINS = {"distributed": "dask[distributed] pins distributed to dask's own version"}


def _direct() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project.get("optional-dependencies", {}).values() for r in extra]
    return {canonicalize_name(r.name): r for r in reqs}


def _floor(req: Requirement) -> Version:
    lower = [s for s in req.specifier if s.operator == ">="]
    assert len(lower) == 1 and len(req.specifier) == 1, f"{req}: give exactly one floor (>=), nothing else"
    return Version(lower[0].version)


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints-lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==" and not req.extras, f"constraints-lowest.txt: {line!r} is not NAME==VERSION"
            name = canonicalize_name(req.name)
            assert name not in pins, f"constraints-lowest.txt pins {name} twice"
            pins[name] = Version(spec.version)
    return pins


def test_every_floor_is_the_pinned_lowest_version():
    direct, pins = _direct(), _pins()
    floors = {name: _floor(req) for name, req in direct.items()}
    wrong = {n: (str(f), str(pins.get(n))) for n, f in floors.items() if pins.get(n) != f}
    assert not wrong, f"pyproject.toml floor != constraints-lowest.txt pin (floor, pin): {wrong}"
    stray = set(pins) - set(floors) - set(EXTRA_PINS)
    assert not stray, f"constraints-lowest.txt pins what pyproject.toml does not depend on: {sorted(stray)}"
    assert pins["distributed"] == pins["dask"] and "distributed" in direct["dask"].extras


def test_floors_that_the_store_format_needs():
    floors = {name: _floor(req) for name, req in _direct().items()}
    assert floors["zarr"] >= Version("3"), "the stores are Zarr v3 (zarr.open_group(use_consolidated=...), c/ chunks)"
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python.replace(" ", "") == ">=3.11", "zarr 3 and xarray >= 2025 need Python 3.11"
