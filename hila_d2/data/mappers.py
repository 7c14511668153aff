"""Dataset mappers chosen by ``INPUT.DATASET_MAPPER_NAME``."""
from typing import List

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

from .augmentations import PhotometricDistortion, RandomResizeByRatio

__all__ = [
    "MAPPER_NAMES",
    "build_detr_crop_train_augmentations",
    "build_semantic_train_augmentations",
    "build_train_mapper",
]

MAPPER_NAMES = ("", "segformer_semantic", "detr_crop")


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
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME`` ("" = detectron2's default)."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name == "segformer_semantic":
        return DatasetMapper(cfg, is_train=True, augmentations=build_semantic_train_augmentations(cfg))
    if name == "detr_crop":
        return DatasetMapper(
            cfg,
            is_train=True,
            augmentations=build_detr_crop_train_augmentations(cfg),
            recompute_boxes=cfg.MODEL.MASK_ON,  # boxes of cropped instances come from their masks
        )
    if name == "":
        return DatasetMapper(cfg, is_train=True)
    raise ValueError(f"INPUT.DATASET_MAPPER_NAME is {name!r}; choose one of {MAPPER_NAMES}")
