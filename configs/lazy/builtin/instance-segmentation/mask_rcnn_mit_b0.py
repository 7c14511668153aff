"""Mask R-CNN with a MiT-B0 FPN on the built-in dataset (4 shape classes of 14-56 px), from random
init on CPU: the lazy twin of configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml.

    python lazyconfig_train_net.py --config-file configs/lazy/builtin/instance-segmentation/mask_rcnn_mit_b0.py
"""

from detectron2.layers import ShapeSpec

from ...common.data.hila_shapes_instance import dataloader
from ...common.models.mask_rcnn_mit import model, with_fpn_channels
from ...common.optim import AdamW as optimizer
from ...common.schedules import warmup_multistep
from ...common.train import train

model.backbone.bottom_up.drop_path_rate = 0.0
# From random init, GroupNorm in the FPN and the mask head (as in detectron2's from-scratch
# configs) and a 2x LR learn much faster in 400 iterations; widths are cut for CPU.
with_fpn_channels(model, 128)  # COCO: 256; the mask head dominates a CPU step
model.backbone.norm = "GN"
# objects are 14-56 px, not COCO's 32-512
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
model.proposal_generator.pre_nms_topk = [1000, 500]  # (training, test), per level
model.proposal_generator.post_nms_topk = [500, 200]
model.roi_heads.num_classes = 4
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.box_predictor.test_topk_per_image = 50  # images hold 2-6 shapes
model.roi_heads.mask_head.conv_dims = [128] * 5  # 4 convs + the deconvolution
model.roi_heads.mask_head.conv_norm = "GN"

optimizer.lr = 6e-4
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = 0.0

train.max_iter = 400
train.checkpointer.period = 200
train.eval_period = 0  # evaluate once, after the last iteration
train.device = "cpu"
train.seed = 1
train.output_dir = "output/lazy/builtin/mask_rcnn_mit_b0"

lr_multiplier = warmup_multistep(
    max_iter=train.max_iter, steps=[320], warmup_iters=50, warmup_factor=0.001
)
