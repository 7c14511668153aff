#!/usr/bin/env bash
# The lower bounds of pyproject.toml, tested: .venv-oldest gets the oldest supported stack
# (requirements/oldest.txt) first, as a user's own environment would have it, then hila_d2[test]
# without constraints (scripts/setup.sh, STACK=oldest). Fails if pip replaced any of those
# packages, then runs the tests that do not train. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-oldest STACK=oldest bash scripts/setup.sh
.venv-oldest/bin/python - <<'PY'
from importlib.metadata import version
from packaging.requirements import Requirement

lines = open("requirements/oldest.txt").read().splitlines()
pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
replaced = [p for p in pins if version(p.name) not in p.specifier]
if replaced:
    raise SystemExit(
        "installing hila_d2 replaced the environment's own packages: "
        + ", ".join(f"{p.name} {version(p.name)} instead of {p.specifier}" for p in replaced)
    )
print("oldest stack kept:", ", ".join(f"{p.name} {version(p.name)}" for p in pins))
PY
.venv-oldest/bin/python -m pytest -q -n auto -m "not slow" tests "$@"
