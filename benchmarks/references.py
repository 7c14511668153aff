"""Other libraries' implementations of hila_d2's encoders, for the equivalence tests and
``tools/benchmark.py``: HF transformers' ``SegformerModel`` for MiT (its weights map onto ours
through ``hila_d2.checkpoint.segformer.hf_segformer_to_official`` and ``convert_segformer``) and
timm's ``SwinTransformer`` for Swin (our Swin loads its state dict). transformers is a test
dependency (pyproject's ``test`` extra), imported only when an HF config is built.
"""

import copy
from typing import List, Sequence

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from hila_d2.modeling.backbone.mit import MIT_NUM_HEADS, MIT_SR_RATIOS, MIT_VARIANTS
from hila_d2.modeling.backbone.swin import SWIN_VARIANTS

__all__ = ["TimmSwinStages", "hf_segformer_config", "timm_swin", "use_mit_eps"]


def hf_segformer_config(variant: str, **kwargs):
    """HF ``SegformerConfig`` of MiT ``variant`` ("B0".."B5"), without dropout or drop path;
    ``kwargs`` go to the config (e.g. ``num_labels``)."""
    from transformers import SegformerConfig

    spec = MIT_VARIANTS[variant]
    return SegformerConfig(
        depths=list(spec["depths"]),
        hidden_sizes=list(spec["embed_dims"]),
        num_attention_heads=list(MIT_NUM_HEADS),
        sr_ratios=list(MIT_SR_RATIOS),
        mlp_ratios=[4, 4, 4, 4],
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,  # ignored by transformers 5.23.0's Segformer, see use_mit_eps
        reshape_last_stage=True,
        **kwargs,
    )


def use_mit_eps(encoder: nn.Module) -> None:
    """Give an HF ``SegformerModel`` (``SegformerEncoder`` layout) MiT's LayerNorm eps, 1e-6 in
    block and stage norms, in place. transformers 5.23.0 builds every Segformer LayerNorm with
    1e-5 and ignores ``config.layer_norm_eps``; patch-embedding and reduction norms are 1e-5 in
    MiT too."""
    for stage in encoder.stages:
        stage.layer_norm.eps = 1e-6
        for block in stage.blocks:
            block.layernorm_before.eps = block.layernorm_after.eps = 1e-6


def timm_swin(variant: str, **kwargs) -> SwinTransformer:
    """timm's Swin of ``variant`` ("T", "S", "B", "L") that never clamps its windows and takes any
    input size that is a multiple of 4; ``kwargs`` go to ``SwinTransformer``."""
    spec = SWIN_VARIANTS[variant]
    return SwinTransformer(
        embed_dim=spec["embed_dim"],
        depths=spec["depths"],
        num_heads=spec["num_heads"],
        always_partition=True,
        strict_img_size=False,
        **kwargs,
    )


class TimmSwinStages(nn.Module):
    """timm's Swin followed by copies of the stage LayerNorms ``norm0..3`` of the official Swin
    segmentation backbone (timm has none): (B, 3, H, W) -> the four NCHW stage outputs, the
    function of ``SwinTransformerBackbone`` with the same weights when every stage grid is a
    multiple of the window (elsewhere timm shifts, then pads; the official order pads first)."""

    def __init__(self, swin: SwinTransformer, norms: Sequence[nn.LayerNorm]):
        super().__init__()
        self.swin = swin
        self.norms = nn.ModuleList(copy.deepcopy(norm) for norm in norms)

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        stages = self.swin.forward_intermediates(images, intermediates_only=True)  # NCHW
        return [
            norm(stage.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            for norm, stage in zip(self.norms, stages)
        ]
