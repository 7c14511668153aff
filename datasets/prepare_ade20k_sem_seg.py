#!/usr/bin/env python
"""Convert ADE20K (ADEChallengeData2016) labels for detectron2's ``ade20k_sem_seg_{train,val}``.

Reads  ``$DETECTRON2_DATASETS/ADEChallengeData2016/annotations/{training,validation}/*.png``
writes ``$DETECTRON2_DATASETS/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png``
mapping label 0 ("other") to 255 (ignore) and every label L >= 1 to L - 1 (uint8).
"""

import os

import numpy as np
from PIL import Image

# 0 -> 255, L -> L - 1
_LUT = ((np.arange(256) - 1) % 256).astype(np.uint8)


def main():
    root = os.path.join(
        os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        "ADEChallengeData2016",
    )
    for split in ("training", "validation"):
        src_dir = os.path.join(root, "annotations", split)
        dst_dir = os.path.join(root, "annotations_detectron2", split)
        if not os.path.isdir(src_dir):
            raise SystemExit(
                f"{src_dir} not found: download and unzip ADEChallengeData2016.zip first"
            )
        os.makedirs(dst_dir, exist_ok=True)
        names = sorted(n for n in os.listdir(src_dir) if n.endswith(".png"))
        for i, name in enumerate(names, 1):
            label = np.asarray(Image.open(os.path.join(src_dir, name)))
            Image.fromarray(_LUT[label]).save(os.path.join(dst_dir, name))
            if i % 1000 == 0 or i == len(names):
                print(f"{split}: {i}/{len(names)}", flush=True)


if __name__ == "__main__":
    main()
