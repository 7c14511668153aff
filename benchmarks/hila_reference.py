"""hila_d2's first formulation of HILA's inter-level attention, kept as the reference that the
current one (``hila_d2.modeling.hila.attention``) must equal, for the equivalence tests and the
benchmark's "before" rows. Not used by any model.

It unfolds the lower keys and values 16 ways (``F.unfold``, a tensor 4x the lower map) for
Bottom-Up and gathers 4 candidates per child for Top-Down, then runs one (1 x d) @ (d x n) matmul
per query; and it stored every activation of the HILA steps for the backward pass.
``reference_formulation(model)`` makes ``model``'s HILA run that way.
"""

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from hila_d2.modeling.hila.attention import (
    PATCH,
    PATCH_POSITIONS,
    BottomUpAttention,
    TopDownAttention,
    candidate_parents,
)
from hila_d2.modeling.hila import HILAPair
from hila_d2.modeling.mix_ffn import MixFFN

__all__ = ["reference_bottom_up", "reference_formulation", "reference_top_down"]


def _weights(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor) -> torch.Tensor:
    """``softmax(scale * q @ k + bias)`` over the last axis, in float32 under autocast."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q.float() * scale) @ k.float() + bias.float()
        return torch.softmax(logits, dim=-1)


def reference_bottom_up(
    attn: BottomUpAttention, top: torch.Tensor, bottom: torch.Tensor, bottom_valid: torch.Tensor
) -> torch.Tensor:
    """``attn.forward`` by 16-way unfolding: top (B, Ht, Wt, Ct), bottom (B, 2Ht, 2Wt, Cb),
    bottom_valid (2Ht, 2Wt) -> (B, Ht, Wt, Ct)."""
    batch, ht, wt, _ = top.shape
    q = attn._heads(attn.q(top)).unsqueeze(-2)  # (B, Ht, Wt, h, 1, d)
    kv = F.linear(bottom, attn.kv.weight).permute(0, 3, 1, 2)  # (B, 2A, 2Ht, 2Wt)
    kv = F.unfold(kv, kernel_size=PATCH, stride=2, padding=1)  # (B, 2A*16, Ht*Wt)
    kv = kv.view(batch, 2 * attn.attn_dim, PATCH_POSITIONS, ht, wt).permute(0, 3, 4, 2, 1)
    if attn.kv.bias is not None:
        kv = kv + attn.kv.bias.to(kv.dtype)
    k, v = (attn._heads(t).transpose(-3, -2) for t in kv.chunk(2, dim=-1))  # (B,Ht,Wt,h,16,d)
    bias = attn.position_bias().float()
    if attn.mask_padding:
        valid = F.unfold(bottom_valid[None, None].float(), kernel_size=PATCH, stride=2, padding=1)
        valid = valid.view(PATCH_POSITIONS, ht, wt).permute(1, 2, 0)[:, :, None, None, :]
        bias = bias.masked_fill(valid == 0, float("-inf"))
    weights = _weights(q, k.transpose(-1, -2), attn.scale, bias)  # (B, Ht, Wt, h, 1, 16)
    return attn.proj((weights.to(v.dtype) @ v).squeeze(-2).flatten(-2))


def reference_top_down(
    attn: TopDownAttention, top: torch.Tensor, bottom: torch.Tensor
) -> torch.Tensor:
    """``attn.forward`` by gathering 4 candidates per child: top (B, Ht, Wt, Ct), bottom
    (B, 2Ht, 2Wt, Cb) -> (B, 2Ht, 2Wt, Cb)."""
    (ht, wt), (hc, wc) = top.shape[1:3], bottom.shape[1:3]
    rows, row_offsets, row_exists = candidate_parents(hc, ht, top.device)
    cols, col_offsets, col_exists = candidate_parents(wc, wt, top.device)
    index = (rows[:, None, :, None], cols[None, :, None, :])
    k, v = (
        attn._heads(t)[:, index[0], index[1]].flatten(3, 4) for t in attn.kv(top).chunk(2, dim=-1)
    )  # (B, Hc, Wc, 4, h, d)
    positions = PATCH * row_offsets[:, None, :, None] + col_offsets[None, :, None, :]
    exists = row_exists[:, None, :, None] & col_exists[None, :, None, :]
    bias = attn.position_bias().float()[positions.flatten(2)]
    bias = bias.masked_fill(~exists.flatten(2), float("-inf"))  # (Hc, Wc, 4)
    q = attn._heads(attn.q(bottom)).unsqueeze(-2)  # (B, Hc, Wc, h, 1, d)
    weights = _weights(q, k.permute(0, 1, 2, 4, 5, 3), attn.scale, bias[:, :, None, None])
    out = (weights.to(v.dtype) @ v.transpose(3, 4)).squeeze(-2).flatten(-2)  # (B, Hc, Wc, A)
    return attn.proj(out)


def _unchecked_step(step, *inputs: torch.Tensor, **_options) -> torch.Tensor:
    return step(*inputs)


def _keeps_everything() -> bool:
    return False


@contextlib.contextmanager
def reference_formulation(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s HILA runs as first implemented (same parameters): every
    ``BottomUpAttention`` / ``TopDownAttention`` in the reference formulation, and every
    ``HILAPair`` step without activation checkpointing and every ``MixFFN`` as timm's (all
    activations stored in training). Their own methods are restored on exit."""
    attention = [m for m in model.modules() if isinstance(m, (BottomUpAttention, TopDownAttention))]
    pairs = [m for m in model.modules() if isinstance(m, HILAPair)]
    for module in attention:
        bottom_up = isinstance(module, BottomUpAttention)
        module.forward = (reference_bottom_up if bottom_up else reference_top_down).__get__(module)
    ffns = [m for m in model.modules() if isinstance(m, MixFFN)]
    for pair in pairs:
        pair._run = _unchecked_step
    for ffn in ffns:
        ffn._recomputes = _keeps_everything
    try:
        yield model
    finally:
        for module in attention:
            del module.forward
        for pair in pairs:
            del pair._run
        for ffn in ffns:
            del ffn._recomputes
