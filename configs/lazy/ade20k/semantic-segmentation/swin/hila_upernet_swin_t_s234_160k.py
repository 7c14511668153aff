"""UperNet with Swin-T + HILA S234 as the official config declares it: pairs 1-2, 2-3, 3-4,
stride 2 on pair 2-3 (3 Bottom-Up and 2 Top-Down iterations over its 6 blocks), HILA Mix-FFN
ratio 2 and a ratio-2 lower-level block; the recipe of upernet_swin_t_160k.py. The lazy twin of
configs/ade20k/semantic-segmentation/swin/hila_upernet_swin_t_s234_160k.yaml."""

from .upernet_swin_t_160k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.variant = "T"
model.backbone.hila.stages = [2, 3, 4]
model.backbone.hila.strides = [1, 1, 2, 1]
model.backbone.hila.mlp_ratio = 2.0
model.backbone.hila.bottom_mlp_ratio = 2.0
model.backbone.hila.num_heads = 1
model.backbone.hila.info_weights = [0.5, 0.5]
model.backbone.hila.parity_mode = True

train.output_dir = "output/lazy/ade20k/hila_upernet_swin_t_s234_160k"
