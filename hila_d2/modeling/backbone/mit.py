"""Mix Transformer (MiT, SegFormer's encoder) B0-B5 as a detectron2 backbone.

Built on timm's ``PyramidVisionTransformerV2``: with ``mlp_ratios=(4, 4, 4, 4)``, overlapping
patch embeddings and spatial-reduction attention it *is* MiT, with the same parameter count and
the same LayerNorm epsilons (1e-6 in blocks and stage norms, 1e-5 in patch embeddings and
spatial-reduction norms). Parameter names are timm's (``patch_embed``, ``stages.{i}.downsample``,
``stages.{i}.blocks.{j}``, ``stages.{i}.norm``); ``hila_d2.checkpoint`` maps official
SegFormer files onto them.

With ``MODEL.HILA.STAGES`` set, the HILA pairs live in ``hila.{tag}`` (tag "12", "23", "34";
``hila_d2.modeling.hila.HILAPairs``), as in the official HILA-SegFormer: the pair's lower
tokens are the lower stage's output after its norm, the upper stage's patch embedding reads that
output before the pair updates it, the extra lower-level block is a MiT block of the lower stage
(LayerNorm eps 1e-5, no drop path), and the updated lower tokens, normalised once by the pair's
``bottom_norm``, replace the lower stage's output.
"""
from functools import partial
from typing import Dict, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from timm.models.pvt_v2 import Block, PyramidVisionTransformerV2
from torch import nn

from ..hila import BlockCall, HILAPairs, HILASettings, Layout, StageAccess
from ..mix_ffn import MixFFN, use_channels_last_depthwise
from .pyramid import STAGE_NAMES, STAGE_STRIDES, PyramidBackbone, check_out_features, variant_spec
from .stage_plan import EncoderPlan, plan_encoder

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


def _channels_last_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Run a MiT block on channels-last tokens (B, H, W, C) -> (B, H, W, C)."""
    batch, height, width, channels = x.shape
    out = block(x.reshape(batch, height * width, channels), (height, width))
    return out.reshape(batch, height, width, channels)


class MiTLowerBlock(Block):
    """A MiT block used as a HILA pair's extra lower-level block: ``forward(x (B, H, W, C),
    use_index)``; every use is the same block. Its Mix-FFN is HILA's (``MixFFN``: the same
    parameters, and in training it keeps only its input for the backward pass)."""

    selective_checkpointing = False  # it recomputes its activations itself (MixFFN)

    def __init__(self, *, dim: int, mlp_ratio: float, **kwargs):
        super().__init__(dim=dim, mlp_ratio=mlp_ratio, **kwargs)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, use_index: int) -> torch.Tensor:
        return _channels_last_block(super().forward, x)


class MixVisionTransformer(PyramidVisionTransformerV2, PyramidBackbone):
    """MiT encoder returning ``{"res2": (B, C1, ceil(H/4), ceil(W/4)), ..., "res5": (B, C4,
    ceil(H/32), ceil(W/32))}`` for an input ``(B, 3, H, W)`` of any size; each output is the
    stage's tokens after its LayerNorm, as in SegFormer, or with HILA the pair's updated lower
    tokens for every stage below a pair. Only what produces ``out_features`` is built
    (``stage_plan``): every parameter takes part in them."""

    config_group = "MODEL.MIT"  # its yacs keys
    family = "MiT"
    # stage 1 (the H/4 x W/4 grid, a stride-4 patch embedding of any size) reduces its keys and
    # values with an 8x8 stride-8 conv, so that grid needs 8 rows and columns: H, W >= 29
    min_input_size = 29
    min_input_reason = "its stage-1 attention reduces the H/4 x W/4 grid by an 8x8 convolution"

    @configurable
    def __init__(
        self,
        *,
        variant: str = "B0",
        out_features: Sequence[str] = STAGE_NAMES,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
        depths: Optional[Sequence[int]] = None,
        hila: HILASettings = HILASettings(),
    ):
        """
        Args:
            variant: "B0" .. "B5".
            out_features: subset of ``res2..res5`` to return.
            drop_path_rate: stochastic depth rate of the last block (linear from 0 over blocks).
            in_chans: input image channels.
            depths: blocks per stage instead of the variant's (HILA's "B2" is (2, 2, 6, 2)).
            hila: HILA pairs and options; the default has none.
        """
        check_out_features(out_features, "MODEL.MIT.OUT_FEATURES")
        spec = variant_spec(MIT_VARIANTS, variant, "MiT", "MODEL.MIT.VARIANT")
        depths = tuple(depths or spec["depths"])
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"MODEL.MIT.DEPTHS needs 4 entries >= 1, got {list(depths)}")
        super().__init__(
            in_chans=in_chans,
            num_classes=0,
            depths=depths,
            embed_dims=tuple(spec["embed_dims"]),
            num_heads=MIT_NUM_HEADS,
            sr_ratios=MIT_SR_RATIOS,
            mlp_ratios=(4, 4, 4, 4),
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
        )
        self.variant = variant
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(STAGE_NAMES, spec["embed_dims"]))
        self.hila = HILAPairs(
            hila,
            spec["embed_dims"],
            [stage.blocks for stage in self.stages],
            partial(self._build_lower_block, hila=hila),
        )
        self._keep_only(plan_encoder(depths, out_features, hila))
        blocks_call = BlockCall(Layout.TOKENS, "tuple")  # as _channels_last_block calls them
        self.hila.hook(
            [
                StageAccess(stage.norm, Layout.NHWC, stage.blocks, blocks_call, stride)
                for stage, stride in zip(self.stages, STAGE_STRIDES)
            ]
        )
        use_channels_last_depthwise(self)

    def _drop_unplanned(self, plan: EncoderPlan) -> None:
        self.stages = self.stages[: plan.num_stages]
        for stage, blocks, tokens_used in zip(self.stages, plan.blocks, plan.tokens_used):
            stage.blocks = stage.blocks[:blocks]
            if not tokens_used:
                stage.norm = None

    def _build_lower_block(self, top: int, hila: HILASettings) -> MiTLowerBlock:
        """The extra lower-level block of the HILA pair whose upper stage is ``top`` (1-based)."""
        lower = top - 2  # 0-based index of the lower stage
        bottom_block = MiTLowerBlock(
            dim=MIT_VARIANTS[self.variant]["embed_dims"][lower],
            num_heads=MIT_NUM_HEADS[lower],
            sr_ratio=MIT_SR_RATIOS[lower],
            mlp_ratio=hila.bottom_mlp_ratio,
            qkv_bias=True,
            norm_layer=nn.LayerNorm,  # eps 1e-5, as the official HILA modules
        )
        bottom_block.apply(self._init_weights)
        return bottom_block

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "variant": cfg.MODEL.MIT.VARIANT,
            "out_features": cfg.MODEL.MIT.OUT_FEATURES,
            "drop_path_rate": cfg.MODEL.MIT.DROP_PATH_RATE,
            "in_chans": input_shape.channels,
            "depths": cfg.MODEL.MIT.DEPTHS or None,
            "hila": HILASettings.from_config(cfg),
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, in_chans, H, W) -> dict of NCHW stage outputs named in ``out_features``."""
        self.check_images(x)
        self.hila.start(x.shape[-2:])
        outputs = []  # channels-last (B, H, W, C) stage outputs
        tokens = self.patch_embed(x)  # (B, H/4, W/4, C1)
        for stage in self.stages:
            if stage.downsample is not None:
                tokens = stage.downsample(outputs[-1].permute(0, 3, 1, 2).contiguous())
            for block in stage.blocks:  # the HILA pairs run through hooks on them
                tokens = _channels_last_block(block, tokens)
            outputs.append(tokens if stage.norm is None else stage.norm(tokens))
        return {
            name: self.hila.updated(index + 1, out).permute(0, 3, 1, 2).contiguous()
            for index, (name, out) in enumerate(zip(STAGE_NAMES, outputs))
            if name in self._out_features
        }

    def no_weight_decay_keywords(self) -> set:
        """Local parameter names exempt from weight decay (norms are exempted by type)."""
        return set()


@BACKBONE_REGISTRY.register()
def build_mit_backbone(cfg, input_shape: ShapeSpec) -> MixVisionTransformer:
    """detectron2 builder for ``MODEL.BACKBONE.NAME: build_mit_backbone`` (keys ``MODEL.MIT.*``)."""
    return MixVisionTransformer(cfg, input_shape)
