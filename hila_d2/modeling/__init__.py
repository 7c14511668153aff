"""Models; importing this package registers them with detectron2's registries."""
from .backbone.fpn import (
    build_hatnet_fpn_backbone,
    build_mit_fpn_backbone,
    build_swin_fpn_backbone,
    build_timm_fpn_backbone,
)
from .backbone.hatnet import HATNet, build_hatnet_backbone
from .backbone.mit import MixVisionTransformer, build_mit_backbone
from .backbone.swin import SwinTransformerBackbone, build_swin_backbone
from .backbone.timm import TimmBackbone, build_timm_backbone
from .heads.scale_attention import ScaleAttentionHead
from .heads.segformer_head import SegFormerHead
from .heads.upernet_head import UPerNetHead
from .meta_arch.hmsa import HierarchicalMultiScaleSegmentor
from .meta_arch.sliding_window import SlidingWindowSemanticSegmentor

__all__ = [
    "MixVisionTransformer",
    "build_mit_backbone",
    "SwinTransformerBackbone",
    "build_swin_backbone",
    "HATNet",
    "build_hatnet_backbone",
    "build_mit_fpn_backbone",
    "build_swin_fpn_backbone",
    "build_hatnet_fpn_backbone",
    "TimmBackbone",
    "build_timm_backbone",
    "build_timm_fpn_backbone",
    "SegFormerHead",
    "UPerNetHead",
    "SlidingWindowSemanticSegmentor",
    "ScaleAttentionHead",
    "HierarchicalMultiScaleSegmentor",
]
