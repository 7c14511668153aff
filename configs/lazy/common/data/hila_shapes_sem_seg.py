"""Data of the built-in semantic dataset (hila_shapes: 128x128 images, 7 classes), the values of
configs/builtin/semantic-segmentation/Base-HilaShapes-SemanticSegmentation.yaml: SegFormer's
augmentation at native scale without photometric distortion, batch 8, whole-image test,
detectron2's SemSegEvaluator writing to ``train.output_dir``/inference.

YAML key -> lazy key:
  DATASETS.TRAIN / DATASETS.TEST       dataloader.train.dataset.names / dataloader.test.dataset.names
  SOLVER.IMS_PER_BATCH                 dataloader.train.total_batch_size
  DATALOADER.NUM_WORKERS               dataloader.{train,test}.num_workers
  INPUT.FORMAT                         dataloader.train.mapper.image_format (the test mapper follows)
  INPUT.{MIN,MAX}_SIZE_TEST            dataloader.test.mapper.augmentations[0].{short_edge_length,
                                       max_size}
  INPUT.{RESIZE_*, CROP.*, PHOTOMETRIC_DISTORTION}  dataloader.train.mapper.augmentations
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import SemSegEvaluator
from omegaconf import OmegaConf

from .segformer_augmentations import segformer_train_augmentations

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="hila_shapes_train_sem_seg"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=segformer_train_augmentations(
            base_size=(512, 128),
            ratio_range=(1.0, 1.0),
            crop_size=(128, 128),
            single_category_max_area=0.75,
            photometric_distortion=False,
        ),
        image_format="RGB",
    ),
    total_batch_size=8,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="hila_shapes_val_sem_seg", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=128, max_size=512, sample_style="choice")
        ],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)

dataloader.evaluator = L(SemSegEvaluator)(
    dataset_name="${..test.dataset.names}",
    distributed=True,
    output_dir="${train.output_dir}/inference",
)
