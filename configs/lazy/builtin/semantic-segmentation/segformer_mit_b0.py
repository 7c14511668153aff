"""SegFormer (MiT-B0) on the built-in dataset, from random init on CPU: the lazy twin of
configs/builtin/semantic-segmentation/segformer_mit_b0.yaml (same model, data, optimizer and
schedule; 500 iterations of batch 8 at 128x128).

    python lazyconfig_train_net.py --config-file configs/lazy/builtin/semantic-segmentation/segformer_mit_b0.py
"""

from ...common.data.hila_shapes_sem_seg import dataloader
from ...common.models.segformer_mit import model
from ...common.optim import AdamW as optimizer
from ...common.schedules import warmup_poly
from ...common.train import train

model.backbone.drop_path_rate = 0.0
model.sem_seg_head.num_classes = 7
model.sem_seg_head.norm = "BN"  # SyncBN needs GPUs

optimizer.lr = 3e-4  # from scratch: 5x the LR of the ImageNet-pretrained recipe
# the 10x head LR assumes a pretrained encoder; from scratch it stalls
optimizer.params.head_lr_multiplier = 1.0

train.max_iter = 500
train.checkpointer.period = 200
train.eval_period = 0  # evaluate once, after the last iteration
train.device = "cpu"
train.seed = 1
train.output_dir = "output/lazy/builtin/segformer_mit_b0"

lr_multiplier = warmup_poly(max_iter=train.max_iter, warmup_iters=40, warmup_factor=1e-6)
