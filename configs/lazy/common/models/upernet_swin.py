"""UperNet over Swin: detectron2's SemanticSegmentor over a Swin encoder (optionally with HILA)
and the UperNet head with its auxiliary FCN head on res4, with the values of
Base-UperNet-Swin.yaml (Swin-T, window 7, HILA off).

YAML key -> lazy key:
  MODEL.HILA_D2_SWIN.{VARIANT, WINDOW_SIZE, DROP_PATH_RATE,   model.backbone.{variant, window_size,
      OUT_FEATURES}                                              drop_path_rate, out_features}
  MODEL.HILA.*                                                model.backbone.hila.* (lower case)
  MODEL.SEM_SEG_HEAD.UPERNET.{CHANNELS, POOL_SCALES}          model.sem_seg_head.{channels,
                                                                 pool_scales}
  MODEL.SEM_SEG_HEAD.AUX.{IN_FEATURE, CHANNELS, LOSS_WEIGHT}  model.sem_seg_head.{aux_input_shape
                                                                 (its one key), aux_channels,
                                                                 aux_loss_weight}
  MODEL.SEM_SEG_HEAD.{NUM_CLASSES, DROPOUT, NORM, ...}        model.sem_seg_head.{num_classes, ...}

YAML builds no auxiliary head when AUX.LOSS_WEIGHT is 0; here that is ``aux_input_shape=None``.
"""

from detectron2.config import LazyCall as L
from detectron2.modeling import SemanticSegmentor

from hila_d2.modeling.backbone.pyramid import STAGE_NAMES
from hila_d2.modeling.backbone.swin import SWIN_VARIANTS
from hila_d2.modeling.heads.upernet_head import UPerNetHead

from .parts import IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, feature_shapes, swin_encoder


def swin_feature_shapes(variant: str, names=STAGE_NAMES):
    """Lazy ``input_shape`` of Swin ``variant``'s stages ``names`` (the width doubles per stage)."""
    embed_dim = SWIN_VARIANTS[variant]["embed_dim"]
    return feature_shapes([embed_dim * 2**i for i in range(len(STAGE_NAMES))], names)


model = L(SemanticSegmentor)(
    backbone=swin_encoder(),
    sem_seg_head=L(UPerNetHead)(
        input_shape=swin_feature_shapes("T"),
        num_classes=150,  # ADE20K; every dataset config sets its own
        channels=512,
        pool_scales=[1, 2, 3, 6],
        dropout=0.1,
        norm="SyncBN",
        ignore_value=255,
        loss_weight=1.0,
        aux_input_shape=swin_feature_shapes("T", ["res4"]),
        aux_channels=256,
        aux_loss_weight=0.4,
    ),
    pixel_mean=IMAGENET_RGB_MEAN,
    pixel_std=IMAGENET_RGB_STD,
)
