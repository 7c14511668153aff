"""MiT-B0 + HILA S3 (inter-level attention between stages 2 and 3) on the built-in dataset, the
recipe of segformer_mit_b0.py: the lazy twin of
configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml."""

from .segformer_mit_b0 import dataloader, lr_multiplier, model, optimizer, train

model.backbone.hila.stages = [3]
train.output_dir = "output/lazy/builtin/hila_mit_b0_s3"
