"""Feature pyramids over the hierarchical encoders, for Mask R-CNN, Panoptic FPN and detectron2's
``SemanticSegmentor``: detectron2's ``build_resnet_fpn_backbone`` with the ResNet replaced.

Each builder returns detectron2's ``FPN`` (``MODEL.FPN.*``) over the encoder's ``res2..res5``
with ``LastLevelMaxPool``, so the outputs are ``p2..p6`` at strides 4..64 with
``MODEL.FPN.OUT_CHANNELS`` channels. HILA is whatever ``MODEL.HILA`` configures in the encoder.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .hatnet import build_hatnet_backbone
from .mit import build_mit_backbone
from .swin import build_swin_backbone
from .timm import build_timm_backbone

__all__ = [
    "build_encoder_fpn",
    "build_hatnet_fpn_backbone",
    "build_mit_fpn_backbone",
    "build_swin_fpn_backbone",
    "build_timm_fpn_backbone",
]


def build_encoder_fpn(cfg, bottom_up: Backbone, out_features_key: str) -> FPN:
    """detectron2's FPN (``MODEL.FPN.{IN_FEATURES,OUT_CHANNELS,NORM,FUSE_TYPE}``) with
    ``LastLevelMaxPool`` over ``bottom_up``. ``out_features_key`` names the encoder's
    ``OUT_FEATURES`` key for the error raised when it lacks a feature the FPN reads."""
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    available = list(bottom_up.output_shape())
    missing = [name for name in in_features if name not in available]
    if not in_features or missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES is {in_features}: it must be a non-empty list of the "
            f"encoder's outputs {available} (set {out_features_key} to include {missing or in_features},"
            " e.g. ['res2', 'res3', 'res4', 'res5'])"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_mit_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME: build_mit_fpn_backbone``: FPN over MiT (``MODEL.MIT.*``, HILA)."""
    return build_encoder_fpn(cfg, build_mit_backbone(cfg, input_shape), "MODEL.MIT.OUT_FEATURES")


@BACKBONE_REGISTRY.register()
def build_swin_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME: build_swin_fpn_backbone``: FPN over Swin (``MODEL.HILA_D2_SWIN.*``, HILA)."""
    return build_encoder_fpn(cfg, build_swin_backbone(cfg, input_shape), "MODEL.HILA_D2_SWIN.OUT_FEATURES")


@BACKBONE_REGISTRY.register()
def build_hatnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME: build_hatnet_fpn_backbone``: FPN over HAT-Net (``MODEL.HATNET.*``,
    HILA)."""
    return build_encoder_fpn(
        cfg, build_hatnet_backbone(cfg, input_shape), "MODEL.HATNET.OUT_FEATURES"
    )


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME: build_timm_fpn_backbone``: FPN over a timm encoder
    (``MODEL.TIMM.*``, HILA)."""
    return build_encoder_fpn(cfg, build_timm_backbone(cfg, input_shape), "MODEL.TIMM.OUT_FEATURES")
