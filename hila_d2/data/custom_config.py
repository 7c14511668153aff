"""The datasets a config registers, without Python: ``DATASETS.SEM_SEG_FOLDERS`` and
``DATASETS.COCO_JSONS`` of a YAML config, the ``datasets`` node of a LazyConfig.

YAML (``hila_d2.config.add_datasets_config``)::

    DATASETS:
      TRAIN: ("my_train",)
      TEST: ("my_val",)
      SEM_SEG_FOLDERS:
        SPLITS: (("my_train", "data/train/images", "data/train/labels"),
                 ("my_val", "data/val/images", "data/val/labels"))
        CLASSES: ("background", "road", "car")
        IGNORE_LABEL: 255
      COCO_JSONS:
        SPLITS: (("my_instances_train", "data/train.json", "data/train/images"),)

LazyConfig (read by ``lazyconfig_train_net.py``; every part optional)::

    datasets = dict(
        sem_seg_folders=dict(splits=[("my_train", "data/train/images", "data/train/labels")],
                             classes=["background", "road", "car"], ignore_label=255),
        coco_jsons=dict(splits=[("my_instances_train", "data/train.json", "data/train/images")]),
    )

:func:`check_dataset_keys` checks the keys without touching data (``hila_d2.validate_config``
calls it): each split is (name, folder or file, folder), names are unique, the classes are names,
and a semantic segmentation model predicts ``len(CLASSES)`` classes with the ignore value
``IGNORE_LABEL`` (``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` / ``IGNORE_VALUE``: one error naming both
keys; nothing is changed silently). :func:`register_datasets_from_config` and
:func:`register_datasets_from_lazy_config` then register them with ``hila_d2.data.sem_seg_folder``
and ``hila_d2.data.coco_json`` (checking the files) and check the COCO categories against the
detector's class count and RLE masks against the mask format. Paths are relative to the working
directory; ``~`` and ``$VARIABLES`` are expanded.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet, SemanticSegmentor
from omegaconf import OmegaConf

from .coco_json import coco_json_has_rle, register_coco_json
from .dataset_files import DatasetError, registered_here
from .sem_seg_folder import needs_class_id_reader, register_sem_seg_folder

__all__ = [
    "YAML_KEYS",
    "LAZY_KEYS",
    "check_dataset_keys",
    "check_lazy_dataset_keys",
    "register_datasets_from_config",
    "register_datasets_from_lazy_config",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Keys:
    """The names of the dataset keys in one config system (for messages)."""

    folders: str
    classes: str
    ignore: str
    coco: str
    num_classes: str
    ignore_value: str
    roi_classes: str
    retinanet_classes: str
    mask_format: str


YAML_KEYS = _Keys(
    folders="DATASETS.SEM_SEG_FOLDERS.SPLITS",
    classes="DATASETS.SEM_SEG_FOLDERS.CLASSES",
    ignore="DATASETS.SEM_SEG_FOLDERS.IGNORE_LABEL",
    coco="DATASETS.COCO_JSONS.SPLITS",
    num_classes="MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    ignore_value="MODEL.SEM_SEG_HEAD.IGNORE_VALUE",
    roi_classes="MODEL.ROI_HEADS.NUM_CLASSES",
    retinanet_classes="MODEL.RETINANET.NUM_CLASSES",
    mask_format="INPUT.MASK_FORMAT",
)
LAZY_KEYS = _Keys(
    folders="datasets.sem_seg_folders.splits",
    classes="datasets.sem_seg_folders.classes",
    ignore="datasets.sem_seg_folders.ignore_label",
    coco="datasets.coco_jsons.splits",
    num_classes="model.sem_seg_head.num_classes",
    ignore_value="model.sem_seg_head.ignore_value",
    roi_classes="model.roi_heads.num_classes",
    retinanet_classes="model.num_classes",
    mask_format="dataloader.train.mapper.instance_mask_format",
)


@dataclass
class _Datasets:
    """The datasets a config asks for, in plain Python values."""

    folders: List[Tuple[str, str, str]] = field(default_factory=list)
    classes: List[str] = field(default_factory=list)
    ignore_label: Any = 255
    coco: List[Tuple[str, str, str]] = field(default_factory=list)


def _is_sequence(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _splits(value, key: str, example: str) -> List[Tuple[str, str, str]]:
    """The (name, path, path) splits of ``value`` (a sequence of 3-string sequences; one split
    given flat, as yacs reads ``(("a", "x", "y"))``, is accepted); DatasetError naming ``key``."""
    value = list(value) if _is_sequence(value) else value
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value):
        value = [value]  # one split written without its trailing comma
    if not isinstance(value, list) or not all(
        _is_sequence(split) and len(split) == 3 and all(isinstance(s, str) and s for s in split)
        for split in value
    ):
        raise DatasetError(
            f"{key} must be a list of (name, {example}) triples of non-empty strings, one per "
            f"split, e.g. (('my_train', ...), ('my_val', ...)); got {value!r}"
        )
    return [tuple(split) for split in value]


def _read(folders, classes, ignore_label, coco, keys: _Keys) -> _Datasets:
    datasets = _Datasets(
        folders=_splits(folders, keys.folders, "image_dir, label_dir"),
        classes=list(classes) if _is_sequence(classes) else classes,
        ignore_label=ignore_label,
        coco=_splits(coco, keys.coco, "json_file, image_root"),
    )
    names = [split[0] for split in datasets.folders + datasets.coco]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(
            f"The dataset names {repeated} are given twice in {keys.folders} / {keys.coco}: each "
            "split needs its own name"
        )
    if datasets.folders:
        if (
            not isinstance(datasets.classes, list)
            or not datasets.classes
            or not all(isinstance(c, str) and c for c in datasets.classes)
        ):
            raise DatasetError(
                f"{keys.folders} registers {[s[0] for s in datasets.folders]}, so {keys.classes} "
                "must list the class names, in the order of the label ids (id 0 first), e.g. "
                f"('background', 'road', 'car'); got {classes!r}"
            )
        if isinstance(ignore_label, bool) or not isinstance(ignore_label, int):
            raise DatasetError(
                f"{keys.ignore} must be an integer (usually 255), got {ignore_label!r}"
            )
    return datasets


def _check_semantic_model(datasets: _Datasets, num_classes, ignore_value, keys: _Keys) -> None:
    """DatasetError naming both keys where a semantic model's class count or ignore value
    differs from the folder datasets'."""
    if not datasets.folders:
        return
    count = len(datasets.classes)
    if num_classes is not None and num_classes != count:
        raise DatasetError(
            f"{keys.classes} names {count} classes but {keys.num_classes} is {num_classes}: the "
            f"model must predict the dataset's classes; set {keys.num_classes} to {count} (or "
            f"correct {keys.classes})"
        )
    if ignore_value is not None and ignore_value != datasets.ignore_label:
        raise DatasetError(
            f"{keys.ignore} is {datasets.ignore_label} but {keys.ignore_value} is {ignore_value}: "
            "the model would train on the dataset's ignored pixels; set both to the same value"
        )


def _yaml_datasets(cfg: CfgNode) -> _Datasets:
    node = cfg.DATASETS
    if "SEM_SEG_FOLDERS" not in node or "COCO_JSONS" not in node:
        return _Datasets()  # a config without hila_d2's keys
    folders = node.SEM_SEG_FOLDERS
    return _read(
        folders.SPLITS, folders.CLASSES, folders.IGNORE_LABEL, node.COCO_JSONS.SPLITS, YAML_KEYS
    )


def _meta_architecture(cfg: CfgNode) -> Optional[type]:
    name = cfg.MODEL.META_ARCHITECTURE
    return META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None


def check_dataset_keys(cfg: CfgNode) -> None:
    """Check ``DATASETS.SEM_SEG_FOLDERS`` / ``COCO_JSONS`` of a YAML config without touching
    data; with a semantic segmentation meta-architecture, also ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``
    and ``IGNORE_VALUE`` against ``CLASSES`` and ``IGNORE_LABEL``. DatasetError naming the keys."""
    datasets = _yaml_datasets(cfg)
    meta_arch = _meta_architecture(cfg)
    if meta_arch is not None and issubclass(meta_arch, SemanticSegmentor):
        head = cfg.MODEL.SEM_SEG_HEAD
        _check_semantic_model(datasets, head.NUM_CLASSES, head.IGNORE_VALUE, YAML_KEYS)


def _register(datasets: _Datasets, check_label_values: bool) -> List[str]:
    for name, image_dir, label_dir in datasets.folders:
        register_sem_seg_folder(
            name,
            image_dir,
            label_dir,
            datasets.classes,
            datasets.ignore_label,
            check_label_values=check_label_values,
        )
    for name, json_file, image_root in datasets.coco:
        register_coco_json(name, json_file, image_root)
    return [split[0] for split in datasets.folders + datasets.coco]


def _check_detector(
    datasets: _Datasets, train_names: Sequence[str], num_classes, classes_key: str,
    mask_format, masks: bool, keys: _Keys,
) -> None:  # fmt: skip
    """The detector's class count against the categories of the COCO datasets it trains on, and
    RLE masks against the polygon mask format."""
    for name, json_file, _ in datasets.coco:
        if name not in train_names:
            continue
        classes = MetadataCatalog.get(name).thing_classes
        if num_classes is not None and num_classes != len(classes):
            raise DatasetError(
                f"The COCO dataset {name!r} ({json_file}) has {len(classes)} categories "
                f"{classes[:10]} but {classes_key} is {num_classes}: set {classes_key} to "
                f"{len(classes)}"
            )
        if masks and mask_format == "polygon" and coco_json_has_rle(name):
            raise DatasetError(
                f"The COCO dataset {name!r} ({json_file}) has RLE masks, which detectron2 reads "
                f"as bitmasks only: set {keys.mask_format} to 'bitmask'"
            )


def register_datasets_from_config(cfg: CfgNode, check_label_values: bool = True) -> List[str]:
    """Register the datasets of ``DATASETS.SEM_SEG_FOLDERS`` and ``DATASETS.COCO_JSONS`` (again:
    a no-op; a different definition under a registered name: DatasetError), after
    :func:`check_dataset_keys`; then check the detector's class count and mask format against the
    COCO datasets of ``DATASETS.TRAIN``. Returns the names."""
    check_dataset_keys(cfg)
    datasets = _yaml_datasets(cfg)
    names = _register(datasets, check_label_values)
    _warn_unused(names, (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST), "DATASETS.TRAIN / DATASETS.TEST")
    meta_arch = _meta_architecture(cfg)
    if datasets.coco and meta_arch is not None:
        if issubclass(meta_arch, GeneralizedRCNN):
            count, key = cfg.MODEL.ROI_HEADS.NUM_CLASSES, YAML_KEYS.roi_classes
        elif issubclass(meta_arch, RetinaNet):
            count, key = cfg.MODEL.RETINANET.NUM_CLASSES, YAML_KEYS.retinanet_classes
        else:
            return names
        _check_detector(
            datasets, cfg.DATASETS.TRAIN, count, key, cfg.INPUT.MASK_FORMAT, cfg.MODEL.MASK_ON,
            YAML_KEYS,
        )  # fmt: skip
    return names


def _warn_unused(names: Sequence[str], used: Sequence[str], keys: str) -> None:
    unused = [name for name in names if name not in used]
    if unused:
        logger.warning("The datasets %s are registered but not in %s", unused, keys)


# ---------------------------------------------------------------- LazyConfig


def _select(cfg, dotted: str, default=None):
    return OmegaConf.select(cfg, dotted, default=default)


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _lazy_datasets(cfg) -> _Datasets:
    node = _select(cfg, "datasets")
    if node is None:
        return _Datasets()
    folders = _plain(_select(cfg, "datasets.sem_seg_folders", {})) or {}
    coco = _plain(_select(cfg, "datasets.coco_jsons", {})) or {}
    if not isinstance(folders, dict) or not isinstance(coco, dict):
        raise DatasetError(
            "datasets.sem_seg_folders and datasets.coco_jsons must be dicts, e.g. "
            "datasets.sem_seg_folders=dict(splits=[...], classes=[...], ignore_label=255)"
        )
    unknown = sorted(set(folders) - {"splits", "classes", "ignore_label"}) + sorted(
        set(coco) - {"splits"}
    )
    if unknown:
        raise DatasetError(
            f"Unknown keys {unknown} in datasets.sem_seg_folders / datasets.coco_jsons: they take "
            "splits, classes, ignore_label / splits"
        )
    return _read(
        folders.get("splits", []),
        folders.get("classes", []),
        folders.get("ignore_label", 255),
        coco.get("splits", []),
        LAZY_KEYS,
    )


def check_lazy_dataset_keys(cfg) -> None:
    """:func:`check_dataset_keys` for the ``datasets`` node of a LazyConfig, against
    ``model.sem_seg_head.num_classes`` / ``ignore_value`` where the model has a semantic head."""
    datasets = _lazy_datasets(cfg)
    if _select(cfg, "model.sem_seg_head") is not None:
        _check_semantic_model(
            datasets,
            _select(cfg, "model.sem_seg_head.num_classes"),
            _select(cfg, "model.sem_seg_head.ignore_value"),
            LAZY_KEYS,
        )


def _names(value) -> List[str]:
    value = _plain(value)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def register_datasets_from_lazy_config(cfg, check_label_values: bool = True) -> List[str]:
    """Register the datasets of a LazyConfig's ``datasets`` node as
    :func:`register_datasets_from_config` does, after :func:`check_lazy_dataset_keys`; a folder
    dataset of ``dataloader.train.dataset.names`` whose labels detectron2's ``DatasetMapper``
    would misread (colour palette, 1- or 16-bit PNGs) must be read by
    ``hila_d2.data.mappers.CheckedDatasetMapper``."""
    check_lazy_dataset_keys(cfg)
    datasets = _lazy_datasets(cfg)
    names = _register(datasets, check_label_values)
    train = _names(_select(cfg, "dataloader.train.dataset.names"))
    test = _names(_select(cfg, "dataloader.test.dataset.names"))
    _warn_unused(names, train + test, "dataloader.train / dataloader.test")
    _check_lazy_mapper(cfg, [n for n in train if registered_here(n)])
    if datasets.coco and _select(cfg, "model.roi_heads") is not None:
        _check_detector(
            datasets, train, _select(cfg, "model.roi_heads.num_classes"), LAZY_KEYS.roi_classes,
            _select(cfg, LAZY_KEYS.mask_format, "polygon"),
            _select(cfg, "model.roi_heads.mask_head") is not None, LAZY_KEYS,
        )  # fmt: skip
    return names


def _check_lazy_mapper(cfg, folder_names: List[str]) -> None:
    target = _select(cfg, "dataloader.train.mapper._target_")
    if target not in (DatasetMapper, "detectron2.data.DatasetMapper"):
        return
    for name in folder_names:
        if name in DatasetCatalog:
            DatasetCatalog.get(name)  # a lazy folder dataset is checked when first loaded
        if needs_class_id_reader(name):
            raise DatasetError(
                f"The labels of {name!r} are palette (with colours), 1-bit or 16-bit PNGs, which "
                "detectron2's DatasetMapper misreads (it converts them to gray levels): set "
                "dataloader.train.mapper._target_=hila_d2.data.mappers.CheckedDatasetMapper, "
                "which reads their class ids"
            )
