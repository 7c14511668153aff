"""Registration of the built-in ``hila_shapes`` datasets in detectron2's catalogs.

For ``split`` in ``train``/``val`` (with the default ``name_prefix``):

* ``hila_shapes_{split}_sem_seg``: semantic segmentation, 7 contiguous classes
  (things 0..3, stuff 4..6), evaluator ``sem_seg``.
* ``hila_shapes_{split}``: COCO instances (4 thing classes, RLE masks, so
  ``INPUT.MASK_FORMAT`` must be ``"bitmask"``), evaluator ``coco``.
* ``hila_shapes_{split}_panoptic``: standard panoptic dicts (``pan_seg_file_name``
  + ``segments_info``, plus ``sem_seg_file_name`` of the 7-class map), as used by
  Mask2Former / Panoptic-DeepLab, evaluator ``coco_panoptic_seg``.
* ``hila_shapes_{split}_panoptic_separated``: PanopticFPN dicts (instances +
  ``sem_seg_file_name`` of the things=0 / stuff=1..3 map), evaluator
  ``coco_panoptic_seg``.

Registering never generates data; each loader calls
:func:`~hila_d2.data.shapes.ensure_hila_shapes` first.
"""

import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import merge_to_panoptic

from .shapes import (
    CATEGORIES,
    SPLITS,
    STUFF_CLASSES,
    THING_CLASSES,
    default_root,
    ensure_hila_shapes,
    hila_shapes_dir,
)

__all__ = [
    "ALL_CLASSES",
    "HILA_SHAPES_DATASETS",
    "STUFF_CLASSES",
    "THING_CLASSES",
    "hila_shapes_dataset_names",
    "register_all_hila_shapes",
]

# contiguous order of the 7 semantic classes: things then stuff
ALL_CLASSES = [c["name"] for c in CATEGORIES]
_ALL_COLORS = [c["color"] for c in CATEGORIES]
_THING_COLORS = [c["color"] for c in CATEGORIES if c["isthing"]]
_THING_ID_MAP = {c["id"]: i for i, c in enumerate(CATEGORIES) if c["isthing"]}
_STUFF_ID_MAP = {c["id"]: i for i, c in enumerate(CATEGORIES) if not c["isthing"]}
# PanopticFPN: contiguous stuff id 0 is "things", real stuff classes are 1..3
_SEPARATED_STUFF_ID_MAP = {
    0: 0,
    **{k: i + 1 for i, k in enumerate(sorted(_STUFF_ID_MAP))},
}
_SEPARATED_STUFF_COLORS = [[82, 18, 128]] + [
    c["color"] for c in CATEGORIES if not c["isthing"]
]


def hila_shapes_dataset_names(name_prefix="hila_shapes"):
    """All dataset names registered by :func:`register_all_hila_shapes` for ``name_prefix``."""
    return [
        f"{name_prefix}_{split}{suffix}"
        for split in SPLITS
        for suffix in ("_sem_seg", "", "_panoptic", "_panoptic_separated")
    ]


HILA_SHAPES_DATASETS = hila_shapes_dataset_names()


def _load_panoptic(root, panoptic_json, image_root, panoptic_root, sem_seg_root):
    """Standard panoptic dicts; like detectron2's ``load_coco_panoptic_json`` but
    for ``.png`` images (that function hard-codes ``.jpg``)."""
    ensure_hila_shapes(root)
    with open(panoptic_json) as f:
        data = json.load(f)
    images = {im["id"]: im for im in data["images"]}
    ret = []
    for ann in data["annotations"]:
        image = images[ann["image_id"]]
        segments_info = []
        for seg in ann["segments_info"]:
            isthing = seg["category_id"] in _THING_ID_MAP
            id_map = _THING_ID_MAP if isthing else _STUFF_ID_MAP
            segments_info.append(
                dict(seg, category_id=id_map[seg["category_id"]], isthing=isthing)
            )
        ret.append(
            {
                "file_name": os.path.join(image_root, image["file_name"]),
                "image_id": image["id"],
                "height": image["height"],
                "width": image["width"],
                "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
                "sem_seg_file_name": os.path.join(sem_seg_root, ann["file_name"]),
                "segments_info": segments_info,
            }
        )
    return ret


def _load_sem_seg(root, gt_root, image_root):
    ensure_hila_shapes(root)
    return load_sem_seg(gt_root, image_root, gt_ext="png", image_ext="png")


def _load_instances(root, json_file, image_root, name):
    ensure_hila_shapes(root)
    return load_coco_json(json_file, image_root, name)


def _load_separated(root, json_file, image_root, stuff_root, name):
    ensure_hila_shapes(root)
    return merge_to_panoptic(
        load_coco_json(json_file, image_root, name),
        load_sem_seg(stuff_root, image_root, gt_ext="png", image_ext="png"),
    )


def _register(name, loader, **metadata):
    if name in DatasetCatalog:
        return
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_all_hila_shapes(root, name_prefix="hila_shapes"):
    """Register the 8 ``hila_shapes`` datasets of ``<root>/hila_shapes`` under ``name_prefix``.

    Idempotent: names already in ``DatasetCatalog`` are skipped. Returns the names.
    """
    base = hila_shapes_dir(root)
    thing_meta = {
        "thing_classes": THING_CLASSES[:],
        "thing_colors": _THING_COLORS[:],
        "thing_dataset_id_to_contiguous_id": dict(_THING_ID_MAP),
    }
    for split in SPLITS:
        name = f"{name_prefix}_{split}"
        image_root = os.path.join(base, "images", split)
        sem_seg_root = os.path.join(base, "sem_seg", split)
        panoptic_root = os.path.join(base, "panoptic", split)
        stuff_root = os.path.join(base, "panoptic_stuff", split)
        instances_json = os.path.join(base, "annotations", f"instances_{split}.json")
        panoptic_json = os.path.join(base, "annotations", f"panoptic_{split}.json")
        panoptic_meta = dict(
            panoptic_root=panoptic_root,
            image_root=image_root,
            panoptic_json=panoptic_json,
            json_file=instances_json,
            evaluator_type="coco_panoptic_seg",
            ignore_label=255,
            **thing_meta,
        )

        _register(
            f"{name}_sem_seg",
            lambda a=sem_seg_root, b=image_root: _load_sem_seg(root, a, b),
            stuff_classes=ALL_CLASSES[:],
            stuff_colors=_ALL_COLORS[:],
            thing_classes=THING_CLASSES[:],
            thing_colors=_THING_COLORS[:],
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            evaluator_type="sem_seg",
            ignore_label=255,
        )
        _register(
            name,
            lambda a=instances_json, b=image_root, n=name: _load_instances(
                root, a, b, n
            ),
            json_file=instances_json,
            image_root=image_root,
            evaluator_type="coco",
            **thing_meta,
        )
        _register(
            f"{name}_panoptic",
            lambda a=panoptic_json, b=image_root, c=panoptic_root, d=sem_seg_root: _load_panoptic(
                root, a, b, c, d
            ),
            stuff_classes=ALL_CLASSES[:],
            stuff_colors=_ALL_COLORS[:],
            stuff_dataset_id_to_contiguous_id=dict(_STUFF_ID_MAP),
            sem_seg_root=sem_seg_root,
            label_divisor=1000,
            **panoptic_meta,
        )
        separated = f"{name}_panoptic_separated"
        _register(
            separated,
            lambda a=instances_json, b=image_root, c=stuff_root, n=separated: _load_separated(
                root, a, b, c, n
            ),
            stuff_classes=["things"] + STUFF_CLASSES,
            stuff_colors=_SEPARATED_STUFF_COLORS[:],
            stuff_dataset_id_to_contiguous_id=dict(_SEPARATED_STUFF_ID_MAP),
            sem_seg_root=stuff_root,
            **panoptic_meta,
        )
    return hila_shapes_dataset_names(name_prefix)


register_all_hila_shapes(default_root())
