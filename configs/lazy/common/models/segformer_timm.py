"""SegFormer over any timm encoder: the model of segformer_mit.py (detectron2's SemanticSegmentor
and the All-MLP decode head, the values of Base-SegFormer.yaml) with the MiT replaced by
``TimmBackbone`` (hila_d2/modeling/backbone/timm/) at the MODEL.TIMM defaults, over
timm's convnext_atto, HILA off.

YAML key -> lazy key (MODEL.SEM_SEG_HEAD.* and MODEL.PIXEL_* as in segformer_mit.py):
  MODEL.BACKBONE.NAME build_timm_backbone     model.backbone = TimmBackbone
  MODEL.TIMM.{NAME, OUT_FEATURES,             model.backbone.{name, out_features,
      DROP_PATH_RATE, FREEZE_AT, KWARGS}         drop_path_rate, freeze_at, model_kwargs}
  MODEL.HILA.*                                model.backbone.hila.* (lower case)

detectron2 gives the YAML head the backbone's ``output_shape()``; here the head's ``input_shape``
is read off the timm model when the file loads (``timm_feature_shapes``). Another timm model, or
``model_kwargs`` that change its widths, needs ``with_timm_encoder`` (which sets both) rather
than an override of ``model.backbone.name`` alone.
"""

from hila_d2.modeling.backbone.pyramid import STAGE_NAMES

from .parts import timm_encoder, timm_feature_shapes
from .segformer_mit import model


def with_timm_encoder(model, name: str, **overrides):
    """Make timm model ``name`` the encoder of the SegFormer config ``model`` (in place), with
    the ``TimmBackbone`` arguments ``overrides`` (``timm_encoder``), and give the head the input
    shapes of the features that encoder returns."""
    model.backbone = timm_encoder(name, **overrides)
    model.sem_seg_head.input_shape = timm_feature_shapes(
        name, overrides.get("out_features", STAGE_NAMES), overrides.get("model_kwargs")
    )
    return model


with_timm_encoder(model, "convnext_atto")
