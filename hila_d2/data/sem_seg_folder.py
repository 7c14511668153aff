"""Semantic segmentation datasets from folders, in detectron2's catalogs, checked when they are
registered.

:func:`register_sem_seg_folder`: semantic segmentation from a folder of images and a folder of
label PNGs with the same relative paths and base names (``images/a/x.jpg`` <->
``labels/a/x.png``); each label pixel is a class id ``0..len(classes)-1`` or ``ignore_label``.

It fails with one :class:`~hila_d2.data.dataset_files.DatasetError` that names the files and the
fix: a missing directory, an empty folder, images without a label and labels without an image,
an image and its label of different sizes, colour label images, label values that are no class
and not the ignore value. Sizes come from the file headers; the label values of a folder are read
with numpy, in threads.

The registered records and metadata are those of detectron2's built-in datasets
(``evaluator_type`` ``"sem_seg"``), so ``SemSegEvaluator`` and ``train_net.py``'s
``build_evaluator`` work unchanged. hila_d2's training mapper
(``hila_d2.data.mappers.CheckedDatasetMapper``) checks each label again when it reads it, naming
the file, against the classes of the folder it belongs to (:func:`label_folder_of`).
"""

import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .dataset_files import (
    LabelFolder,
    _DEFINITIONS,
    _LABEL_FOLDERS,
    _NEEDS_CLASS_ID_READER,
    _bad_values,
    _check_directory,
    _check_name,
    _files,
    _image_header,
    _label_header,
    _listed,
    _many,
    _map_threads,
    _plural,
    _raise,
    _resolve,
    _value_fix,
    label_values,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "LabelFolder",
    "label_folder_of",
    "register_sem_seg_folder",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
LABEL_EXTENSION = ".png"
# PIL modes of label images whose pixels are class ids (np.asarray gives them directly)
_LABEL_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B")


def _check_classes(classes, ignore_label) -> List[str]:
    problems = []
    if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes):
        problems.append(
            f"classes must be a list of class names (non-empty strings), got {classes!r}"
        )
    elif not classes:
        problems.append(
            "classes is empty: give the name of each class, in the order of the label ids"
        )
    elif len(set(classes)) != len(classes):
        repeated = sorted({c for c in classes if list(classes).count(c) > 1})
        problems.append(f"the class names {repeated} are repeated: each class needs its own name")
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)):
        problems.append(f"ignore_label must be an integer, got {ignore_label!r}")
    elif not problems and 0 <= ignore_label < len(classes):
        problems.append(
            f"ignore_label {ignore_label} is the id of the class {classes[ignore_label]!r}: the "
            f"ignore value must be outside 0..{len(classes) - 1} (usually 255)"
        )
    return problems


def _scan_sem_seg_folder(
    name: str,
    image_dir,
    label_dir,
    classes: Sequence[str],
    ignore_label: int,
    check_label_values: bool,
    done: str = "registered",
) -> Tuple[List[dict], bool]:
    """The records of a folder dataset, and whether detectron2's DatasetMapper reads its labels
    right (gray or gray-palette PNGs); DatasetError listing every problem found (the dataset
    "cannot be {done}")."""
    images_path, labels_path = _resolve(image_dir), _resolve(label_dir)
    what = f"images {image_dir}, labels {label_dir}"
    problems: List[str] = []
    _check_directory(images_path, image_dir, "image folder", problems)
    _check_directory(labels_path, label_dir, "label folder", problems)
    _raise(name, what, problems, done)

    images, image_duplicates = _files(images_path, IMAGE_EXTENSIONS)
    labels, label_duplicates = _files(labels_path, (LABEL_EXTENSION,))
    if not images:
        problems.append(
            f"the image folder {image_dir} holds no image ({', '.join(IMAGE_EXTENSIONS)}, in it "
            "or its sub-folders): put the images there, or correct the path"
        )
    if not labels:
        others, _ = _files(labels_path, IMAGE_EXTENSIONS)
        lossy = (
            f" (it holds {_plural(len(others), 'other image file')}: labels must be lossless PNG)"
            if others
            else ""
        )
        problems.append(
            f"the label folder {label_dir} holds no .png label{lossy}: save one PNG of class "
            "ids per image there, or correct the path"
        )
    _raise(name, what, problems, done)

    if image_duplicates:
        problems.append(
            f"{_many(image_duplicates, 'image', 'shares', 'share')} a base name with another "
            f"image: {_listed(image_duplicates)}; keep one image per name"
        )
    unlabelled = [images[k] for k in images if k not in labels]
    if unlabelled:
        problems.append(
            f"{_many(unlabelled, 'image', 'has', 'have')} no label PNG of the same base name in "
            f"{label_dir}: {_listed(unlabelled)}; add "
            f"{os.path.join(label_dir, os.path.splitext(unlabelled[0])[0] + LABEL_EXTENSION)} "
            "(and the others), or move those images out"
        )
    orphans = [labels[k] for k in labels if k not in images]
    if orphans:
        problems.append(
            f"{_many(orphans, 'label', 'has', 'have')} no image of the same base name in "
            f"{image_dir}: {_listed(orphans)}; add the images or remove those labels "
            "(names must match exactly, sub-folders included)"
        )
    keys = [k for k in images if k in labels]
    image_files = [os.path.join(images_path, images[k]) for k in keys]
    label_files = [os.path.join(labels_path, labels[k]) for k in keys]
    image_sizes = _map_threads(_image_header, image_files)
    label_headers = _map_threads(_label_header, label_files)

    unreadable, mismatched, coloured = [], [], []
    for key, size, header in zip(keys, image_sizes, label_headers):
        if isinstance(size, str):
            unreadable.append(f"{images[key]} ({size})")
        if header.error:
            unreadable.append(f"{labels[key]} ({header.error})")
        elif header.mode not in _LABEL_MODES:
            coloured.append(f"{labels[key]} ({header.mode})")
        elif not isinstance(size, str) and size != (header.width, header.height):
            mismatched.append(
                f"{images[key]} {size[0]}x{size[1]} / {labels[key]} {header.width}x{header.height}"
            )
    if unreadable:
        problems.append(
            f"{_plural(len(unreadable), 'file')} cannot be read as an image: "
            f"{_listed(unreadable)}; replace or remove them"
        )
    if coloured:
        problems.append(
            f"{_many(coloured, 'label', 'is a colour image', 'are colour images')}, not class "
            f"ids: {_listed(coloured)}; a label PNG holds one class id per pixel (8- or 16-bit "
            "grayscale, or a palette PNG whose indices are the ids): convert colour-coded masks "
            "to class ids first"
        )
    if mismatched:
        problems.append(
            f"{_many(mismatched, 'label', 'differs', 'differ')} in size from their image "
            f"(width x height, image / label): {_listed(mismatched)}; a label must have its "
            "image's size (re-export it, or resize it with nearest-neighbour interpolation; an image rotated "
            "by its EXIF orientation counts as rotated, as detectron2 reads it)"
        )
    _raise(name, what, problems, done)

    if check_label_values:
        start = time.perf_counter()
        values = _map_threads(label_values, label_files)
        num_classes = len(classes)
        wrong = []
        for key, found in zip(keys, values):
            bad = _bad_values(found, num_classes, ignore_label)
            if len(bad):
                wrong.append(f"{labels[key]} {[int(v) for v in bad[:10]]}")
        if wrong:
            problems.append(
                f"{_many(wrong, 'label', 'has', 'have')} values that are no class "
                f"(0..{num_classes - 1}) and not the ignore value {ignore_label}: "
                f"{_listed(wrong)}; " + _value_fix(num_classes, ignore_label)
            )
            _raise(name, what, problems, done)
        logger.info(
            "Checked the label values of %d files of %r in %.1f s",
            len(label_files),
            name,
            time.perf_counter() - start,
        )
    records = [
        {
            "file_name": image_file,
            "sem_seg_file_name": label_file,
            "height": size[1],
            "width": size[0],
        }
        for image_file, label_file, size in zip(image_files, label_files, image_sizes)
    ]
    return records, all(header.gray_readable for header in label_headers)


def register_sem_seg_folder(
    name: str,
    image_dir,
    label_dir,
    classes: Sequence[str],
    ignore_label: int = 255,
    *,
    check_label_values: bool = True,
    lazy: bool = False,
    **metadata,
) -> None:
    """Register the semantic segmentation dataset ``name`` of the images under ``image_dir`` and
    the label PNGs under ``label_dir``, checked now.

    Each image (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.tif``, ``.tiff``, in ``image_dir`` or
    its sub-folders) has the label ``label_dir/<same relative path and base name>.png``, of the
    same size, whose pixels are class ids: ``0..len(classes)-1`` or ``ignore_label`` (8- or 16-bit
    grayscale PNGs, or palette PNGs whose indices are the ids). The records are
    ``{"file_name", "sem_seg_file_name", "height", "width"}`` (absolute paths, sorted); the
    metadata ``stuff_classes=classes``, ``ignore_label``, ``evaluator_type="sem_seg"``,
    ``image_root``, ``sem_seg_root`` and ``metadata`` (e.g. ``stuff_colors``).

    Args:
        check_label_values: read every label and check its values (the other checks read the
            file headers only).
        lazy: list and check the files when the dataset is first loaded (``DatasetCatalog.get``)
            instead of now: for built-in datasets that may be absent (Mapillary Vistas).

    Raises:
        DatasetError: naming the files and the fix, for every problem found (see the module).
            The same name registered again with the same arguments is accepted; with others,
            or a name registered by someone else, is an error.
    """
    classes = list(classes)
    # what defines the dataset (how much is checked, and when, does not)
    definition = (
        "register_sem_seg_folder", _resolve(image_dir), _resolve(label_dir), tuple(classes),
        ignore_label, tuple(sorted(metadata.items(), key=str)),
    )  # fmt: skip
    if _check_name(name, definition):
        return
    _raise(name, f"images {image_dir}, labels {label_dir}", _check_classes(classes, ignore_label))
    image_root, label_root = definition[1], definition[2]

    if lazy:
        scanned: List[List[dict]] = []  # the records of the first successful scan

        def load() -> List[dict]:
            if not scanned:
                records, gray_readable = _scan_sem_seg_folder(
                    name, image_dir, label_dir, classes, ignore_label, check_label_values, "loaded"
                )
                _NEEDS_CLASS_ID_READER[name] = not gray_readable
                scanned.append(records)
            return [dict(record) for record in scanned[0]]

    else:
        records, gray_readable = _scan_sem_seg_folder(
            name, image_dir, label_dir, classes, ignore_label, check_label_values
        )
        _NEEDS_CLASS_ID_READER[name] = not gray_readable

        def load() -> List[dict]:
            return [dict(record) for record in records]

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=classes,
        ignore_label=int(ignore_label),
        evaluator_type="sem_seg",
        image_root=image_root,
        sem_seg_root=label_root,
        **metadata,
    )
    _DEFINITIONS[name] = definition
    _LABEL_FOLDERS[label_root] = LabelFolder(name, label_root, len(classes), int(ignore_label))


def label_folder_of(label_file: str) -> Optional[LabelFolder]:
    """The registered folder dataset that ``label_file`` belongs to (the innermost folder, where
    folders nest), or None."""
    path = _resolve(label_file)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
        if path in _LABEL_FOLDERS:
            return _LABEL_FOLDERS[path]


def label_folders() -> Dict[str, LabelFolder]:
    """A copy of the registered label folders (for processes started by spawning)."""
    return dict(_LABEL_FOLDERS)


def add_label_folders(folders: Dict[str, LabelFolder]) -> None:
    """Make ``folders`` (from :func:`label_folders` of another process) known here."""
    for path, folder in folders.items():
        _LABEL_FOLDERS.setdefault(path, folder)


def needs_class_id_reader(name: str) -> bool:
    """Whether the labels of the folder dataset ``name`` (once loaded or checked) are images that
    detectron2's ``DatasetMapper`` misreads: palette PNGs with colours (its "L" conversion gives
    their gray levels, not the indices), 1-bit or 16-bit PNGs. hila_d2's mapper reads them right."""
    return _NEEDS_CLASS_ID_READER.get(name, False)
