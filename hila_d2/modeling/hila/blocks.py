"""HILA's two inter-level blocks (docs/design/hila.md §3) and HILA's weight initialisation.

``TopDownBlock`` (children from parents) and ``BottomUpBlock`` (parents from children) wrap the
attention of ``attention`` as pre-norm residual blocks with a Mix-FFN, on channels-last
tokens ``(B, H, W, C)``.

``parity_mode=True`` reproduces the official code for converted checkpoints: the Bottom-Up scale is
``(C_top / heads) ** -0.5`` and the zero padding children around (and, for odd lower grids, inside)
the lower grid take part in the Bottom-Up softmax. ``parity_mode=False`` masks those padding
children and scales by ``(attn_dim / heads) ** -0.5``. Top-Down never attends to padding.
"""
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from ..mix_ffn import MixFFN
from .attention import BottomUpAttention, TopDownAttention

__all__ = ["BottomUpBlock", "LAYER_NORM_EPS", "TopDownBlock", "init_hila_weights"]

LAYER_NORM_EPS = 1e-5  # every HILA LayerNorm (the official modules use PyTorch's default)


def init_hila_weights(module: nn.Module) -> None:
    """The official initialisation: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0),
    Conv2d normal(0, sqrt(2 / fan_out)) with ``fan_out = k*k*out/groups`` and zero bias."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (fan_out // module.groups)))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_grids(top: torch.Tensor, bottom: torch.Tensor) -> None:
    """ValueError unless the lower grid (B, Hb, Wb, .) is twice the upper (B, Ht, Wt, .), up to
    the one row/column that an odd lower size loses in the stride-2 downsampling."""
    (ht, wt), (hb, wb) = top.shape[1:3], bottom.shape[1:3]
    if not (hb <= 2 * ht <= hb + 1 and wb <= 2 * wt <= wb + 1):
        raise ValueError(
            f"HILA pairs a lower grid with an upper grid of half its size (ceil), got lower "
            f"{hb}x{wb} and upper {ht}x{wt}; the pair must be two adjacent stride-2 stages"
        )


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad channels-last (B, H, W, C) at the bottom/right to (B, height, width, C)."""
    return F.pad(x, (0, 0, 0, width - x.shape[2], 0, height - x.shape[1]))


class _InterLevelBlock(nn.Module):
    """What the Top-Down and Bottom-Up blocks share: stochastic depth and the ``info_weights``
    (w0, w1) average of a stream with its FFN branch."""

    def __init__(self, info_weights: Sequence[float], drop_path: float):
        super().__init__()
        self.info_weights = tuple(float(w) for w in info_weights)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _weighted_ffn(self, x: torch.Tensor, norm: nn.Module, ffn: nn.Module) -> torch.Tensor:
        """``w0 * x + w1 * DP(ffn(norm(x)))`` on channels-last tokens."""
        w0, w1 = self.info_weights
        return w0 * x + w1 * self.drop_path(ffn(norm(x)))


class TopDownBlock(_InterLevelBlock):
    """Updates the children from their parents (official ``TopDownAttn``; returns the children):

    ``b1 = b + DP(TD(norm2(t), norm1(b)))``; ``b2 = w0 * b1 + w1 * DP(bottom_mlp(norm3(b1)))``.
    """

    def __init__(
        self,
        bottom_dim: int,
        top_dim: int,
        *,
        num_heads: int,
        mlp_ratio: float,
        info_weights: Sequence[float],
        drop_path: float,
        parity_mode: bool,
    ):
        super().__init__(info_weights, drop_path)
        attn_dim = min(bottom_dim, top_dim)
        self.norm1 = nn.LayerNorm(bottom_dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(top_dim, eps=LAYER_NORM_EPS)
        self.norm3 = nn.LayerNorm(bottom_dim, eps=LAYER_NORM_EPS)
        self.topdown_attn = TopDownAttention(
            bottom_dim, top_dim, attn_dim, num_heads,
            scale_dim=bottom_dim if parity_mode else attn_dim,
        )
        self.bottom_mlp = MixFFN(bottom_dim, int(bottom_dim * mlp_ratio))

    def forward(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """top (B, Ht, Wt, Ct), bottom (B, Hb, Wb, Cb) -> updated bottom (B, Hb, Wb, Cb)."""
        _check_grids(top, bottom)
        hb, wb = bottom.shape[1:3]
        padded = _pad_to(self.norm1(bottom), 2 * top.shape[1], 2 * top.shape[2])
        update = self.topdown_attn(self.norm2(top), padded)[:, :hb, :wb]
        bottom = bottom + self.drop_path(update)
        return self._weighted_ffn(bottom, self.norm3, self.bottom_mlp)


class BottomUpBlock(_InterLevelBlock):
    """Updates the parents from their children (official ``BottomUpAttn``; returns the parents):

    ``t1 = t + DP(BU(norm4(t), norm5(b)))``; ``t2 = w0 * t1 + w1 * DP(top_mlp(norm6(t1)))``.
    """

    def __init__(
        self,
        bottom_dim: int,
        top_dim: int,
        *,
        num_heads: int,
        mlp_ratio: float,
        info_weights: Sequence[float],
        drop_path: float,
        parity_mode: bool,
    ):
        super().__init__(info_weights, drop_path)
        attn_dim = min(bottom_dim, top_dim)
        self.norm4 = nn.LayerNorm(top_dim, eps=LAYER_NORM_EPS)
        self.norm5 = nn.LayerNorm(bottom_dim, eps=LAYER_NORM_EPS)
        self.norm6 = nn.LayerNorm(top_dim, eps=LAYER_NORM_EPS)
        self.bottomup_attn = BottomUpAttention(
            top_dim, bottom_dim, attn_dim, num_heads,
            scale_dim=top_dim if parity_mode else attn_dim,
            mask_padding=not parity_mode,
        )
        self.top_mlp = MixFFN(top_dim, int(top_dim * mlp_ratio))

    def forward(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """top (B, Ht, Wt, Ct), bottom (B, Hb, Wb, Cb) -> updated top (B, Ht, Wt, Ct)."""
        _check_grids(top, bottom)
        ht, wt = top.shape[1:3]
        hb, wb = bottom.shape[1:3]
        padded = _pad_to(self.norm5(bottom), 2 * ht, 2 * wt)
        valid = torch.zeros(2 * ht, 2 * wt, dtype=torch.bool, device=bottom.device)
        valid[:hb, :wb] = True
        top = top + self.drop_path(self.bottomup_attn(self.norm4(top), padded, valid))
        return self._weighted_ffn(top, self.norm6, self.top_mlp)
