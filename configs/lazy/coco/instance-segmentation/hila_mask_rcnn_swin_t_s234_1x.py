"""Mask R-CNN with Swin-T + HILA S234 on COCO, the recipe of mask_rcnn_swin_t_1x.py with the HILA
settings of configs/coco/HILA-Swin-T-S234.yaml: pairs 1-2, 2-3, 3-4, stride 2 on pair 2-3, HILA
Mix-FFN ratio 2, ratio-4 lower-level blocks copied from each lower stage's last block when
``train.init_checkpoint`` (a plain ImageNet Swin-T checkpoint: no HILA detection checkpoint
exists) is loaded. The lazy twin of
configs/coco/instance-segmentation/hila_mask_rcnn_swin_t_s234_1x.yaml."""

from .mask_rcnn_swin_t_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.hila.stages = [2, 3, 4]
model.backbone.bottom_up.hila.strides = [1, 1, 2, 1]
model.backbone.bottom_up.hila.mlp_ratio = 2.0
model.backbone.bottom_up.hila.bottom_mlp_ratio = 4.0
model.backbone.bottom_up.hila.num_heads = 1
model.backbone.bottom_up.hila.info_weights = [0.5, 0.5]
model.backbone.bottom_up.hila.parity_mode = True
model.backbone.bottom_up.hila.init_bottom_from_lower_stage = True

train.output_dir = "output/lazy/coco/hila_mask_rcnn_swin_t_s234_1x"
