"""Training options read by lazyconfig_train_net.py: detectron2's common ``train`` dict (output
directory, iterations, AMP, DDP, checkpoint period, evaluation and log periods, device) plus the
three keys hila_d2 adds.

* ``seed``: the YAML ``SEED`` (-1: a random seed per run); ``default_setup`` seeds every RNG.
* ``weights_optional_keys``: the YAML ``MODEL.WEIGHTS_OPTIONAL_KEYS``, the model keys that
  ``init_checkpoint`` may lack when a training run starts from it (they keep their
  initialisation); ``--resume`` and ``--eval-only`` require every key.
* ``hila_warmup_iters``: the YAML ``SOLVER.HILA_WARMUP_ITERS``, iterations over which the HILA
  pairs fade in (``hila_d2.hooks.HILAWarmup``); 0: off.
"""

from detectron2 import model_zoo
from detectron2.config import get_cfg

from hila_d2.config import add_hila_config

train = model_zoo.get_config("common/train.py").train
train.seed = -1
train.weights_optional_keys = list(add_hila_config(get_cfg()).MODEL.WEIGHTS_OPTIONAL_KEYS)
train.hila_warmup_iters = 0
