"""The scale-attention head of hierarchical multi-scale attention (Tao et al., 2020;
docs/design/hmsa.md §2.1): a per-pixel weight in (0, 1) for the logits of one image scale against
the next higher one."""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from torch import nn

__all__ = ["ScaleAttentionHead"]


class ScaleAttentionHead(nn.Module):
    """``num_convs`` x (3x3 conv -> norm -> ReLU) -> dropout -> 1x1 conv to one channel -> sigmoid.

    The convs have no bias when normed (the official head: BN, no biases, PyTorch's default
    init). Features (B, C_in, h, w) -> attention (B, 1, h, w) in (0, 1), float32 also under
    autocast.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        channels: int = 256,
        num_convs: int = 2,
        dropout: float = 0.0,
        norm: str = "BN",
    ):
        """
        Args:
            in_channels: channels C_in of the features the head reads.
            channels: width of its 3x3 convs (official ``SEGATTN_BOT_CH``: 256).
            num_convs: number of 3x3 conv + norm + ReLU layers (official: 2).
            dropout: element-wise dropout before the 1x1 conv (official, when enabled: 0.5).
            norm: detectron2 norm name ("BN", "SyncBN", "GN", ...; "" for none).
        """
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"MODEL.HMSA.ATTN_NUM_CONVS is {num_convs}; it must be at least 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MODEL.HMSA.ATTN_DROPOUT is {dropout}; it must be in [0, 1)")
        self.convs = nn.Sequential(
            *(
                Conv2d(
                    in_channels if i == 0 else channels,
                    channels,
                    kernel_size=3,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, channels),
                    activation=F.relu,
                )
                for i in range(num_convs)
            )
        )
        self.dropout = nn.Dropout(dropout)
        self.predictor = nn.Conv2d(channels, 1, kernel_size=1, bias=False)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        return {
            "in_channels": in_channels,
            "channels": cfg.MODEL.HMSA.ATTN_CHANNELS,
            "num_convs": cfg.MODEL.HMSA.ATTN_NUM_CONVS,
            "dropout": cfg.MODEL.HMSA.ATTN_DROPOUT,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
        }

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, C_in, h, w) -> attention (B, 1, h, w) in (0, 1), float32."""
        return torch.sigmoid(self.predictor(self.dropout(self.convs(features))).float())
