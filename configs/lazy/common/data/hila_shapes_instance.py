"""Data of the built-in instance dataset (hila_shapes: 128x128 images, 4 shape classes, RLE
masks), the values of configs/builtin/instance-segmentation/Base-HilaShapes-InstanceSegmentation.yaml:
detectron2's DatasetMapper with shortest-edge resize to 128 and flip, bitmask instance masks,
batch 4, detectron2's COCOEvaluator writing to ``train.output_dir``/inference.

YAML key -> lazy key: as in hila_shapes_sem_seg.py, plus
  INPUT.{MIN,MAX}_SIZE_TRAIN   dataloader.train.mapper.augmentations[0].{short_edge_length, max_size}
  INPUT.MASK_FORMAT            dataloader.train.mapper.instance_mask_format
  MODEL.MASK_ON                dataloader.train.mapper.use_instance_mask (and the model's mask head)
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="hila_shapes_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=[128], max_size=512, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",
        use_instance_mask=True,
        instance_mask_format="bitmask",
    ),
    total_batch_size=4,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="hila_shapes_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=128, max_size=512, sample_style="choice")
        ],
        image_format="${...train.mapper.image_format}",
        use_instance_mask="${...train.mapper.use_instance_mask}",
        instance_mask_format="${...train.mapper.instance_mask_format}",
    ),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
)
