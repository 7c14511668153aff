"""What the dataset registrations of hila_d2 (:mod:`hila_d2.data.sem_seg_folder`,
:mod:`hila_d2.data.coco_json`) share: :class:`DatasetError`, the checks of dataset files and the
record of the names registered.

A registration checks its data when it is called and fails with one :class:`DatasetError` (a
``ValueError``) that names the files in question (the first few of each problem) and the fix.
Sizes come from the file headers (PIL, EXIF orientation applied as detectron2 applies it); label
values are read with numpy, in threads.

Registering a name again with the same arguments does nothing; another definition under a name
that is already registered is an error. :func:`unregister_dataset` removes a name from
detectron2's catalogs and from these records.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

__all__ = [
    "DatasetError",
    "unregister_dataset",
]

_SHOWN = 5  # files named per problem
_EXIF_ORIENTATION = 0x0112


class DatasetError(ValueError):
    """A dataset that cannot be registered or read as given; the message names the files and
    says how to fix them."""


# name -> the arguments it was registered with (re-registration with the same ones is a no-op)
_DEFINITIONS: Dict[str, tuple] = {}


@dataclass(frozen=True)
class LabelFolder:
    """What hila_d2's training mapper needs to check a label of a registered folder dataset."""

    dataset: str
    label_dir: str
    num_classes: int
    ignore_label: int


# absolute label folder -> its LabelFolder
_LABEL_FOLDERS: Dict[str, LabelFolder] = {}
# COCO datasets registered here -> whether some annotation has an RLE mask
_COCO_RLE: Dict[str, bool] = {}
# folder datasets whose labels detectron2's DatasetMapper would misread (its "L" conversion turns
# palette colours into gray levels)
_NEEDS_CLASS_ID_READER: Dict[str, bool] = {}


# ---------------------------------------------------------------- small helpers


def _resolve(path) -> str:
    """``path`` with ``~`` and ``$VARS`` expanded, absolute (relative to the working directory)."""
    return os.path.abspath(os.path.expanduser(os.path.expandvars(os.fspath(path))))


def _listed(items: Sequence[str], shown: int = _SHOWN) -> str:
    """The first ``shown`` of ``items``, comma-separated, "and N more" after them."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _many(items: Sequence, noun: str, singular: str, plural: str) -> str:
    """The count of ``items`` as the subject of a verb: "1 label has", "2 labels have"."""
    return f"{_plural(len(items), noun)} {singular if len(items) == 1 else plural}"


def _map_threads(function: Callable, items: Sequence) -> list:
    """``[function(i) for i in items]`` in up to 8 threads (PIL decodes without the GIL)."""
    if len(items) < 16:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, items))


def _oriented_size(image: Image.Image) -> Tuple[int, int]:
    """(width, height) of an opened image as detectron2's ``read_image`` returns it: EXIF
    orientations 5-8 swap the sides. Read from the header; PNG's EXIF only where it precedes the
    pixel data (reading it otherwise would decode the image)."""
    width, height = image.size
    if image.format == "PNG" and "exif" not in image.info:
        return width, height
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF: detectron2 ignores it too
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _image_header(path: str):
    """(width, height) of the image at ``path`` from its header, or the error text."""
    try:
        with Image.open(path) as image:
            return _oriented_size(image)
    except (OSError, ValueError, SyntaxError) as error:
        return f"{type(error).__name__}: {error}"


def _is_gray_palette(image: Image.Image) -> bool:
    """Whether a palette image's colour i is gray level i (then detectron2's "L" conversion
    gives the indices)."""
    palette = image.getpalette() or []
    return all(
        palette[3 * i] == palette[3 * i + 1] == palette[3 * i + 2] == i
        for i in range(len(palette) // 3)
    )


@dataclass
class _LabelHeader:
    width: int = 0
    height: int = 0
    mode: str = ""
    gray_readable: bool = True  # detectron2's DatasetMapper reads the class ids right
    error: str = ""


def _label_header(path: str) -> _LabelHeader:
    try:
        with Image.open(path) as label:
            width, height = _oriented_size(label)
            readable = label.mode == "L" or (label.mode == "P" and _is_gray_palette(label))
            return _LabelHeader(width, height, label.mode, readable)
    except (OSError, ValueError, SyntaxError) as error:
        return _LabelHeader(error=f"{type(error).__name__}: {error}")


def label_values(path: str) -> np.ndarray:
    """The distinct pixel values of the label image at ``path`` (palette images: the indices),
    sorted; read with numpy (a uint8 histogram where it can)."""
    with Image.open(path) as label:
        array = np.asarray(label)
    if array.dtype == np.uint8:
        return np.flatnonzero(np.bincount(array.ravel(), minlength=256))
    return np.unique(array).astype(np.int64)


def _bad_values(values: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    return values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]


def _value_fix(num_classes: int, ignore_label: int) -> str:
    return (
        f"a label pixel must be a class id 0..{num_classes - 1} (the index in the "
        f"{num_classes} classes) or the ignore value {ignore_label}: add the missing classes to "
        f"the class list, or map those values to a class or to {ignore_label} (a 1-based labelling "
        "with 0 for 'unlabeled' maps 0 -> ignore and L -> L - 1, as "
        "datasets/prepare_ade20k_sem_seg.py does)"
    )


def bad_label_values_message(
    label_file: str, bad: Iterable[int], folder: LabelFolder, image_file: str = ""
) -> str:
    """The message of a label with values that are no class of ``folder`` (the mapper's)."""
    of_image = f" (of the image {image_file})" if image_file else ""
    return (
        f"The label {label_file}{of_image} of the dataset {folder.dataset!r} has the values "
        f"{sorted(int(v) for v in bad)[:10]}, which are no class and not the ignore value "
        f"(it changed after the dataset was registered?): "
        + _value_fix(folder.num_classes, folder.ignore_label)
    )


def _check_directory(path: str, given, what: str, problems: List[str]) -> bool:
    if os.path.isdir(path):
        return True
    shown = f"{given}" if os.fspath(given) == path else f"{given} ({path})"
    exists = "is not a directory" if os.path.exists(path) else "does not exist"
    problems.append(
        f"the {what} {shown} {exists}: check the path (relative paths start from the working "
        f"directory, {os.getcwd()})"
    )
    return False


def _files(directory: str, extensions: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """Files under ``directory`` (recursively, hidden ones skipped) with one of ``extensions``
    (case-insensitive): {relative path without extension: relative path}, and the relative paths
    of files that share a key with an earlier one (``a.jpg`` next to ``a.png``)."""
    found: Dict[str, str] = {}
    duplicates: List[str] = []
    for parent, folders, names in os.walk(directory, followlinks=True):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(names):
            stem, extension = os.path.splitext(name)
            if name.startswith(".") or extension.lower() not in extensions:
                continue
            relative = os.path.relpath(os.path.join(parent, name), directory)
            key = os.path.splitext(relative)[0]
            if key in found:
                duplicates.append(f"{found[key]} / {relative}")
            else:
                found[key] = relative
    return found, duplicates


def _raise(dataset: str, what: str, problems: List[str], done: str = "registered") -> None:
    if problems:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise DatasetError(f"The dataset {dataset!r} ({what}) cannot be {done}:\n{listed}")


# ---------------------------------------------------------------- registration bookkeeping


def _check_name(name: str, definition: tuple) -> bool:
    """True when ``name`` is already registered with ``definition`` (nothing to do); DatasetError
    when it is registered otherwise."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"A dataset name must be a non-empty string, got {name!r}")
    if name in _DEFINITIONS and name not in DatasetCatalog:  # removed from the catalog directly
        unregister_dataset(name)
    if name in _DEFINITIONS:
        if _DEFINITIONS[name] == definition:
            return True
        raise DatasetError(
            f"The dataset name {name!r} is already registered with another definition "
            f"({_describe(_DEFINITIONS[name])}; now {_describe(definition)}): give this dataset "
            "another name, or unregister the first (hila_d2.data.unregister_dataset)"
        )
    if name in DatasetCatalog:
        raise DatasetError(
            f"The dataset name {name!r} is already registered in detectron2's DatasetCatalog (a "
            "built-in dataset of detectron2 or hila_d2, or one registered in Python): give your "
            "dataset another name"
        )
    return False


def _describe(definition: tuple) -> str:
    kind, *arguments = definition
    return f"{kind}{tuple(arguments)}"


def registered_here(name: str) -> bool:
    """Whether ``name`` was registered by :mod:`hila_d2.data.sem_seg_folder` or
    :mod:`hila_d2.data.coco_json`."""
    return name in _DEFINITIONS


def unregister_dataset(name: str) -> None:
    """Remove ``name`` from detectron2's catalogs and from this module's records (a no-op for a
    name not registered), so that it can be registered again, e.g. with other files."""
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    _DEFINITIONS.pop(name, None)
    _COCO_RLE.pop(name, None)
    _NEEDS_CLASS_ID_READER.pop(name, None)
    for path in [p for p, folder in _LABEL_FOLDERS.items() if folder.dataset == name]:
        del _LABEL_FOLDERS[path]
