"""Mix Transformer (MiT, SegFormer's encoder) B0-B5 as a detectron2 backbone.

Built on timm's ``PyramidVisionTransformerV2``: with ``mlp_ratios=(4, 4, 4, 4)``, overlapping
patch embeddings and spatial-reduction attention it *is* MiT, with the same parameter count and
the same LayerNorm epsilons (1e-6 in blocks and stage norms, 1e-5 in patch embeddings and
spatial-reduction norms). Parameter names are timm's (``patch_embed``, ``stages.{i}.downsample``,
``stages.{i}.blocks.{j}``, ``stages.{i}.norm``); ``hila_d2.checkpoint.convert`` maps official
SegFormer files onto them.
"""
from typing import Dict, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.models.pvt_v2 import PyramidVisionTransformerV2

__all__ = ["MIT_VARIANTS", "MixVisionTransformer", "build_mit_backbone"]

_MIT_WIDE = (64, 128, 320, 512)
# variant -> (embed dims per stage, blocks per stage); heads (1, 2, 5, 8) and
# spatial-reduction ratios (8, 4, 2, 1) are shared by all variants.
MIT_VARIANTS: Dict[str, Dict[str, Sequence[int]]] = {
    "B0": {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2)},
    "B1": {"embed_dims": _MIT_WIDE, "depths": (2, 2, 2, 2)},
    "B2": {"embed_dims": _MIT_WIDE, "depths": (3, 4, 6, 3)},
    "B3": {"embed_dims": _MIT_WIDE, "depths": (3, 4, 18, 3)},
    "B4": {"embed_dims": _MIT_WIDE, "depths": (3, 8, 27, 3)},
    "B5": {"embed_dims": _MIT_WIDE, "depths": (3, 6, 40, 3)},
}
MIT_NUM_HEADS = (1, 2, 5, 8)
MIT_SR_RATIOS = (8, 4, 2, 1)
MIT_STAGE_NAMES = ("res2", "res3", "res4", "res5")
MIT_STRIDES = (4, 8, 16, 32)


def check_out_features(out_features: Sequence[str], key: str) -> None:
    """Raise a ValueError naming ``key`` if ``out_features`` is empty or has unknown names."""
    unknown = [f for f in out_features if f not in MIT_STAGE_NAMES]
    if not out_features or unknown:
        raise ValueError(
            f"{key} must be a non-empty subset of {list(MIT_STAGE_NAMES)}, got {list(out_features)}"
        )


class MixVisionTransformer(PyramidVisionTransformerV2, Backbone):
    """MiT encoder returning ``{"res2": (B, C1, ceil(H/4), ceil(W/4)), ..., "res5": (B, C4,
    ceil(H/32), ceil(W/32))}`` for an input ``(B, 3, H, W)`` of any size; each output is the
    stage's tokens after its LayerNorm, as in SegFormer."""

    @configurable
    def __init__(
        self,
        *,
        variant: str = "B0",
        out_features: Sequence[str] = MIT_STAGE_NAMES,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
    ):
        """
        Args:
            variant: "B0" .. "B5".
            out_features: subset of ``res2..res5`` to return.
            drop_path_rate: stochastic depth rate of the last block (linear from 0 over blocks).
            in_chans: input image channels.
        """
        if variant not in MIT_VARIANTS:
            raise ValueError(
                f"Unknown MiT variant {variant!r} (MODEL.MIT.VARIANT); "
                f"choose one of {sorted(MIT_VARIANTS)}"
            )
        check_out_features(out_features, "MODEL.MIT.OUT_FEATURES")
        spec = MIT_VARIANTS[variant]
        super().__init__(
            in_chans=in_chans,
            num_classes=0,
            depths=tuple(spec["depths"]),
            embed_dims=tuple(spec["embed_dims"]),
            num_heads=MIT_NUM_HEADS,
            sr_ratios=MIT_SR_RATIOS,
            mlp_ratios=(4, 4, 4, 4),
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
        )
        self.variant = variant
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(MIT_STAGE_NAMES, spec["embed_dims"]))
        self._out_feature_strides = dict(zip(MIT_STAGE_NAMES, MIT_STRIDES))

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "variant": cfg.MODEL.MIT.VARIANT,
            "out_features": cfg.MODEL.MIT.OUT_FEATURES,
            "drop_path_rate": cfg.MODEL.MIT.DROP_PATH_RATE,
            "in_chans": input_shape.channels,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, in_chans, H, W) -> dict of NCHW stage outputs named in ``out_features``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"MiT expects images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        outputs = {}
        x = self.patch_embed(x)  # (B, H/4, W/4, C1), the layout stage 0 takes
        for name, stage in zip(MIT_STAGE_NAMES, self.stages):
            x = stage(x)  # (B, C, H, W) after the stage norm
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name],
                stride=self._out_feature_strides[name],
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32

    def no_weight_decay_keywords(self) -> set:
        """Local parameter names exempt from weight decay (norms are exempted by type)."""
        return set()


@BACKBONE_REGISTRY.register()
def build_mit_backbone(cfg, input_shape: ShapeSpec) -> MixVisionTransformer:
    """detectron2 builder for ``MODEL.BACKBONE.NAME: build_mit_backbone`` (keys ``MODEL.MIT.*``)."""
    return MixVisionTransformer(cfg, input_shape)
