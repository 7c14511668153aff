"""The order in which tests/conftest.py hands the test files to pytest-xdist's workers: the files
that run a training entry point first, then the other files with slow tests, then the rest, each
file whole and in its own order; and pyproject's options that make xdist keep that order."""
import tomllib
from dataclasses import dataclass
from typing import Tuple

from conftest import pytest_collection_modifyitems

from project_config import REPO


@dataclass
class Item:
    """The parts of a pytest item the ordering reads."""

    nodeid: str
    fixturenames: Tuple[str, ...] = ()
    slow: bool = False

    def get_closest_marker(self, name: str):
        return name if name == "slow" and self.slow else None


def test_training_files_first_then_slow_files_then_the_rest():
    items = [
        Item("tests/test_a.py::test_fast_1"),
        Item("tests/test_a.py::test_fast_2"),
        Item("tests/test_b.py::test_fast"),
        Item("tests/test_b.py::test_slow", slow=True),
        Item("tests/test_c.py::test_fast"),
        Item("tests/test_c.py::test_trains", ("tmp_path", "train_net"), slow=True),
        Item("tests/test_d.py::test_trains", ("train_net",), slow=True),
        Item("tests/test_e.py::test_fast"),
    ]
    pytest_collection_modifyitems(None, items)
    assert [item.nodeid for item in items] == [
        "tests/test_c.py::test_fast",
        "tests/test_c.py::test_trains",
        "tests/test_d.py::test_trains",
        "tests/test_b.py::test_fast",
        "tests/test_b.py::test_slow",
        "tests/test_a.py::test_fast_1",
        "tests/test_a.py::test_fast_2",
        "tests/test_e.py::test_fast",
    ]


def test_xdist_keeps_files_whole_and_in_this_order():
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    addopts = options["ini_options"]["addopts"].split()
    assert "--no-loadscope-reorder" in addopts  # else xdist sends the largest files first
    assert addopts[addopts.index("--dist") + 1] == "loadfile"
