"""What ``pip install hila_d2`` asks of a user's environment (pyproject.toml): version ranges,
not pins; the exact tested stack in requirements/lock.txt and the oldest supported one in
requirements/oldest.txt, both inside those ranges; and an install into an environment that
already has a supported torch leaves it in place."""

import json
import subprocess
import sys
import tomllib
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from project_config import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
STACK_OF_THE_USER = ("torch", "torchvision", "numpy", "timm")


def requirements(extras=("test", "export")):
    """Every requirement of hila_d2 and its extras (the extras' self-references left out)."""
    listed = PYPROJECT["dependencies"] + [
        r for e in extras for r in PYPROJECT["optional-dependencies"][e]
    ]
    return {
        canonicalize_name(req.name): req
        for req in map(Requirement, listed)
        if canonicalize_name(req.name) != "hila-d2"
    }


def pins(name: str):
    lines = (REPO / "requirements" / name).read_text().splitlines()
    pinned = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): Version(str(r.specifier).removeprefix("==")) for r in pinned}


def test_no_dependency_is_pinned_exactly():
    exact = [
        str(r) for r in requirements().values() if any(s.operator == "==" for s in r.specifier)
    ]
    assert not exact, f"exact pins belong in requirements/lock.txt: {exact}"
    for name in STACK_OF_THE_USER:
        assert requirements()[name].specifier, f"{name} needs a tested lower bound"


@pytest.mark.parametrize("stack", ["lock.txt", "oldest.txt"])
def test_the_tested_stacks_lie_inside_the_declared_ranges(stack):
    declared = requirements()
    pinned = pins(stack)
    outside = [
        f"{n} {v} not in {declared[n].specifier}"
        for n, v in pinned.items()
        if n in declared and v not in declared[n].specifier
    ]
    assert not outside, outside
    missing = (
        set(declared) - set(pinned) if stack == "lock.txt" else set(STACK_OF_THE_USER) - set(pinned)
    )
    assert not missing, f"requirements/{stack} does not pin {sorted(missing)}"


def test_the_lower_bounds_are_the_oldest_stack():
    """Each lower bound that requirements/oldest.txt pins is the version it pins: the bound
    checked by scripts/check_oldest_stack.sh is the bound declared."""
    declared = requirements()
    for name, pinned in pins("oldest.txt").items():
        if name not in declared:
            continue
        lower = [Version(s.version) for s in declared[name].specifier if s.operator == ">="]
        assert (
            lower
        ), f"{name}: requirements/oldest.txt pins {pinned}, pyproject.toml states no lower bound"
        assert pinned == lower[0], f"{name}: lower bound {lower[0]}, oldest tested {pinned}"


def test_installing_hila_d2_keeps_the_environments_torch():
    """What ``pip install ".[test]"`` would do to this environment (which has a supported torch):
    pip's own resolver, offline, given hila_d2's declared requirements, installs nothing and
    replaces nothing."""
    report = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
         "--no-index", *map(str, requirements().values())],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    installs = {
        i["metadata"]["name"]: i["metadata"]["version"]
        for i in json.loads(report.stdout)["install"]
    }
    assert not installs, f"pip would install or replace {installs}"
    for name in STACK_OF_THE_USER:
        version(name)  # installed, and so kept
