"""Pieces shared by the lazy model configs: the input normalisation, the head ``input_shape`` of
an encoder's stages, and HILA settings with every field spelled out."""

from typing import Any, Mapping, Optional, Sequence

import torch
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.backbone.pyramid import STAGE_NAMES, STAGE_STRIDES
from hila_d2.modeling.backbone.swin import SwinTransformerBackbone
from hila_d2.modeling.backbone.timm import TimmBackbone
from hila_d2.modeling.hila import HILASettings

# ImageNet mean/std in RGB order, 0-255 scale (MiT and Swin were pretrained on RGB images); the
# data mappers read images as RGB (image_format="RGB")
IMAGENET_RGB_MEAN = [123.675, 116.28, 103.53]
IMAGENET_RGB_STD = [58.395, 57.12, 57.375]


def feature_shapes(channels: Sequence[int], names: Sequence[str] = STAGE_NAMES):
    """Lazy ``{name: ShapeSpec(channels=..., stride=...)}`` of the encoder stages ``names``
    (res2..res5 at strides 4..32); ``channels`` lists the widths of all four stages."""
    by_name = dict(zip(STAGE_NAMES, zip(channels, STAGE_STRIDES)))
    # the target by name: omegaconf cannot hold the type ``dict`` itself
    return L("builtins.dict")(
        **{name: L(ShapeSpec)(channels=by_name[name][0], stride=by_name[name][1]) for name in names}
    )


def hila_settings(**overrides):
    """Lazy ``HILASettings`` with every field spelled out, at the MODEL.HILA defaults of
    hila_d2/config.py (HILA off), then ``overrides``: ``hila_settings(stages=[3])`` is S3."""
    fields = dict(
        stages=[],
        strides=[1, 1, 1, 1],
        mlp_ratio=4.0,
        bottom_mlp_ratio=4.0,
        num_heads=1,
        info_weights=[0.5, 0.5],
        parity_mode=True,
        init_bottom_from_lower_stage=False,
        checkpoint=False,
    )
    fields.update(overrides)
    return L(HILASettings)(**fields)


def mit_encoder(**overrides):
    """Lazy MiT-B0 encoder returning res2..res5 without HILA (Base-SegFormer.yaml's MODEL.MIT);
    ``overrides`` replace any argument."""
    arguments = dict(
        variant="B0",
        out_features=list(STAGE_NAMES),
        drop_path_rate=0.1,
        in_chans=3,
        depths=None,  # None: the variant's
        hila=hila_settings(),
    )
    return L(MixVisionTransformer)(**{**arguments, **overrides})


def swin_encoder(**overrides):
    """Lazy Swin-T encoder (window 7) returning res2..res5 without HILA; ``overrides`` replace any
    argument (the segmentation and detection recipes differ in ``drop_path_rate``)."""
    arguments = dict(
        variant="T",
        window_size=7,
        out_features=list(STAGE_NAMES),
        drop_path_rate=0.3,
        in_chans=3,
        hila=hila_settings(),
    )
    return L(SwinTransformerBackbone)(**{**arguments, **overrides})


def timm_encoder(name: str, **overrides):
    """Lazy ``TimmBackbone`` over timm model ``name`` (e.g. "convnext_atto") returning res2..res5
    without HILA, at the MODEL.TIMM defaults of hila_d2/config.py; ``overrides`` replace any
    argument (``model_kwargs``: MODEL.TIMM.KWARGS)."""
    arguments = dict(
        name=name,
        out_features=list(STAGE_NAMES),
        drop_path_rate=0.0,  # 0: the model's default
        freeze_at=0,
        in_chans=3,
        model_kwargs={},
        hila=hila_settings(),
    )
    return L(TimmBackbone)(**{**arguments, **overrides})


def timm_feature_shapes(
    name: str,
    names: Sequence[str] = STAGE_NAMES,
    model_kwargs: Optional[Mapping[str, Any]] = None,
):
    """Lazy ``input_shape`` of the outputs ``names`` of timm model ``name`` (built with
    ``model_kwargs``), for a head: ``TimmBackbone.output_shape()`` of that model, read off one
    built on the meta device (no memory, no weights) when the config file loads."""
    with torch.device("meta"):
        shapes = TimmBackbone(
            name=name, out_features=list(names), model_kwargs=dict(model_kwargs or {})
        ).output_shape()
    return L("builtins.dict")(
        **{
            feature: L(ShapeSpec)(channels=shapes[feature].channels, stride=shapes[feature].stride)
            for feature in names
        }
    )
