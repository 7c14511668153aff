"""HILA (Hierarchical Inter-Level Attention, Leung et al., 2022) for any hierarchical encoder.

A module per concept, each depending only on those before it:

* ``settings``: ``HILASettings`` (the ``MODEL.HILA.*`` keys) and the pair names (``pair_tag``);
* ``attention``: the patch geometry and the Bottom-Up / Top-Down inter-level attention;
* ``blocks``: the Top-Down and Bottom-Up residual blocks and HILA's initialisation;
* ``schedule``: when each step runs between the upper stage's blocks, and which steps the used
  outputs need (``plan_pair``: what a pair builds for the encoder's OUT_FEATURES);
* ``recompute``: activation checkpointing of the steps in training (selective for lower-level
  blocks that do not recompute their own activations, full with ``MODEL.HILA.CHECKPOINT``);
* ``pair``: ``HILAPair``, the blocks of one stage pair running its schedule;
* ``layouts``: the token layouts of encoder blocks (NCHW, NHWC, (B, N, C)) and their conversion
  to HILA's channels-last tokens;
* ``attach``: a pair run inside an encoder's own forward pass through hooks on its modules
  (``StageAccess``: how a pair reaches a stage; ``BlockCall``: how a stage calls its blocks);
* ``encoder``: ``HILAPairs``, an encoder's pairs hooked into its stages, and the "no HILA
  pretraining" copy of a pair's lower-level block at checkpoint loading.

Which stages and pairs an encoder builds for its OUT_FEATURES is planned once for every encoder
in ``hila_d2.modeling.backbone.stage_plan``.
"""

from .attach import BlockCall, StageAccess
from .attention import BottomUpAttention, TopDownAttention, attention_weights
from .blocks import BottomUpBlock, TopDownBlock, init_hila_weights
from .encoder import HILAPairs, init_bottom_blocks_from_lower_stage
from .layouts import Layout
from .pair import HILAPair
from .schedule import PairPlan, hila_schedule, plan_pair
from .settings import HILASettings, pair_tag

__all__ = [
    "HILASettings",
    "pair_tag",
    "BottomUpAttention",
    "TopDownAttention",
    "attention_weights",
    "BottomUpBlock",
    "TopDownBlock",
    "init_hila_weights",
    "PairPlan",
    "hila_schedule",
    "plan_pair",
    "HILAPair",
    "HILAPairs",
    "BlockCall",
    "Layout",
    "StageAccess",
    "init_bottom_blocks_from_lower_stage",
]
