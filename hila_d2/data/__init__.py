"""Datasets, registration and data utilities of hila_d2.

``import hila_d2.data`` registers the built-in datasets (``hila_shapes``, Mapillary Vistas);
``register_sem_seg_folder`` and ``register_coco_json`` register one's own, checked
(``hila_d2.data.sem_seg_folder``, ``hila_d2.data.coco_json``), and
``register_datasets_from_config`` those a config names in ``DATASETS.SEM_SEG_FOLDERS`` /
``DATASETS.COCO_JSONS`` (``hila_d2.data.custom_config``).
"""

from . import builtin  # noqa: F401  (registers datasets)
from . import mapillary_vistas  # noqa: F401  (registers datasets)
from .coco_json import register_coco_json
from .custom_config import register_datasets_from_config, register_datasets_from_lazy_config
from .dataset_files import DatasetError, unregister_dataset
from .sem_seg_folder import register_sem_seg_folder

__all__ = [
    "DatasetError",
    "register_coco_json",
    "register_datasets_from_config",
    "register_datasets_from_lazy_config",
    "register_sem_seg_folder",
    "unregister_dataset",
]
