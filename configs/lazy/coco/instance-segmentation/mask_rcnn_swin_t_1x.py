"""Mask R-CNN with a plain Swin-T FPN on COCO, Swin's 1x detection recipe (mmdetection's
mask_rcnn_swin-t-p4-w7_fpn_1x_coco): AdamW lr 1e-4, weight decay 0.05 (none on norms and
relative position tables), one LR everywhere, linear warm-up over 500 iterations, LR x0.1 at
60k and 80k of 90k iterations at batch 16, single-scale 800 training. The lazy twin of
configs/coco/instance-segmentation/mask_rcnn_swin_t_1x.yaml. ``train.init_checkpoint`` is an
ImageNet Swin-T checkpoint converted with ``--fpn`` (the encoder of an FPN model is detectron2's
``backbone.bottom_up``):

    python tools/convert_pretrained.py --fpn \
        swin_tiny_patch4_window7_224.pth pretrained/swin_t_fpn.pkl
    python lazyconfig_train_net.py --num-gpus 8 \
        --config-file configs/lazy/coco/instance-segmentation/mask_rcnn_swin_t_1x.py \
        train.init_checkpoint=pretrained/swin_t_fpn.pkl
"""

from ...common.data.coco_instance import dataloader
from ...common.models.mask_rcnn_swin import model
from ...common.optim import AdamW as optimizer
from ...common.schedules import warmup_multistep
from ...common.train import train

model.roi_heads.num_classes = 80  # COCO (detectron2's lazy Mask R-CNN already has 80)

optimizer.lr = 1e-4
optimizer.weight_decay = 0.05
optimizer.params.weight_decay_norm = 0.0
optimizer.params.head_lr_multiplier = 1.0  # Swin's recipe: one LR everywhere

train.max_iter = 90000  # 12 COCO epochs at batch 16
train.checkpointer.period = 10000
train.eval_period = 10000
train.device = "cuda"
train.output_dir = "output/lazy/coco/mask_rcnn_swin_t_1x"

lr_multiplier = warmup_multistep(
    max_iter=train.max_iter, steps=[60000, 80000], warmup_iters=500, warmup_factor=0.001
)
