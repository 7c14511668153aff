#!/usr/bin/env python
"""Convert Mapillary Vistas v1.2 labels for hila_d2's ``mapillary_vistas_sem_seg_{train,val}``.

Usage: python datasets/prepare_mapillary_vistas_sem_seg.py [--root DIR] [--workers N] [--force]

Reads  ``<DIR>/mapillary_vistas/{training,validation}/labels/*.png`` (or ``.../v1.2/labels``, as
in the v2.0 download) and ``<DIR>/mapillary_vistas/config.json`` (or ``config_v1.2.json``),
writes ``<DIR>/mapillary_vistas/{training,validation}/labels_detectron2/*.png``: 8-bit gray PNGs
of the class ids 0..64, with label 65 ("Unlabeled") as 255, the ignore value of the configs. The
v1.2 labels are palette PNGs whose indices are the label ids; any other value is an error naming
the file. ``DIR`` defaults to ``$DETECTRON2_DATASETS`` or ``./datasets``. Files already converted
(newer than their source) are skipped unless ``--force``; each one is written to a temporary name
and renamed, so an interrupted run leaves no half-written label.
"""

import argparse
import json
import os
import sys
from multiprocessing import Pool

import numpy as np
from PIL import Image

NUM_CLASSES = 65  # label 65 is "Unlabeled"
IGNORE_LABEL = 255
SPLITS = ("training", "validation")
CONFIG_NAMES = ("config.json", "config_v1.2.json")
OUTPUT = "labels_detectron2"

# 0..64 -> themselves, 65 -> 255; other values are refused before the lookup
_LUT = np.arange(256, dtype=np.uint8)
_LUT[NUM_CLASSES] = IGNORE_LABEL


def find_labels(split_dir: str) -> str:
    """The folder of v1.2 labels of a split: ``labels`` or ``v1.2/labels``."""
    for candidate in ("labels", os.path.join("v1.2", "labels")):
        path = os.path.join(split_dir, candidate)
        if os.path.isdir(path):
            return path
    raise SystemExit(
        f"{split_dir}/labels (or v1.2/labels) not found: unzip the Mapillary Vistas download into "
        f"{os.path.dirname(split_dir)} first (datasets/README.md)"
    )


def check_config(root: str) -> str:
    """The label config of ``root``, checked to be v1.2's 66 labels with "Unlabeled" last."""
    for name in CONFIG_NAMES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            break
    else:
        raise SystemExit(f"{root}/config.json (or config_v1.2.json) not found")
    with open(path, encoding="utf-8") as f:
        labels = json.load(f)["labels"]
    last = labels[-1] if labels else {}
    if len(labels) != NUM_CLASSES + 1 or "unlabeled" not in str(last.get("name", "")).lower():
        raise SystemExit(
            f"{path} lists {len(labels)} labels ending in {last.get('name')!r}; Mapillary Vistas "
            f"v1.2 has {NUM_CLASSES + 1} ending in 'void--unlabeled' (a v2.0 download holds the "
            "v1.2 files as config_v1.2.json and */v1.2/labels)"
        )
    return path


def convert(job):
    """Convert one label file; returns an error text or ""."""
    source, target, force = job
    if (
        not force
        and os.path.isfile(target)
        and os.path.getmtime(target) >= os.path.getmtime(source)
    ):
        return ""
    with Image.open(source) as image:
        label = np.asarray(image)
    if label.ndim != 2 or label.dtype != np.uint8:
        return f"{source}: a {label.dtype} array of shape {label.shape}, not v1.2's palette ids"
    if label.max() > NUM_CLASSES:
        bad = sorted(int(v) for v in np.unique(label) if v > NUM_CLASSES)
        return f"{source}: values {bad} above {NUM_CLASSES}, which v1.2 labels do not have"
    temporary = f"{target}.tmp{os.getpid()}.png"
    Image.fromarray(_LUT[label]).save(temporary)
    os.replace(temporary, target)
    return ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="folder holding mapillary_vistas/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--force", action="store_true", help="convert even up-to-date files")
    args = parser.parse_args(argv)
    root = os.path.join(args.root, "mapillary_vistas")
    if not os.path.isdir(root):
        raise SystemExit(
            f"{root} not found: download Mapillary Vistas v1.2 there (datasets/README.md)"
        )
    check_config(root)
    errors = []
    for split in SPLITS:
        source_dir = find_labels(os.path.join(root, split))
        target_dir = os.path.join(root, split, OUTPUT)
        os.makedirs(target_dir, exist_ok=True)
        names = sorted(n for n in os.listdir(source_dir) if n.endswith(".png"))
        jobs = [
            (os.path.join(source_dir, n), os.path.join(target_dir, n), args.force) for n in names
        ]
        pool = Pool(args.workers) if args.workers > 1 else None
        results = pool.imap(convert, jobs, chunksize=8) if pool else map(convert, jobs)
        for i, error in enumerate(results, 1):
            if error:
                errors.append(error)
            if i % 1000 == 0 or i == len(jobs):
                print(f"{split}: {i}/{len(jobs)}", flush=True)
        if pool:
            pool.close()
            pool.join()
    if errors:
        raise SystemExit(f"{len(errors)} labels not converted:\n" + "\n".join(errors[:20]))
    print(f"wrote {root}/{{{','.join(SPLITS)}}}/{OUTPUT}")


if __name__ == "__main__":
    sys.exit(main())
