#!/usr/bin/env python
"""Generate the built-in synthetic ``hila_shapes`` dataset into ``<root>/hila_shapes``.

Usage: python datasets/prepare_hila_shapes.py [--root DIR] [--force]
``DIR`` defaults to ``$DETECTRON2_DATASETS`` or ``./datasets``. Without
``--force`` an up-to-date dataset is left untouched.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # repo root

from hila_d2.data.shapes import default_root, ensure_hila_shapes  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        default=default_root(),
        help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument(
        "--force", action="store_true", help="regenerate even if up to date"
    )
    args = parser.parse_args()

    start = time.perf_counter()
    out = ensure_hila_shapes(args.root, force=args.force)
    elapsed = time.perf_counter() - start
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    print(
        f"hila_shapes v{manifest['generator_version']} at {os.path.abspath(out)} "
        f"({elapsed:.1f} s):"
    )
    for split, counts in manifest["splits"].items():
        print(f"  {split}: {counts['images']} images, {counts['instances']} instances")


if __name__ == "__main__":
    main()
