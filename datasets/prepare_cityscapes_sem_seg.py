#!/usr/bin/env python
"""Create Cityscapes ``*_gtFine_labelTrainIds.png`` for detectron2's ``cityscapes_fine_sem_seg_{train,val}``.

Runs ``cityscapesscripts.preparation.createTrainIdLabelImgs`` on
``$DETECTRON2_DATASETS/cityscapes`` (which must hold ``leftImg8bit/`` and
``gtFine/``); the label images are written next to the ``*_gtFine_polygons.json`` files.
"""

import os


def main():
    root = os.path.join(
        os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "cityscapes"
    )
    if not os.path.isdir(os.path.join(root, "gtFine")):
        raise SystemExit(
            f"{root}/gtFine not found: unzip gtFine_trainvaltest.zip there first"
        )
    os.environ["CITYSCAPES_DATASET"] = root
    try:
        from cityscapesscripts.preparation import createTrainIdLabelImgs
    except ImportError:
        raise SystemExit(
            "cityscapesscripts is missing: pip install cityscapesscripts"
        ) from None
    createTrainIdLabelImgs.main()


if __name__ == "__main__":
    main()
