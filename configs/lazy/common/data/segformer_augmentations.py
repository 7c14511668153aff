"""SegFormer's training augmentation (the YAML ``INPUT.DATASET_MAPPER_NAME: segformer_semantic``,
hila_d2.data.mappers.build_semantic_train_augmentations) as a list of lazy augmentations for
detectron2's ``DatasetMapper(augmentations=...)``."""

from typing import Sequence

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from hila_d2.data.augmentations import PhotometricDistortion, RandomResizeByRatio


def segformer_train_augmentations(
    base_size: Sequence[int],
    ratio_range: Sequence[float],
    crop_size: Sequence[int],
    single_category_max_area: float = 0.75,
    ignore_value: int = 255,
    photometric_distortion: bool = True,
    crop_type: str = "absolute",
):
    """Random resize by ratio, crop with a maximum single-category area, horizontal flip and
    (optionally) photometric distortion, in that order; the arguments are the YAML
    ``INPUT.{RESIZE_BASE_SIZE, RESIZE_RATIO_RANGE, CROP.SIZE, CROP.SINGLE_CATEGORY_MAX_AREA,
    PHOTOMETRIC_DISTORTION, CROP.TYPE}`` and ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``."""
    augmentations = [
        L(RandomResizeByRatio)(base_size=list(base_size), ratio_range=list(ratio_range)),
        L(T.RandomCrop_CategoryAreaConstraint)(
            crop_type=crop_type,
            crop_size=list(crop_size),
            single_category_max_area=single_category_max_area,
            ignored_category=ignore_value,
        ),
        L(T.RandomFlip)(),
    ]
    if photometric_distortion:
        augmentations.append(L(PhotometricDistortion)())
    return augmentations
