"""Dataset mappers chosen by ``INPUT.DATASET_MAPPER_NAME``, all built on
:class:`CheckedDatasetMapper` (detectron2's ``DatasetMapper`` whose semantic labels are read as
class ids and checked against their image, naming the files)."""

import copy
from typing import List

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from . import dataset_files, sem_seg_folder
from .augmentations import PhotometricDistortion, RandomResizeByRatio
from .dataset_files import DatasetError

__all__ = [
    "CheckedDatasetMapper",
    "MAPPER_NAMES",
    "build_detr_crop_train_augmentations",
    "build_semantic_train_augmentations",
    "build_train_mapper",
]

MAPPER_NAMES = ("", "segformer_semantic", "detr_crop")


def read_label(label_file: str, image_file: str = "") -> np.ndarray:
    """The (H, W) class ids of the label image ``label_file`` as detectron2's ``SemSegEvaluator``
    reads them: palette PNGs give their indices, 16-bit PNGs their values (``DatasetMapper``
    converts to 8-bit gray levels instead). DatasetError naming the file (and ``image_file``)
    for a colour image."""
    label = utils.read_image(label_file)  # no conversion; EXIF orientation as for the image
    if label.ndim != 2:
        of_image = f" of the image {image_file}" if image_file else ""
        raise DatasetError(
            f"The label {label_file}{of_image} is a colour image ({label.shape[2]} channels), not "
            "class ids: a label PNG holds one class id per pixel (8- or 16-bit grayscale, or a "
            "palette PNG whose indices are the ids)"
        )
    return label.astype(np.uint8) if label.dtype == bool else label


class CheckedDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` (same arguments, same attributes, same output), whose
    semantic label (``sem_seg_file_name``):

    * is read as class ids (:func:`read_label`), as ``SemSegEvaluator`` reads it, where
      ``DatasetMapper``'s conversion to 8-bit gray turns palette colours into gray levels;
    * must have its image's size: otherwise a DatasetError names both files and sizes (instead
      of a bare AssertionError from a transform inside a DataLoader worker);
    * of a folder dataset registered by ``hila_d2.data.sem_seg_folder``, must hold that
      dataset's class ids or its ignore value: otherwise a DatasetError names the file and the
      values (instead of an index error in the loss). Registration checked them; this catches
      files changed since.
    """

    def __call__(self, dataset_dict):
        if "sem_seg_file_name" not in dataset_dict:
            return super().__call__(dataset_dict)
        dataset_dict = copy.deepcopy(dataset_dict)
        image_file = dataset_dict["file_name"]
        image = utils.read_image(image_file, format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        label_file = dataset_dict.pop("sem_seg_file_name")
        sem_seg = read_label(label_file, image_file)
        if sem_seg.shape != image.shape[:2]:
            raise DatasetError(
                f"The label {label_file} is {sem_seg.shape[1]}x{sem_seg.shape[0]} (width x "
                f"height) but its image {image_file} is {image.shape[1]}x{image.shape[0]}: a "
                "label must have its image's size (re-export it, or resize it with "
                "nearest-neighbour interpolation)"
            )
        folder = sem_seg_folder.label_folder_of(label_file)
        if folder is not None:
            bad = (sem_seg >= folder.num_classes) & (sem_seg != folder.ignore_label)
            if sem_seg.dtype.kind == "i":
                bad |= sem_seg < 0
            if bad.any():
                raise DatasetError(
                    dataset_files.bad_label_values_message(
                        label_file, np.unique(sem_seg[bad]), folder, image_file
                    )
                )

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def __getstate__(self):
        # a DataLoader worker started by spawning (not forking) gets the registered label
        # folders with the mapper
        return {**self.__dict__, "_label_folders": sem_seg_folder.label_folders()}

    def __setstate__(self, state):
        state = dict(state)
        sem_seg_folder.add_label_folders(state.pop("_label_folders", {}))
        self.__dict__.update(state)


def build_semantic_train_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """SegFormer's training pipeline: random resize by ratio, crop with a maximum single-category
    area, horizontal flip, photometric distortion (in that order, as mmseg)."""
    augs: List[T.Augmentation] = [
        RandomResizeByRatio(cfg.INPUT.RESIZE_BASE_SIZE, cfg.INPUT.RESIZE_RATIO_RANGE)
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    augs.append(T.RandomFlip())
    if cfg.INPUT.PHOTOMETRIC_DISTORTION:
        augs.append(PhotometricDistortion())
    return augs


def build_detr_crop_train_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """Flip, then with probability ``INPUT.DETR_CROP.PROB`` a resize (shorter side drawn from
    ``INPUT.DETR_CROP.MIN_SIZES``) and a random crop ``INPUT.CROP.{TYPE,SIZE}``, then the
    shortest-edge resize ``INPUT.{MIN,MAX}_SIZE_TRAIN``: DETR's policy, used by Swin's 3x
    detection recipe."""
    resize_and_crop = T.AugmentationList(
        [
            T.ResizeShortestEdge(cfg.INPUT.DETR_CROP.MIN_SIZES, sample_style="choice"),
            T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
        ]
    )
    return [
        T.RandomFlip(),
        T.RandomApply(resize_and_crop, prob=cfg.INPUT.DETR_CROP.PROB),
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        ),
    ]


def build_train_mapper(cfg: CfgNode) -> DatasetMapper:
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME`` ("" = detectron2's default),
    a :class:`CheckedDatasetMapper`."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name == "segformer_semantic":
        return CheckedDatasetMapper(
            cfg, is_train=True, augmentations=build_semantic_train_augmentations(cfg)
        )
    if name == "detr_crop":
        return CheckedDatasetMapper(
            cfg,
            is_train=True,
            augmentations=build_detr_crop_train_augmentations(cfg),
            recompute_boxes=cfg.MODEL.MASK_ON,  # boxes of cropped instances come from their masks
        )
    if name == "":
        return CheckedDatasetMapper(cfg, is_train=True)
    raise ValueError(f"INPUT.DATASET_MAPPER_NAME is {name!r}; choose one of {MAPPER_NAMES}")
