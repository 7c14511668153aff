"""ADE20K data (150 classes; prepare it with datasets/prepare_ade20k_sem_seg.py), the values of
configs/ade20k/semantic-segmentation/Base-ADE20K-SemanticSegmentation.yaml over
Base-SegFormer.yaml: SegFormer's augmentation (resize to (2048, 512) by a ratio in [0.5, 2],
512x512 crops, flip, photometric distortion), batch 16, whole-image test at short side 512,
detectron2's SemSegEvaluator writing to ``train.output_dir``/inference. Keys as in
hila_shapes_sem_seg.py."""

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
    dataset=L(get_detection_dataset_dicts)(names="ade20k_sem_seg_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=segformer_train_augmentations(
            base_size=(2048, 512),
            ratio_range=(0.5, 2.0),
            crop_size=(512, 512),
            single_category_max_area=0.75,
            photometric_distortion=True,
        ),
        image_format="RGB",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="ade20k_sem_seg_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=512, max_size=2048, sample_style="choice")
        ],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(SemSegEvaluator)(
    dataset_name="${..test.dataset.names}",
    distributed=True,
    output_dir="${train.output_dir}/inference",
)
