"""Token layouts of encoder blocks and the conversions to and from HILA's channels-last tokens.

An encoder's stages and blocks hold their tokens in one of three layouts: ``NCHW`` (B, C, H, W;
ConvNeXt, MetaFormer's convolutional stages, EfficientFormerV2), ``NHWC`` (B, H, W, C; Swin V2,
MambaOut) or ``TOKENS`` (B, H * W, C, the grid given apart; PVTv2, CAFormer's attention stages).
HILA works on channels-last grids (B, H, W, C).
"""
from enum import Enum
from typing import Optional, Tuple

import torch

__all__ = ["Layout", "from_channels_last", "layout_of", "to_channels_last"]


class Layout(str, Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"
    TOKENS = "(B, N, C)"


def layout_of(x: torch.Tensor, channels: int, grid: Tuple[int, int]) -> Optional[Layout]:
    """The layout in which ``x`` holds ``channels`` channels on the grid ``grid`` (H, W), or None
    when it holds them in none (or, for a square grid with H == W == channels, in two)."""
    batch_free = tuple(x.shape[1:])
    found = [
        layout
        for layout, shape in (
            (Layout.NCHW, (channels, *grid)),
            (Layout.NHWC, (*grid, channels)),
            (Layout.TOKENS, (grid[0] * grid[1], channels)),
        )
        if batch_free == shape
    ]
    return found[0] if len(found) == 1 else None


def to_channels_last(x: torch.Tensor, layout: Layout, grid: Tuple[int, int]) -> torch.Tensor:
    """Tokens ``x`` in ``layout`` on ``grid`` (H, W) -> (B, H, W, C) (a view where possible)."""
    if layout is Layout.NCHW:
        return x.permute(0, 2, 3, 1)
    if layout is Layout.TOKENS:
        return x.unflatten(1, grid)
    return x


def from_channels_last(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, H, W, C) -> the same tokens in ``layout`` (NCHW and token layouts made contiguous)."""
    if layout is Layout.NCHW:
        return x.permute(0, 3, 1, 2).contiguous()
    if layout is Layout.TOKENS:
        return x.flatten(1, 2)
    return x
