"""MiT's Mix-FFN (timm's ``MlpWithDepthwiseConv``: Linear, 3x3 depthwise conv, GELU, Linear), as
used by MiT's blocks and by every HILA block, and the weight layout that makes it fast.

The Mix-FFN hands its depthwise conv a channels-last view of its (B, N, C) tokens. With the conv
weight in the default (contiguous) layout, oneDNN on CPU takes a path 3-10x slower than with a
channels-last weight (measured for MiT's shapes, e.g. 256 channels at 128x128: 18.7 ms against
2.2 ms on 2 threads) and returns an NCHW result that the next Linear has to copy back.
``use_channels_last_depthwise`` stores those weights channels-last. For a depthwise weight
(C, 1, 3, 3) both layouts have the same memory order: only the stride recorded for the size-1
axis differs (1 instead of 9), and that is what oneDNN's kernel choice reads. The values are the
same, the results equal up to float summation order, and ``load_state_dict`` (an in-place copy)
and ``.to()`` / ``.double()`` keep the strides.
"""
import torch
from timm.models.pvt_v2 import MlpWithDepthwiseConv
from torch import nn

__all__ = ["MixFFN", "use_channels_last_depthwise"]


def use_channels_last_depthwise(module: nn.Module) -> None:
    """Store the depthwise conv weight of every Mix-FFN inside ``module`` channels-last, in
    place (the parameters stay the same objects)."""
    for mlp in module.modules():
        if isinstance(mlp, MlpWithDepthwiseConv):
            mlp.dwconv.to(memory_format=torch.channels_last)


class MixFFN(MlpWithDepthwiseConv):
    """Mix-FFN on channels-last tokens: (B, H, W, C) -> (B, H, W, C), its depthwise weight
    channels-last."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_channels_last_depthwise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        out = super().forward(x.reshape(batch, height * width, channels), (height, width))
        return out.reshape(batch, height, width, -1)
