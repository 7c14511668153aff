"""MiT's Mix-FFN (timm's ``MlpWithDepthwiseConv``: Linear, 3x3 depthwise conv, GELU, Linear), as
used by MiT's blocks and by every HILA block, the weight layout that makes it fast, and the
training path of HILA's Mix-FFNs that keeps only their input for the backward pass.

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
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import MlpWithDepthwiseConv
from torch import nn

from .linear_backward import linear_backward

__all__ = ["MixFFN", "use_channels_last_depthwise"]


def use_channels_last_depthwise(module: nn.Module) -> None:
    """Store the depthwise conv weight of every Mix-FFN inside ``module`` channels-last, in
    place (the parameters stay the same objects)."""
    for mlp in module.modules():
        if isinstance(mlp, MlpWithDepthwiseConv):
            mlp.dwconv.to(memory_format=torch.channels_last)


def _mix_ffn(
    x: torch.Tensor, size: Sequence[int], fc1_weight: torch.Tensor, fc1_bias: torch.Tensor,
    conv_weight: torch.Tensor, conv_bias: torch.Tensor, fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
) -> torch.Tensor:
    """The Mix-FFN as timm computes it: (B, N, C) -> (B, N, C) through the first Linear, the 3x3
    depthwise conv on the (H, W) = ``size`` grid, GELU and the second Linear."""
    hidden = F.linear(x, fc1_weight, fc1_bias)
    batch, _, width = hidden.shape
    conv = F.conv2d(
        hidden.transpose(1, 2).view(batch, width, *size), conv_weight, conv_bias, padding=1,
        groups=width,
    )  # fmt: skip
    return F.linear(F.gelu(conv.flatten(2).transpose(1, 2)), fc2_weight, fc2_bias)


class _RecomputedMixFFN(torch.autograd.Function):
    """The Mix-FFN (``_mix_ffn``) keeping only its input (B, N, C) for the backward pass: the
    first Linear, the depthwise conv and the GELU run again there, under the forward's autocast
    state (instead of keeping 3 tensors of B x N x E, E = 4C)."""

    @staticmethod
    def forward(ctx, x, size, *weights):
        device = x.device.type
        ctx.size = tuple(size)
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, *weights)
        return _mix_ffn(x, size, *weights)

    @staticmethod
    def backward(ctx, grad_out):
        x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            hidden = F.linear(x, fc1_weight, fc1_bias)
            batch, _, width = hidden.shape
            grid = hidden.transpose(1, 2).view(batch, width, *ctx.size)
            conv = F.conv2d(grid, conv_weight, conv_bias, padding=1, groups=width)
        with torch.autocast(device, enabled=False):
            conv_tokens = conv.flatten(2).transpose(1, 2)  # (B, N, E)
            grad_act, grad_fc2_weight, grad_fc2_bias = linear_backward(
                grad_out, F.gelu(conv_tokens), fc2_weight, fc2_bias
            )
            grad_conv = torch.ops.aten.gelu_backward(grad_act.to(conv.dtype), conv_tokens)
            grad_grid, grad_conv_weight, grad_conv_bias = torch.ops.aten.convolution_backward(
                grad_conv.transpose(1, 2).view(batch, width, *ctx.size), grid.to(conv.dtype),
                conv_weight.to(conv.dtype), [width], [1, 1], [1, 1], [1, 1], False, [0, 0],
                width, [True, True, True],
            )  # fmt: skip
            grad_hidden = grad_grid.flatten(2).transpose(1, 2).to(hidden.dtype)
            grad_x, grad_fc1_weight, grad_fc1_bias = linear_backward(
                grad_hidden, x, fc1_weight, fc1_bias
            )
        return (
            grad_x, None, grad_fc1_weight, grad_fc1_bias, grad_conv_weight.to(conv_weight.dtype),
            grad_conv_bias.to(conv_bias.dtype), grad_fc2_weight, grad_fc2_bias,
        )  # fmt: skip


class MixFFN(MlpWithDepthwiseConv):
    """Mix-FFN on channels-last tokens, (B, H, W, C) -> (B, H, W, C), or as timm's, (B, N, C)
    with ``feat_size`` (H, W) -> (B, N, C); its depthwise weight channels-last. In training it
    keeps only its input for the backward pass (``_RecomputedMixFFN``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_channels_last_depthwise(self)

    def forward(self, x: torch.Tensor, feat_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        if feat_size is None:
            batch, height, width, channels = x.shape
            out = self.forward(x.reshape(batch, height * width, channels), (height, width))
            return out.reshape(batch, height, width, -1)
        if not self._recomputes():
            return super().forward(x, feat_size)
        return _RecomputedMixFFN.apply(
            x, tuple(feat_size), self.fc1.weight, self.fc1.bias, self.dwconv.weight,
            self.dwconv.bias, self.fc2.weight, self.fc2.bias,
        )  # fmt: skip

    def _recomputes(self) -> bool:
        """Training with gradients, not traced, and the plain Mix-FFN (GELU, no extra ReLU, no
        dropout) that ``_mix_ffn`` computes."""
        return (
            self.training
            and torch.is_grad_enabled()
            and not torch.jit.is_tracing()
            and isinstance(self.relu, nn.Identity)
            and type(self.act) is nn.GELU
            and self.act.approximate == "none"
            and self.drop.p == 0
        )
