#!/usr/bin/env bash
# Create .venv and install hila_d2 with its pinned stack (all pins: pyproject.toml).
# Idempotent: when pyproject.toml and this script are unchanged since the last successful run,
# it only checks that the stack imports (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
STAMP="$VENV/.hila_d2-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -W ignore -c "import hila_d2, detectron2, transformers" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
rm -f "$STAMP"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"
"$VENV/bin/python" -m pip install --quiet -e ".[test]"

detectron2_pin=$("$VENV/bin/python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["hila_d2"]["detectron2"])')
site_packages=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV/bin/python" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
  --target "$site_packages" --upgrade "$detectron2_pin"

"$VENV/bin/python" -W ignore -c "import hila_d2, detectron2, torch; print('setup: hila_d2 with detectron2', detectron2.__version__, 'torch', torch.__version__)"
echo "$want" > "$STAMP"
