"""MiT-B0 + HILA S3 (inter-level attention between stages 2 and 3) in Mask R-CNN on the built-in
dataset, the recipe of mask_rcnn_mit_b0.py: the lazy twin of
configs/builtin/instance-segmentation/hila_mask_rcnn_mit_b0_s3.yaml."""

from .mask_rcnn_mit_b0 import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.hila.stages = [3]
train.output_dir = "output/lazy/builtin/hila_mask_rcnn_mit_b0_s3"
