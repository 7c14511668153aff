"""COCO 2017 instances (detectron2's built-in ``coco_2017_{train,val}`` under
$DETECTRON2_DATASETS/coco, see datasets/README.md), the values of
configs/coco/instance-segmentation/Base-COCO-InstanceSegmentation.yaml with the single-scale
input of the Swin-T 1x detection recipe (Base-Swin-T-Detection-1x.yaml): detectron2's
DatasetMapper (``INPUT.DATASET_MAPPER_NAME: ""``) with a shortest-edge resize to 800 (longer side
at most 1333) and flip, polygon instance masks, batch 16, test at short side 800, detectron2's
COCOEvaluator writing to ``train.output_dir``/inference. The loaders of hila_shapes_instance.py
(keys as there) with COCO's values."""

from .hila_shapes_instance import dataloader

dataloader.train.dataset.names = "coco_2017_train"
dataloader.train.mapper.augmentations[0].short_edge_length = [800]
dataloader.train.mapper.augmentations[0].max_size = 1333
dataloader.train.mapper.instance_mask_format = "polygon"  # detectron2's default INPUT.MASK_FORMAT
dataloader.train.total_batch_size = 16  # 8 GPUs x 2 images
dataloader.train.num_workers = 4

dataloader.test.dataset.names = "coco_2017_val"
dataloader.test.mapper.augmentations[0].short_edge_length = 800
dataloader.test.mapper.augmentations[0].max_size = 1333
dataloader.test.num_workers = 4
