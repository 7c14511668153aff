#!/usr/bin/env bash
# Create a virtual environment and install hila_d2 with its test extra and detectron2.
#   bash scripts/setup.sh                  .venv with the exact tested stack (requirements/lock.txt)
#   STACK=oldest VENV=.venv-oldest bash scripts/setup.sh
#                                          the oldest supported stack (requirements/oldest.txt)
#                                          installed first, then hila_d2 without constraints
# Idempotent: when pyproject.toml, the requirements files and this script are unchanged since
# the last successful run, it only checks that the stack imports (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
STACK=${STACK:-lock}
STAMP="$VENV/.hila_d2-setup"
want=$(cat pyproject.toml requirements/*.txt scripts/setup.sh <(echo "$STACK") | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -W ignore -c "import hila_d2, detectron2, transformers" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
rm -f "$STAMP"
pip=("$VENV/bin/python" -m pip install --quiet)
"${pip[@]}" --upgrade "pip>=24"
case "$STACK" in
  lock) "${pip[@]}" -c requirements/lock.txt -e ".[test]" ;;
  oldest) "${pip[@]}" -r requirements/oldest.txt && "${pip[@]}" -e ".[test]" ;;
  *) echo "setup: STACK must be lock or oldest, not $STACK" >&2; exit 1 ;;
esac

detectron2_pin=$("$VENV/bin/python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["hila_d2"]["detectron2"])')
site_packages=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"${pip[@]}" --no-deps --only-binary=:all: --python-version 3.10 --target "$site_packages" \
  --upgrade "$detectron2_pin"

"$VENV/bin/python" -W ignore -c "import hila_d2, detectron2, torch; print('setup: hila_d2 with detectron2', detectron2.__version__, 'torch', torch.__version__)"
echo "$want" > "$STAMP"
