"""What HMSA needs from a semantic head (docs/design/hmsa.md §9.1): logits and the penultimate
features that the head's classifier reads, without losses or upsampling.

hila_d2's heads provide it as ``forward_features(features)``; detectron2's ``SemSegFPNHead`` gets
an adapter here. Any other head with detectron2's ``layers(features) -> logits`` gives logits
only; HMSA then reads its attention from a backbone feature (``MODEL.HMSA.ATTN_IN_FEATURE``).
"""

from typing import Dict, Optional

import torch
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn

__all__ = ["head_forward_features", "penultimate_channels"]


def _sem_seg_fpn_forward_features(
    head: SemSegFPNHead, features: Dict[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """``SemSegFPNHead.layers`` split before its predictor: the sum of the per-level branches
    (B, CONVS_DIM, H/COMMON_STRIDE, W/COMMON_STRIDE) is ``attn_feats``."""
    summed = sum(branch(features[name]) for name, branch in zip(head.in_features, head.scale_heads))
    return {"logits": head.predictor(summed), "attn_feats": summed}


def head_forward_features(
    head: nn.Module, features: Dict[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """Backbone features by name -> ``{"logits": (B, K, h, w), "attn_feats": (B, C, h', w'),
    "aux_logits": (B, K, h'', w'') if the head has an auxiliary branch}`` at the head's own
    resolutions; only ``"logits"`` for a head that supports neither ``forward_features`` nor an
    adapter."""
    if hasattr(head, "forward_features"):
        return head.forward_features(features)
    if isinstance(head, SemSegFPNHead):
        return _sem_seg_fpn_forward_features(head, features)
    return {"logits": head.layers(features)}


def penultimate_channels(head: nn.Module) -> Optional[int]:
    """Channels C of the head's ``attn_feats`` (its 1x1 classifier ``predictor`` reads them), or
    None when :func:`head_forward_features` gives the head's logits only."""
    if hasattr(head, "forward_features") or isinstance(head, SemSegFPNHead):
        return head.predictor.in_channels
    return None
