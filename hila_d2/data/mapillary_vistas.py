"""Registration of Mapillary Vistas v1.2 semantic segmentation (65 classes), HMSA's second
dataset, as ``mapillary_vistas_sem_seg_{train,val}`` under ``$DETECTRON2_DATASETS``.

Layout (datasets/README.md; ``labels_detectron2`` is written by
``datasets/prepare_mapillary_vistas_sem_seg.py``)::

    mapillary_vistas/
      config.json                          (or config_v1.2.json) the 66 labels, "Unlabeled" last
      training/images/*.jpg
      training/labels/*.png                (or training/v1.2/labels) palette PNGs, ids 0..65
      training/labels_detectron2/*.png     8-bit gray, ids 0..64, Unlabeled (65) -> 255
      validation/...                       the same

The datasets are folder datasets of :func:`hila_d2.data.sem_seg_folder.register_sem_seg_folder`,
registered lazily: importing hila_d2 reads nothing; the files are listed and their pairs and
sizes checked when a dataset is first loaded (the label values, 20k large PNGs, are not read
then; hila_d2's training mapper checks each label it reads). The class names are the 65
``readable`` names of v1.2's ``config.json`` (``void--unlabeled`` is the ignore value); the
colours are read from ``config.json`` when a dataset is loaded.
"""

import json
import logging
import os
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .dataset_files import DatasetError, registered_here, unregister_dataset
from .sem_seg_folder import register_sem_seg_folder

__all__ = [
    "MAPILLARY_VISTAS_CLASSES",
    "MAPILLARY_VISTAS_SPLITS",
    "find_config",
    "register_all_mapillary_vistas",
]

logger = logging.getLogger(__name__)

# The 65 evaluated classes of Mapillary Vistas v1.2 (the "readable" names of its config.json, in
# label id order); label 65, "Unlabeled" (void--unlabeled), is not a class.
MAPILLARY_VISTAS_CLASSES = [
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane",
    "Crosswalk - Plain", "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road",
    "Service Lane", "Sidewalk", "Bridge", "Building", "Tunnel", "Person", "Bicyclist",
    "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk", "Lane Marking - General",
    "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner", "Bench",
    "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box",
    "Mailbox", "Manhole", "Phone Booth", "Pothole", "Street Light", "Pole", "Traffic Sign Frame",
    "Utility Pole", "Traffic Light", "Traffic Sign (Back)", "Traffic Sign (Front)", "Trash Can",
    "Bicycle", "Boat", "Bus", "Car", "Caravan", "Motorcycle", "On Rails", "Other Vehicle",
    "Trailer", "Truck", "Wheeled Slow", "Car Mount", "Ego Vehicle",
]  # fmt: skip
UNLABELED_ID = 65  # in the original labels
IGNORE_LABEL = 255  # in labels_detectron2
# dataset split -> folder
MAPILLARY_VISTAS_SPLITS = {"train": "training", "val": "validation"}
CONFIG_NAMES = ("config.json", "config_v1.2.json")
LABEL_DIR = "labels_detectron2"


def find_config(root: str) -> Optional[str]:
    """The label config (``config.json`` or ``config_v1.2.json``) of ``<root>``, or None."""
    for name in CONFIG_NAMES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


def _colors(root: str, name: str) -> Optional[List[List[int]]]:
    """The 65 class colours of the dataset's config.json (None without one); DatasetError when
    it describes other classes (another version of the dataset)."""
    path = find_config(root)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        labels = json.load(f)["labels"]
    names = [label.get("readable", label.get("name")) for label in labels]
    if len(labels) != len(MAPILLARY_VISTAS_CLASSES) + 1:
        raise DatasetError(
            f"{path} describes {len(labels)} labels, but {name!r} is Mapillary Vistas v1.2 (65 "
            "classes and 'Unlabeled'): for v2.0 downloads, use config_v1.2.json and the v1.2 "
            "labels (datasets/prepare_mapillary_vistas_sem_seg.py finds them)"
        )
    differ = [f"{a!r} / {b!r}" for a, b in zip(MAPILLARY_VISTAS_CLASSES, names) if a != b]
    if differ:
        logger.warning(
            "%s names %d classes differently (ours / its): %s", path, len(differ), differ[:5]
        )
    return [list(label["color"]) for label in labels[: len(MAPILLARY_VISTAS_CLASSES)]]


def register_all_mapillary_vistas(
    root: str, name_prefix: str = "mapillary_vistas_sem_seg"
) -> List[str]:
    """Register ``{name_prefix}_train`` and ``_val`` from ``<root>/mapillary_vistas`` (lazily:
    nothing is read now). Idempotent; returns the names."""
    base = os.path.join(root, "mapillary_vistas")
    names = []
    for split, folder in MAPILLARY_VISTAS_SPLITS.items():
        name = f"{name_prefix}_{split}"
        image_dir = os.path.join(base, folder, "images")
        label_dir = os.path.join(base, folder, LABEL_DIR)
        names.append(name)
        again = registered_here(name)
        register_sem_seg_folder(
            name,
            image_dir,
            label_dir,
            MAPILLARY_VISTAS_CLASSES,
            IGNORE_LABEL,
            check_label_values=False,
            lazy=True,
        )  # a no-op when registered before with the same folders, else a DatasetError
        if again:
            continue
        load = DatasetCatalog[name]
        DatasetCatalog.remove(name)
        DatasetCatalog.register(
            name,
            lambda load=load, name=name, base=base, label_dir=label_dir: _load(
                load, name, base, label_dir
            ),
        )
    return names


def _load(load, name: str, base: str, label_dir: str) -> List[dict]:
    """The folder dataset's records, after checking that the prepare script ran; the colours of
    config.json into the metadata."""
    if not os.path.isdir(base):
        raise DatasetError(
            f"Mapillary Vistas ({name!r}) is not at {base}: download v1.2 there and run "
            "python datasets/prepare_mapillary_vistas_sem_seg.py (datasets/README.md), or set "
            "DETECTRON2_DATASETS to the folder that holds mapillary_vistas/"
        )
    if not os.path.isdir(label_dir):
        raise DatasetError(
            f"{label_dir} does not exist: run python datasets/prepare_mapillary_vistas_sem_seg.py "
            "(it writes the labels with 'Unlabeled' as 255) with the same DETECTRON2_DATASETS"
        )
    records = load()
    metadata = MetadataCatalog.get(name)
    if metadata.get("stuff_colors", None) is None:
        colors = _colors(base, name)
        if colors is not None:
            metadata.stuff_colors = colors
    return records


def unregister_all_mapillary_vistas(name_prefix: str) -> None:
    """Remove what :func:`register_all_mapillary_vistas` registered under ``name_prefix``."""
    for split in MAPILLARY_VISTAS_SPLITS:
        unregister_dataset(f"{name_prefix}_{split}")


register_all_mapillary_vistas(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
