"""ADE20K data (150 classes; prepare it with datasets/prepare_ade20k_sem_seg.py), the values of
configs/ade20k/semantic-segmentation/Base-ADE20K-SemanticSegmentation.yaml over
Base-SegFormer.yaml: SegFormer's augmentation (resize to (2048, 512) by a ratio in [0.5, 2],
512x512 crops, flip, photometric distortion), batch 16, whole-image test at short side 512,
detectron2's SemSegEvaluator writing to ``train.output_dir``/inference. The loaders of
hila_shapes_sem_seg.py (keys as there) with ADE20K's values."""

from .hila_shapes_sem_seg import dataloader
from .segformer_augmentations import segformer_train_augmentations

dataloader.train.dataset.names = "ade20k_sem_seg_train"
dataloader.train.mapper.augmentations = segformer_train_augmentations(
    base_size=(2048, 512),
    ratio_range=(0.5, 2.0),
    crop_size=(512, 512),
    single_category_max_area=0.75,
    photometric_distortion=True,
)
dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 4

dataloader.test.dataset.names = "ade20k_sem_seg_val"
dataloader.test.mapper.augmentations[0].short_edge_length = 512
dataloader.test.mapper.augmentations[0].max_size = 2048
dataloader.test.num_workers = 4
