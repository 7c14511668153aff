"""UperNet with a plain Swin-T encoder on ADE20K (512x512 crops, whole-image test, batch 32,
160k iterations, AdamW with the poly schedule): the lazy twin of
configs/ade20k/semantic-segmentation/swin/upernet_swin_t_160k.yaml. ``train.init_checkpoint``
is a converted ImageNet Swin checkpoint (tools/convert_pretrained.py).

    python lazyconfig_train_net.py --num-gpus 8 \
        --config-file configs/lazy/ade20k/semantic-segmentation/swin/upernet_swin_t_160k.py \
        train.init_checkpoint=pretrained/swin_tiny_patch4_window7_224.pkl
"""

from ....common.data.ade20k_sem_seg import dataloader
from ....common.models.upernet_swin import model
from ....common.optim import AdamW as optimizer
from ....common.schedules import warmup_poly
from ....common.train import train

# The official HILA-Swin config trains 4 images per GPU and does not fix the GPU count; batch
# 32 assumes 8 GPUs.
dataloader.train.total_batch_size = 32

optimizer.params.head_lr_multiplier = 1.0  # Swin's recipe: one LR everywhere

train.max_iter = 160000
train.checkpointer.period = 16000
train.eval_period = 16000
train.device = "cuda"
train.output_dir = "output/lazy/ade20k/upernet_swin_t_160k"

lr_multiplier = warmup_poly(max_iter=train.max_iter, warmup_iters=1500, warmup_factor=1e-6)
