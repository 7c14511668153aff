"""SegFormer's All-MLP decode head, registered as ``SegFormerHead`` in SEM_SEG_HEADS_REGISTRY."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..losses import semantic_segmentation_loss
from .head_inputs import levels_finest_first, select_in_features

__all__ = ["SegFormerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SegFormerHead(nn.Module):
    """Per-level linear embedding -> upsample to the finest level -> concat -> 1x1 fuse conv with
    norm and ReLU -> dropout -> 1x1 classifier (Xie et al., SegFormer, 2021).

    ``forward(features, targets)`` follows detectron2's semantic heads: in training it returns
    ``(None, {"loss_sem_seg": ...})``; in inference ``(logits (B, K, H, W), {})`` at the padded
    input resolution (the finest level upsampled by its stride).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        embed_dim: int = 256,
        dropout: float = 0.1,
        norm: str = "BN",
        ignore_value: int = 255,
        loss_weight: float = 1.0,
    ):
        """
        Args:
            input_shape: the features the head consumes (any number of levels), by name.
            num_classes: number of classes K.
            embed_dim: width of the per-level embeddings and the fuse layer.
            dropout: dropout probability before the classifier (channel-wise, as mmseg).
            norm: detectron2 norm name for the fuse layer ("BN", "SyncBN", "GN", ...).
            ignore_value: label ignored by the loss.
            loss_weight: multiplier of the loss.
        """
        super().__init__()
        ordered = levels_finest_first(input_shape, "SegFormerHead")
        self.in_features = [name for name, _ in ordered]
        self.common_stride = ordered[0][1].stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.embeds = nn.ModuleList(nn.Linear(shape.channels, embed_dim) for _, shape in ordered)
        self.fuse = Conv2d(
            embed_dim * len(ordered),
            embed_dim,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, embed_dim),
            activation=F.relu,
        )
        nn.init.kaiming_normal_(self.fuse.weight, mode="fan_out", nonlinearity="relu")
        self.dropout = nn.Dropout2d(dropout)
        self.predictor = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return {
            "input_shape": select_in_features(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES, input_shape),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "embed_dim": cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM,
            "dropout": cfg.MODEL.SEM_SEG_HEAD.DROPOUT,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
        }

    def forward_features(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Features by name (B, C_i, H_i, W_i) -> ``{"logits": (B, K, H_0, W_0), "attn_feats":
        (B, EMBED_DIM, H_0, W_0)}`` at the finest level; ``attn_feats`` is the classifier's input
        (HMSA's scale attention reads it, docs/design/hmsa.md §2.3)."""
        finest = features[self.in_features[0]].shape[-2:]
        embedded = []
        for name, embed in zip(self.in_features, self.embeds):
            x = features[name]
            x = embed(x.flatten(2).transpose(1, 2)).transpose(1, 2)
            x = x.reshape(x.shape[0], -1, *features[name].shape[-2:])
            if x.shape[-2:] != finest:
                x = F.interpolate(x, size=finest, mode="bilinear", align_corners=False)
            embedded.append(x)
        # coarsest level first, as SegFormer concatenates (c4, c3, c2, c1)
        x = self.dropout(self.fuse(torch.cat(embedded[::-1], dim=1)))
        return {"logits": self.predictor(x), "attn_feats": x}

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Features by name (B, C_i, H_i, W_i) -> logits (B, K, H_0, W_0) at the finest level."""
        return self.forward_features(features)["logits"]

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        logits = self.layers(features)
        if self.training:
            loss = semantic_segmentation_loss(logits, targets, self.ignore_value)
            return None, {"loss_sem_seg": loss * self.loss_weight}
        logits = F.interpolate(
            logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )
        return logits, {}
