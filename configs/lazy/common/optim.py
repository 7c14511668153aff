"""AdamW over hila_d2's parameter groups (``hila_d2.solver.get_param_groups``): no weight decay on
normalisation layers (``weight_decay_norm``) and on the parameters that an encoder names in
``no_weight_decay_keywords()`` (Swin's relative position tables), and ``head_lr_multiplier`` on
every parameter outside ``model.backbone``. The groups follow the optimizer's ``lr`` and
``weight_decay``, so overriding ``optimizer.lr=...`` changes every group. As in detectron2's lazy
optimizers, the trainer sets ``optimizer.params.model`` before instantiating ``optimizer``.
"""

import torch
from detectron2.config import LazyCall as L

from hila_d2.solver import get_param_groups

AdamW = L(torch.optim.AdamW)(
    params=L(get_param_groups)(
        # model: set by the trainer
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        weight_decay_norm=0.0,
        head_lr_multiplier=1.0,
    ),
    # the SegFormer recipe (Base-SegFormer.yaml SOLVER.*)
    lr=6e-5,
    betas=(0.9, 0.999),
    weight_decay=0.01,
)
