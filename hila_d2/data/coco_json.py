"""COCO-format instance datasets in detectron2's catalogs, checked when they are registered.

:func:`register_coco_json`: instances (boxes, polygon or RLE masks) from a COCO-format JSON, as
CVAT, Label Studio and the labelme converters export it, through detectron2's
``register_coco_instances`` / ``load_coco_json``.

It fails with one :class:`~hila_d2.data.dataset_files.DatasetError` that names the files and the
fix: a missing JSON or image root, a COCO JSON whose ``file_name`` entries do not exist under
``image_root``, whose image sizes are wrong (read from the file headers), or whose annotations
name unknown categories or images. The registered records and metadata are those of detectron2's
built-in datasets (``evaluator_type`` ``"coco"``), so ``COCOEvaluator`` and ``train_net.py``'s
``build_evaluator`` work unchanged.
"""

import json
import os
from typing import List

from detectron2.data.datasets.coco import register_coco_instances

from .dataset_files import (
    _COCO_RLE,
    _DEFINITIONS,
    _check_directory,
    _check_name,
    _image_header,
    _listed,
    _many,
    _map_threads,
    _plural,
    _raise,
    _resolve,
)

__all__ = [
    "register_coco_json",
]


def _coco_problems(data, json_file: str, image_root: str, root_path: str, check_image_sizes: bool):
    """(problems, categories, has_rle) of a parsed COCO JSON."""
    problems: List[str] = []
    if not isinstance(data, dict):
        return [f"{json_file} holds a {type(data).__name__}, not a COCO dict"], [], False
    absent = [
        key
        for key in ("images", "annotations", "categories")
        if not isinstance(data.get(key), list)
    ]
    if absent:
        return (
            [
                f"{json_file} has no list {absent} (a COCO instances file has 'images', "
                "'annotations' and 'categories'): export the dataset as 'COCO' / 'COCO 1.0' "
                "instances"
            ],
            [],
            False,
        )
    images, annotations, categories = data["images"], data["annotations"], data["categories"]
    if not images:
        problems.append(f"{json_file} lists no image: export the images' annotations too")
    if not annotations:
        problems.append(f"{json_file} has no annotation: nothing to train on")
    bad_categories = [
        c for c in categories if not isinstance(c, dict) or "id" not in c or "name" not in c
    ]
    if not categories or bad_categories:
        problems.append(
            f"{json_file} needs categories with an 'id' and a 'name' each, got "
            f"{_listed([repr(c) for c in (bad_categories or categories)], 3) or 'none'}"
        )
    incomplete = [
        repr(image.get("file_name", image) if isinstance(image, dict) else image)
        for image in images
        if not isinstance(image, dict)
        or not all(k in image for k in ("id", "file_name", "width", "height"))
    ]
    if incomplete:
        problems.append(
            f"{_many(incomplete, 'image', 'lacks', 'lack')} an 'id', "
            f"'file_name', 'width' or 'height': {_listed(incomplete)}"
        )
    if problems:
        return problems, categories, False

    by_id = {}
    repeated = []
    for image in images:
        if image["id"] in by_id:
            repeated.append(
                f"{image['id']} ({by_id[image['id']]['file_name']}, {image['file_name']})"
            )
        by_id[image["id"]] = image
    if repeated:
        problems.append(f"image ids are repeated in {json_file}: {_listed(repeated)}")
    paths = [os.path.join(root_path, image["file_name"]) for image in images]
    missing = [image["file_name"] for image, path in zip(images, paths) if not os.path.isfile(path)]
    if missing:
        fix = (
            "set image_root to the folder the 'file_name' entries are relative to, or copy the "
            "images there"
        )
        first = os.path.basename(missing[0])
        if first != missing[0] and os.path.isfile(os.path.join(root_path, first)):
            fix = (
                f"{first} itself is in {image_root}, so the 'file_name' entries carry a folder "
                "prefix: strip it from them, or set image_root to the folder they are relative to"
            )
        problems.append(
            f"{_many(missing, 'image', 'does', 'do')} not exist under the image root {image_root}: "
            f"{_listed(missing)}; {fix}"
        )
    elif check_image_sizes:
        sizes = _map_threads(_image_header, paths)
        unreadable = [
            f"{i['file_name']} ({s})" for i, s in zip(images, sizes) if isinstance(s, str)
        ]
        wrong = [
            f"{i['file_name']} {s[0]}x{s[1]} (JSON: {i['width']}x{i['height']})"
            for i, s in zip(images, sizes)
            if not isinstance(s, str) and s != (i["width"], i["height"])
        ]
        if unreadable:
            problems.append(
                f"{_plural(len(unreadable), 'image')} cannot be read: {_listed(unreadable)}"
            )
        if wrong:
            problems.append(
                f"{_many(wrong, 'image', 'has', 'have')} another size than the JSON "
                f"says (width x height): {_listed(wrong)}; re-export the annotations from these "
                "images (an image rotated by its EXIF orientation counts as rotated, as "
                "detectron2 reads it)"
            )

    category_ids = {c["id"] for c in categories}
    unknown_category, unknown_image, no_box = [], [], []
    has_rle = False
    for annotation in annotations:
        image = by_id.get(annotation.get("image_id"))
        where = f"annotation {annotation.get('id', '?')}"
        if image is None:
            unknown_image.append(f"{where} (image_id {annotation.get('image_id')!r})")
            continue
        if annotation.get("category_id") not in category_ids:
            unknown_category.append(
                f"{where} of {image['file_name']} (category_id {annotation.get('category_id')!r})"
            )
        bbox = annotation.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            no_box.append(f"{where} of {image['file_name']}")
        if isinstance(annotation.get("segmentation"), dict):
            has_rle = True
    if unknown_category:
        problems.append(
            f"{_many(unknown_category, 'annotation', 'names', 'name')} a category id "
            f"that 'categories' lacks (it has {sorted(category_ids)}): "
            f"{_listed(unknown_category)}; add those categories or delete the annotations"
        )
    if unknown_image:
        problems.append(
            f"{_many(unknown_image, 'annotation', 'names', 'name')} an image id that "
            f"'images' lacks: {_listed(unknown_image)}; add the images or delete the annotations"
        )
    if no_box:
        problems.append(
            f"{_many(no_box, 'annotation', 'has', 'have')} no 'bbox' [x, y, width, "
            f"height]: {_listed(no_box)}; export with boxes (detectron2 needs one per object)"
        )
    return problems, categories, has_rle


def register_coco_json(
    name: str, json_file, image_root, *, check_image_sizes: bool = True, **metadata
) -> None:
    """Register the instance segmentation / detection dataset ``name`` of the COCO-format
    ``json_file`` (boxes, and polygon or RLE masks) with its images under ``image_root``,
    checked now, through detectron2's ``register_coco_instances`` (``evaluator_type="coco"``,
    ``json_file``, ``image_root``; ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``
    from the JSON's categories in id order, as detectron2's ``load_coco_json`` sets them).

    Checks: the JSON parses and has images, annotations and categories; every ``file_name``
    exists under ``image_root``; each image has the ``width`` and ``height`` the JSON gives
    (header reads; ``check_image_sizes=False`` skips them); every annotation names a known
    category and image and has a box. RLE masks need ``INPUT.MASK_FORMAT "bitmask"`` (train_net
    checks it). Re-registration as in :func:`register_sem_seg_folder`.

    Raises:
        DatasetError: naming the files or annotations and the fix.
    """
    definition = (
        "register_coco_json", _resolve(json_file), _resolve(image_root),
        tuple(sorted(metadata.items(), key=str)),
    )  # fmt: skip
    if _check_name(name, definition):
        return
    json_path, root_path = definition[1], definition[2]
    what = f"{json_file}, images {image_root}"
    problems: List[str] = []
    if not os.path.isfile(json_path):
        exists = "is not a file" if os.path.exists(json_path) else "does not exist"
        problems.append(
            f"the COCO JSON {json_file} {exists}: check the path (relative paths start from the "
            f"working directory, {os.getcwd()})"
        )
    _check_directory(root_path, image_root, "image root", problems)
    _raise(name, what, problems)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        _raise(name, what, [f"{json_file} is not valid JSON ({error}): export it again"])
    problems, categories, has_rle = _coco_problems(
        data, os.fspath(json_file), os.fspath(image_root), root_path, check_image_sizes
    )
    _raise(name, what, problems)

    ordered = sorted(categories, key=lambda c: c["id"])
    register_coco_instances(
        name,
        {
            "thing_classes": [c["name"] for c in ordered],
            "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(ordered)},
            **metadata,
        },
        json_path,
        root_path,
    )
    _DEFINITIONS[name] = definition
    _COCO_RLE[name] = has_rle


def coco_json_has_rle(name: str) -> bool:
    """Whether the COCO dataset ``name`` registered here has RLE masks (they need
    ``INPUT.MASK_FORMAT "bitmask"``)."""
    return _COCO_RLE.get(name, False)
