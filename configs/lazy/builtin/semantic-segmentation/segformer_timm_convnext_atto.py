"""SegFormer's head over timm ConvNeXt-Atto on the built-in dataset, from random init on CPU: the
lazy twin of configs/builtin/semantic-segmentation/segformer_timm_convnext_atto.yaml, the recipe
of segformer_mit_b0.py (same data, optimizer and schedule) with the encoder replaced.

    python lazyconfig_train_net.py --config-file configs/lazy/builtin/semantic-segmentation/segformer_timm_convnext_atto.py
"""

from ...common.models.segformer_timm import with_timm_encoder
from .segformer_mit_b0 import dataloader, lr_multiplier, model, optimizer, train

with_timm_encoder(model, "convnext_atto")
train.output_dir = "output/lazy/builtin/segformer_timm_convnext_atto"
