"""timm ConvNeXt-Atto + HILA S3 (inter-level attention between stages 2 and 3) + SegFormer head
on the built-in dataset, the recipe of segformer_timm_convnext_atto.py: the lazy twin of
configs/builtin/semantic-segmentation/hila_segformer_timm_convnext_atto_s3.yaml."""

from .segformer_timm_convnext_atto import dataloader, lr_multiplier, model, optimizer, train

model.backbone.hila.stages = [3]
train.output_dir = "output/lazy/builtin/hila_segformer_timm_convnext_atto_s3"
