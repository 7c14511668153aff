"""SegFormer: detectron2's SemanticSegmentor over a MiT encoder (optionally with HILA) and the
All-MLP decode head, with the values of Base-SegFormer.yaml (MiT-B0, HILA off).

YAML key -> lazy key:
  MODEL.MIT.{VARIANT, OUT_FEATURES, DROP_PATH_RATE, DEPTHS}  model.backbone.{variant, out_features,
                                                                 drop_path_rate, depths}
  MODEL.HILA.*                                                model.backbone.hila.* (lower case)
  MODEL.SEM_SEG_HEAD.{NUM_CLASSES, EMBED_DIM, DROPOUT, NORM,   model.sem_seg_head.{num_classes,
      IGNORE_VALUE, LOSS_WEIGHT}                                 embed_dim, dropout, norm, ...}
  MODEL.SEM_SEG_HEAD.IN_FEATURES                              model.sem_seg_head.input_shape (keys)
  MODEL.PIXEL_{MEAN, STD}                                     model.pixel_{mean, std}

The head's ``input_shape`` (channels and stride of each feature it reads) is written out for the
variant: another variant needs ``mit_feature_shapes(variant)`` for it as well.
"""

from typing import Sequence

from detectron2.config import LazyCall as L
from detectron2.modeling import SemanticSegmentor

from hila_d2.modeling.backbone.mit import MIT_VARIANTS
from hila_d2.modeling.backbone.pyramid import STAGE_NAMES
from hila_d2.modeling.heads.segformer_head import SegFormerHead

from .parts import IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, feature_shapes, mit_encoder


def mit_feature_shapes(variant: str, names: Sequence[str] = STAGE_NAMES):
    """Lazy ``input_shape`` of MiT ``variant``'s stages ``names``, for a head."""
    return feature_shapes(MIT_VARIANTS[variant]["embed_dims"], names)


model = L(SemanticSegmentor)(
    backbone=mit_encoder(),
    sem_seg_head=L(SegFormerHead)(
        input_shape=mit_feature_shapes("B0"),
        num_classes=150,  # ADE20K; every dataset config sets its own
        embed_dim=256,
        dropout=0.1,
        norm="SyncBN",
        ignore_value=255,
        loss_weight=1.0,
    ),
    pixel_mean=IMAGENET_RGB_MEAN,
    pixel_std=IMAGENET_RGB_STD,
)
