"""HILA: Hierarchical Inter-Level Attention (Leung et al., 2022), for any hierarchical encoder.

Two adjacent encoder stages form a pair: the lower ("bottom", children) grid ``(Hb, Wb)`` and the
upper ("top", parents) grid ``(Ht, Wt)`` with ``Hb <= 2 * Ht <= Hb + 1`` (and the same for widths).
Parent ``(i, j)`` owns the overlapping 4x4 patch of children at rows ``2i-1 .. 2i+2`` and columns
``2j-1 .. 2j+2`` (stride 2, one padding child on each border), so a child has 1, 2 or 4 candidate
parents. A child at row offset ``a`` and column offset ``b`` inside a parent's patch has patch
index ``p = 4a + b``; a learned bias per ``p`` is added to the attention logits.

* Bottom-Up (``BottomUpAttention``): every parent attends over the 16 children of its patch.
* Top-Down (``TopDownAttention``): every child attends over its candidate parents; the softmax runs
  over the parents ("higher levels compete for the child").

``TopDownBlock`` / ``BottomUpBlock`` wrap them as pre-norm residual blocks with a Mix-FFN, and
``HILAPair`` interleaves them with the upper stage's blocks (plus one extra lower-level block)
following the official schedule. Tokens are channels-last ``(B, H, W, C)`` throughout.

``parity_mode=True`` reproduces the official code for converted checkpoints: the Bottom-Up scale is
``(C_top / heads) ** -0.5`` and the zero padding children around (and, for odd lower grids, inside)
the lower grid take part in the Bottom-Up softmax. ``parity_mode=False`` masks those padding
children and scales by ``(attn_dim / heads) ** -0.5``. Top-Down never attends to padding. Both
softmaxes are max-subtracted and computed in float32, also under autocast.

Cost: both directions work on views of one padded copy of their keys and values, never on
16-way unfolded or 4-way gathered tensors. Bottom-Up takes the 16 per-offset views of the
children on the parent grid (``patch_children``), Top-Down the 4 shifted views of the parents
for each 2x2 sub-position of the children (``sub_position_children``); logits and outputs are
elementwise multiply-reduces over channels (``attention_weights``, ``weighted_sum``). In training
each HILA step keeps only its matmul, attention-kernel and dense-convolution results for the
backward pass and recomputes the rest (selective activation checkpointing; ``HILAPair``), so its
memory follows its FLOPs; ``MODEL.HILA.CHECKPOINT`` recomputes everything.
"""
import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torch.utils.checkpoint import create_selective_checkpoint_contexts

from .mix_ffn import MixFFN

__all__ = [
    "BottomUpAttention",
    "BottomUpBlock",
    "HILAPair",
    "HILASettings",
    "PATCH_POSITIONS",
    "PairPlan",
    "SUB_POSITIONS",
    "TopDownAttention",
    "TopDownBlock",
    "attach_hila_pairs",
    "attention_weights",
    "candidate_parents",
    "hila_schedule",
    "init_hila_weights",
    "install_bottom_block_init",
    "interleave_sub_positions",
    "pair_tag",
    "patch_children",
    "plan_pair",
    "sub_position_children",
    "weighted_sum",
]

logger = logging.getLogger(__name__)

PATCH = 4  # children per side of a parent's patch
PATCH_POSITIONS = PATCH * PATCH
LAYER_NORM_EPS = 1e-5  # every HILA LayerNorm (the official modules use PyTorch's default)


_ATEN = torch.ops.aten
# ops whose results a HILA step keeps for its backward pass in training: matmuls, attention
# kernels and dense convolutions; everything else in the step (norms, padding, the elementwise
# inter-level attention, GELU, depthwise convolutions) is recomputed in the backward pass
_KEPT_RESULTS = {
    _ATEN.mm, _ATEN.addmm, _ATEN.bmm, _ATEN._scaled_dot_product_flash_attention_for_cpu,
    _ATEN._scaled_dot_product_flash_attention, _ATEN._scaled_dot_product_efficient_attention,
    _ATEN._scaled_dot_product_cudnn_attention,
}  # fmt: skip


def _keep_costly_results(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective activation checkpointing policy of the HILA steps (see ``_KEPT_RESULTS``)."""
    if op.overloadpacket in _KEPT_RESULTS:
        return CheckpointPolicy.MUST_SAVE
    if op.overloadpacket is _ATEN.convolution and args[8] == 1:  # groups: dense, not depthwise
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_SELECTIVE_CHECKPOINT = partial(create_selective_checkpoint_contexts, _keep_costly_results)


def _without_autocast_cache(
    step: Callable[..., torch.Tensor], *inputs: torch.Tensor
) -> torch.Tensor:
    """``step(*inputs)``, under autocast with its weight-cast cache off: selective checkpointing
    needs the recomputation (which starts with an empty cache) to repeat the forward's casts one
    for one."""
    device = inputs[0].device.type
    if not torch.is_autocast_enabled(device):
        return step(*inputs)
    with torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False):
        return step(*inputs)


def pair_tag(top_stage: int) -> str:
    """Official name of the pair whose upper stage is ``top_stage`` (1-based): 3 -> "23"."""
    return f"{top_stage - 1}{top_stage}"


@dataclass(frozen=True)
class HILASettings:
    """HILA options of an encoder (the ``MODEL.HILA.*`` keys; see hila_d2/config.py).

    ``stages`` lists the upper stage (1-based, 2..num_stages) of each pair; empty = HILA off.
    ``strides[t - 1]`` is the schedule stride of the pair whose upper stage is t.
    """

    stages: Tuple[int, ...] = ()
    strides: Tuple[int, ...] = (1, 1, 1, 1)
    mlp_ratio: float = 4.0
    bottom_mlp_ratio: float = 4.0
    num_heads: int = 1
    info_weights: Tuple[float, float] = (0.5, 0.5)
    parity_mode: bool = True
    init_bottom_from_lower_stage: bool = False
    checkpoint: bool = False

    @classmethod
    def from_config(cls, cfg) -> "HILASettings":
        hila = cfg.MODEL.HILA
        return cls(
            stages=tuple(hila.STAGES),
            strides=tuple(hila.STRIDES),
            mlp_ratio=hila.MLP_RATIO,
            bottom_mlp_ratio=hila.BOTTOM_MLP_RATIO,
            num_heads=hila.NUM_HEADS,
            info_weights=tuple(hila.INFO_WEIGHTS),
            parity_mode=hila.PARITY_MODE,
            init_bottom_from_lower_stage=hila.INIT_BOTTOM_FROM_LOWER_STAGE,
            checkpoint=hila.CHECKPOINT,
        )

    def check(self, num_stages: int) -> None:
        """ValueError naming the MODEL.HILA key that does not fit an encoder of ``num_stages``."""
        if any(t not in range(2, num_stages + 1) for t in self.stages) or len(
            set(self.stages)
        ) != len(self.stages):
            raise ValueError(
                f"MODEL.HILA.STAGES lists distinct upper stages in 2..{num_stages} (e.g. [3] or "
                f"[2, 3, 4]), got {list(self.stages)}"
            )
        if len(self.strides) != num_stages or any(s < 1 for s in self.strides):
            raise ValueError(
                f"MODEL.HILA.STRIDES needs {num_stages} entries >= 1, got {list(self.strides)}"
            )
        if len(self.info_weights) != 2:
            raise ValueError(
                f"MODEL.HILA.INFO_WEIGHTS is a pair (w0, w1), got {list(self.info_weights)}"
            )


def hila_schedule(depth: int, stride: int) -> List[Tuple[bool, bool]]:
    """Per upper-stage block j: (Bottom-Up before it, Top-Down + lower block after it).

    Bottom-Up runs when ``j % stride == 0``; Top-Down when ``j != depth - 1`` and
    ``(j - 1) % stride == 0`` (Python modulo). Stride 1 gives ``depth`` Bottom-Up and
    ``depth - 1`` Top-Down iterations.
    """
    if stride < 1:
        raise ValueError(f"HILA stride must be >= 1 (MODEL.HILA.STRIDES), got {stride}")
    return [(j % stride == 0, j != depth - 1 and (j - 1) % stride == 0) for j in range(depth)]


@dataclass(frozen=True)
class PairPlan:
    """The steps of a pair's schedule that contribute to the outputs in use, per upper block j.

    ``bottom_up[j]``: Bottom-Up before block j; ``top_down[j]``: Top-Down + lower block after it;
    ``step_norm[j]``: ``bottom_norm`` after it (``norm_every_step``); ``final_norm``: once at the
    end. Only the first ``blocks`` upper blocks run (a norm may follow a block that does not);
    ``bottom_in``: the lower tokens are read.
    """

    bottom_up: Tuple[bool, ...]
    top_down: Tuple[bool, ...]
    step_norm: Tuple[bool, ...]
    final_norm: bool
    blocks: int
    bottom_in: bool

    @property
    def steps(self) -> int:
        """Iterations j of the schedule that run anything."""
        flags = zip(self.bottom_up, self.top_down, self.step_norm)
        used = [j for j, step in enumerate(flags) if any(step)]
        return max(used[-1] + 1 if used else 0, self.blocks)

    @property
    def runs_anything(self) -> bool:
        return self.steps > 0 or self.final_norm


def plan_pair(
    depth: int,
    stride: int,
    norm_every_step: bool,
    top_used: bool = True,
    bottom_used: bool = True,
) -> PairPlan:
    """The steps of the schedule (``hila_schedule``) of a pair over ``depth`` upper blocks that
    affect the upper tokens (``top_used``) or the lower tokens (``bottom_used``) it returns.

    A backward liveness pass: a step runs only if what it writes is read later. A Top-Down step
    (and the lower block) writes the lower tokens, reading both; a Bottom-Up step writes the upper
    tokens, reading both; an upper block and a norm read and write one stream.
    """
    schedule = hila_schedule(depth, stride)
    bottom_up, top_down, step_norm, blocks = ([False] * depth for _ in range(4))
    top, bottom = top_used, bottom_used
    final_norm = bottom and not norm_every_step
    for j in reversed(range(depth)):
        scheduled_bottom_up, scheduled_top_down = schedule[j]
        if scheduled_top_down:
            top_down[j] = bottom
            top = top or bottom
        elif norm_every_step:
            step_norm[j] = bottom
        blocks[j] = top
        if scheduled_bottom_up and top:
            bottom_up[j] = bottom = True
    return PairPlan(
        tuple(bottom_up), tuple(top_down), tuple(step_norm), final_norm, sum(blocks), bottom
    )


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


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is in a lower precision (float16, bfloat16), else unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def attention_weights(
    q: torch.Tensor, keys: Sequence[torch.Tensor], scale: float, bias: torch.Tensor
) -> torch.Tensor:
    """Softmax over n candidates of ``scale * <q, keys[i]> + bias[..., i]``.

    ``q`` (..., d) and each of the n ``keys`` (broadcastable to ``q``), ``bias`` broadcastable to
    (..., n) and -inf for masked candidates -> weights (..., n). The dot products are elementwise
    multiply-reduces over ``d`` (no tiny matmuls), computed in at least float32 even under
    autocast, and the softmax is max-subtracted (the official code's plain exp overflows for
    logits > 88).
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = _at_least_float32(q) * scale
        logits = torch.stack([(q * _at_least_float32(k)).sum(-1) for k in keys], dim=-1)
        return torch.softmax(logits + bias.to(logits.dtype), dim=-1)


def _inside(index: torch.Tensor, size: int) -> torch.Tensor:
    """Whether each entry of ``index`` lies in [0, size)."""
    return (index >= 0) & (index < size)


def weighted_sum(weights: torch.Tensor, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i weights[..., i, None] * values[i]``: weights (..., n), n values (..., d) ->
    (..., d), in the values' dtype promoted with the weights'."""
    out = weights[..., 0, None] * values[0]
    for i in range(1, len(values)):
        out = torch.addcmul(out, weights[..., i, None], values[i])
    return out


def patch_children(children: torch.Tensor) -> List[torch.Tensor]:
    """The 16 children of every parent's 4x4 patch, as strided views of one padded copy.

    ``children`` (B, 2Ht, 2Wt, ...) -> 16 tensors (B, Ht, Wt, ...); entry ``p = 4a + b`` holds
    child (2i - 1 + a, 2j - 1 + b) of parent (i, j), zero outside the grid.
    """
    batch, height, width, *rest = children.shape
    ht, wt = height // 2, width // 2
    # padded by two children per side, child 2i - 1 + a sits at padded row 2i + 1 + a, that is
    # row i + (a + 1) // 2 of the 2x2 sub-position (a + 1) % 2
    grid = F.pad(children, (0, 0) * len(rest) + (2, 2, 2, 2))
    grid = grid.view(batch, ht + 2, 2, wt + 2, 2, *rest)
    return [
        grid[:, (a + 1) // 2 : (a + 1) // 2 + ht, (a + 1) % 2,
             (b + 1) // 2 : (b + 1) // 2 + wt, (b + 1) % 2]
        for a in range(PATCH) for b in range(PATCH)
    ]  # fmt: skip


SUB_POSITIONS = ((0, 0), (0, 1), (1, 0), (1, 1))  # a child's (row, col) parity


def sub_position_children(children: torch.Tensor) -> List[torch.Tensor]:
    """(B, 2Ht, 2Wt, ...) -> the 4 views (B, Ht, Wt, ...) of the children at each of
    ``SUB_POSITIONS``: entry (s, t) holds child (2m + s, 2n + t) at (m, n)."""
    batch, height, width, *rest = children.shape
    grid = children.view(batch, height // 2, 2, width // 2, 2, *rest)
    return [grid[:, :, s, :, t] for s, t in SUB_POSITIONS]


def interleave_sub_positions(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverse of ``sub_position_children``: 4 tensors (B, Ht, Wt, ...) -> (B, 2Ht, 2Wt, ...)."""
    rows = [torch.stack(parts[2 * s : 2 * s + 2], dim=3) for s in range(2)]  # (B, Ht, Wt, 2, ...)
    grid = torch.stack(rows, dim=2)  # (B, Ht, 2, Wt, 2, ...)
    batch, ht, _, wt, _, *rest = grid.shape
    return grid.reshape(batch, 2 * ht, 2 * wt, *rest)


def candidate_parents(children: int, parents: int, device=None) -> Tuple[torch.Tensor, ...]:
    """For each child index along one axis, its 2 candidate parent indices (clamped into range),
    their patch offsets (0..3) and whether they exist: three (children, 2) tensors."""
    child = torch.arange(children, device=device)[:, None]
    parent = (child + 1) // 2 - 1 + torch.arange(2, device=device)[None, :]
    offset = child - (2 * parent - 1)
    return parent.clamp(0, parents - 1), offset, _inside(parent, parents)


class _InterLevelAttention(nn.Module):
    """Parameters shared by both directions, in the official names.

    ``q``: query_dim -> attn_dim, ``kv``: key_dim -> 2 * attn_dim (keys, then values),
    ``proj``: attn_dim -> query_dim, and two (16,) tensors whose sum is the per-patch-position
    logit bias (both exist so that official checkpoints load).
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        attn_dim: int,
        num_heads: int,
        scale_dim: int,
        qkv_bias: bool = True,
    ):
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(
                f"HILA attention width {attn_dim} is not divisible by {num_heads} heads "
                "(MODEL.HILA.NUM_HEADS)"
            )
        self.num_heads = num_heads
        self.attn_dim = attn_dim
        self.scale = (scale_dim / num_heads) ** -0.5
        self.q = nn.Linear(query_dim, attn_dim, bias=qkv_bias)
        self.kv = nn.Linear(key_dim, 2 * attn_dim, bias=qkv_bias)
        self.proj = nn.Linear(attn_dim, query_dim)
        self.relative_position_init = nn.Parameter(torch.zeros(PATCH_POSITIONS))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(PATCH_POSITIONS))

    def position_bias(self) -> torch.Tensor:
        """(16,) logit bias per patch position p = 4a + b."""
        return self.relative_position_init + self.relative_position_bias_table

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., attn_dim) -> (..., heads, attn_dim / heads)."""
        return x.unflatten(-1, (self.num_heads, self.attn_dim // self.num_heads))


class BottomUpAttention(_InterLevelAttention):
    """Parents attend over the 16 children of their 4x4 patch (softmax over children).

    ``forward(top (B, Ht, Wt, Ct), bottom (B, 2Ht, 2Wt, Cb), bottom_valid (2Ht, 2Wt) bool)``
    -> (B, Ht, Wt, Ct). Both inputs are already normalised; ``bottom`` is zero where
    ``bottom_valid`` is False (odd lower grids). With ``mask_padding`` the border padding and the
    invalid children are excluded from the softmax; without it (the official semantics) they are
    zero vectors whose keys and values are the ``kv`` bias.

    Computed on the parent grid from the 16 per-offset views of the children
    (``patch_children``): 16 elementwise multiply-reduces for the logits and 16 multiply-adds for
    the output, with nothing of 16x the lower map's size materialised.
    """

    def __init__(self, *args, mask_padding: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_padding = mask_padding

    def forward(
        self, top: torch.Tensor, bottom: torch.Tensor, bottom_valid: torch.Tensor
    ) -> torch.Tensor:
        q = self._heads(self.q(top))  # (B, Ht, Wt, h, d)
        # kv(child) = W child + bias. The key bias adds the same q . bias_k to all 16 logits of a
        # parent, which the softmax cancels; the value bias adds bias_v to the output, since the
        # weights sum to 1. So the padding children (zero vectors) are zero here, like the border.
        kv = _at_least_float32(F.linear(bottom, self.kv.weight))
        keys, values = (patch_children(self._heads(t)) for t in kv.chunk(2, dim=-1))
        bias = self.position_bias()
        if self.mask_padding:
            valid = patch_children(bottom_valid[None, :, :, None].to(bias.dtype))
            invalid = torch.stack(valid, dim=-1) == 0  # (1, Ht, Wt, 1, 16)
            bias = bias.masked_fill(invalid, float("-inf"))
        weights = attention_weights(q, keys, self.scale, bias)  # (B, Ht, Wt, h, 16)
        out = weighted_sum(weights, values)  # (B, Ht, Wt, h, d)
        if self.kv.bias is not None:
            out = out + self._heads(self.kv.bias[self.attn_dim :])
        return self.proj(out.flatten(-2).to(self.proj.weight.dtype))


class TopDownAttention(_InterLevelAttention):
    """Children attend over their 1, 2 or 4 candidate parents (softmax over the parents).

    ``forward(top (B, Ht, Wt, Ct), bottom (B, Hc, Wc, Cb))`` with ``Hc = 2Ht``, ``Wc = 2Wt``
    -> (B, Hc, Wc, Cb). Both inputs are already normalised. The candidates of child (r, c) are
    ordered (row 0, col 0), (row 0, col 1), (row 1, col 0), (row 1, col 1) of
    ``candidate_parents``.

    Computed per sub-position (s, t) of the children (``sub_position_children``): child
    (2m + s, 2n + t) has the candidate parents (m + s + d - 1, n + t + e - 1), d, e in {0, 1},
    at patch offsets (3 - s - 2d, 3 - t - 2e): four shifted views of the padded parent grid.
    """

    def _sub_position_weights(
        self, top: torch.Tensor, bottom: torch.Tensor
    ) -> List[Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Per sub-position (s, t): the weights (B, Ht, Wt, h, 4) of the children there over
        their candidates, and the candidates' values, 4 views (B, Ht, Wt, h, d)."""
        ht, wt = top.shape[1:3]
        queries = sub_position_children(self._heads(self.q(bottom)))
        kv = F.pad(_at_least_float32(self.kv(top)), (0, 0, 1, 1, 1, 1))  # (B, Ht+2, Wt+2, 2A)
        keys, values = (self._heads(t) for t in kv.chunk(2, dim=-1))
        position = self.position_bias()
        rows, cols = (torch.arange(n, device=top.device) for n in (ht, wt))
        per_sub_position = []
        for q, (s, t) in zip(queries, SUB_POSITIONS):
            # candidate (d, e): the padded parent grid shifted by (u, v) = (s + d, t + e), that is
            # parent (m + u - 1, n + v - 1), patch offset (3 + s - 2u, 3 + t - 2v)
            shifts = [(s + d, t + e) for d in range(2) for e in range(2)]
            bias = torch.stack(
                [
                    position[PATCH * (3 + s - 2 * u) + 3 + t - 2 * v].masked_fill(
                        ~(_inside(rows + u - 1, ht)[:, None] & _inside(cols + v - 1, wt)),
                        float("-inf"),
                    )
                    for u, v in shifts
                ],
                dim=-1,
            )  # (Ht, Wt, 4)
            windows = [(u, u + ht, v, v + wt) for u, v in shifts]
            weights = attention_weights(
                q, [keys[:, r0:r1, c0:c1] for r0, r1, c0, c1 in windows], self.scale,
                bias[:, :, None],
            )  # fmt: skip
            candidates = [values[:, r0:r1, c0:c1] for r0, r1, c0, c1 in windows]
            per_sub_position.append((weights, candidates))
        return per_sub_position

    def assignment(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """How much each child is assigned to each of its candidate parents: (B, Hc, Wc, h, 4),
        summing to 1 over the last axis (0 for candidates outside the grid)."""
        return interleave_sub_positions(
            [weights for weights, _ in self._sub_position_weights(top, bottom)]
        )

    def forward(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        out = interleave_sub_positions(
            [weighted_sum(w, values) for w, values in self._sub_position_weights(top, bottom)]
        )  # (B, Hc, Wc, h, d)
        return self.proj(out.flatten(-2).to(self.proj.weight.dtype))


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


class HILAPair(nn.Module):
    """The HILA modules of one (lower, upper) stage pair and their schedule.

    ``bottom_block`` is the extra lower-level self-attention block supplied by the encoder, called
    as ``bottom_block(x (B, Hb, Wb, Cb), use_index)`` where ``use_index`` counts its uses in this
    forward pass from 0. With ``norm_every_step`` (the official Swin variant, in parity mode)
    ``bottom_norm`` runs after every upper block that is not followed by Top-Down; otherwise it
    runs once at the end (the official MiT ``prevnorm``). The weights are shared by all iterations.
    ``restrict(plan)`` keeps only the steps and modules that an encoder's used outputs need.

    In training, each step (Bottom-Up block, Top-Down block, lower-level block) keeps only the
    results of its matmuls, attention kernels and dense convolutions for the backward pass and
    recomputes the cheap rest there (selective activation checkpointing, ``_KEPT_RESULTS``), so
    that HILA's training memory follows its compute. With ``checkpoint`` it keeps nothing but
    its inputs and recomputes everything (less memory, one more forward of the HILA steps).
    The random state of drop path is replayed in the recomputation.
    """

    def __init__(
        self,
        bottom_dim: int,
        top_dim: int,
        bottom_block: nn.Module,
        *,
        stride: int = 1,
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        info_weights: Sequence[float] = (0.5, 0.5),
        drop_path: float = 0.0,
        parity_mode: bool = True,
        norm_every_step: bool = False,
        checkpoint: bool = False,
    ):
        super().__init__()
        hila_schedule(1, stride)  # validates the stride
        self.stride = stride
        self.norm_every_step = norm_every_step
        self.checkpoint = checkpoint
        block_args = dict(
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            info_weights=info_weights,
            drop_path=drop_path,
            parity_mode=parity_mode,
        )
        self.top_down = TopDownBlock(bottom_dim, top_dim, **block_args)
        self.bottom_up = BottomUpBlock(bottom_dim, top_dim, **block_args)
        self.top_down.apply(init_hila_weights)
        self.bottom_up.apply(init_hila_weights)
        self.bottom_block = bottom_block
        self.bottom_norm = nn.LayerNorm(bottom_dim, eps=LAYER_NORM_EPS)
        self.plan: Optional[PairPlan] = None  # None: every step of the schedule

    def restrict(self, plan: PairPlan) -> None:
        """Run only the steps of ``plan`` and drop the modules that none of them uses."""
        self.plan = plan
        if not any(plan.bottom_up):
            self.bottom_up = None
        if not any(plan.top_down):
            self.top_down = self.bottom_block = None
        if not (plan.final_norm or any(plan.step_norm)):
            self.bottom_norm = None

    @classmethod
    def from_settings(
        cls,
        hila: HILASettings,
        top: int,
        bottom_dim: int,
        top_dim: int,
        bottom_block: nn.Module,
        **kwargs,
    ) -> "HILAPair":
        """The pair whose upper stage is ``top`` (1-based) with the stride, heads, MLP ratio, info
        weights, parity mode and checkpointing of ``hila``; ``kwargs`` (``drop_path``,
        ``norm_every_step``) as in ``__init__``."""
        return cls(
            bottom_dim,
            top_dim,
            bottom_block,
            stride=hila.strides[top - 1],
            num_heads=hila.num_heads,
            mlp_ratio=hila.mlp_ratio,
            info_weights=hila.info_weights,
            parity_mode=hila.parity_mode,
            checkpoint=hila.checkpoint,
            **kwargs,
        )

    def forward(
        self,
        top: torch.Tensor,
        bottom: torch.Tensor,
        top_blocks: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the upper stage's blocks with HILA interleaved.

        Args:
            top: (B, Ht, Wt, Ct) upper tokens entering the stage's first block.
            bottom: (B, Hb, Wb, Cb) the lower stage's tokens.
            top_blocks: the upper stage's blocks, each (B, Ht, Wt, Ct) -> (B, Ht, Wt, Ct) (the
                first ``plan.blocks`` of them when the pair is restricted).
        Returns:
            (upper tokens after the last block, updated and normalised lower tokens); with a
            plan, either may be left partly updated when that stream is not used.
        """
        plan = self.plan or plan_pair(len(top_blocks), self.stride, self.norm_every_step)
        uses = 0
        for j in range(plan.steps):
            if plan.bottom_up[j]:
                top = self._run(self.bottom_up, top, bottom)
            if j < plan.blocks:
                top = top_blocks[j](top)
            if plan.top_down[j]:
                updated = self._run(self.top_down, top, bottom)
                bottom = self._run(partial(self.bottom_block, use_index=uses), updated)
                uses += 1
            elif plan.step_norm[j]:
                bottom = self.bottom_norm(bottom)
        if plan.final_norm:
            bottom = self.bottom_norm(bottom)
        return top, bottom

    def _run(self, step: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """``step(*inputs)``, checkpointed in training: selectively, or fully with
        ``checkpoint``."""
        if not (self.training and torch.is_grad_enabled()):
            return step(*inputs)
        if self.checkpoint:
            return activation_checkpoint(step, *inputs, use_reentrant=False)
        return activation_checkpoint(
            partial(_without_autocast_cache, step), *inputs, use_reentrant=False,
            context_fn=_SELECTIVE_CHECKPOINT,
        )  # fmt: skip

    @torch.no_grad()
    def init_bottom_block_from(self, block: nn.Module) -> None:
        """Copy ``block``'s weights into ``bottom_block`` in place (its parameters stay the same
        objects, so an optimiser built before keeps training them); ValueError on a shape
        mismatch, e.g. another MLP ratio (MODEL.HILA.BOTTOM_MLP_RATIO)."""
        source = block.state_dict()
        target = self.bottom_block.state_dict()
        mismatched = [k for k in target if k in source and source[k].shape != target[k].shape]
        if mismatched or set(source) != set(target):
            raise ValueError(
                "Cannot initialise the HILA lower-level block from the lower stage's last block: "
                f"their parameters differ ({mismatched or sorted(set(source) ^ set(target))}). "
                "Set MODEL.HILA.BOTTOM_MLP_RATIO to the encoder's MLP ratio (4)."
            )
        self.bottom_block.load_state_dict(source)


def install_bottom_block_init(encoder: nn.Module, lower_blocks: Mapping[str, str]) -> None:
    """"No HILA pretraining": when a checkpoint loaded into (a model containing) ``encoder`` lacks
    every weight of a pair's ``bottom_block``, copy that pair's lower-stage block into it.

    The pairs are ``encoder.hila`` (a ModuleDict by tag) at load time; ``lower_blocks`` maps a tag
    to the name, relative to ``encoder``, of the lower stage's last block. The copy runs as a
    load_state_dict post-hook, in place and only if that block itself was loaded; the copied keys
    are removed from the reported missing keys and the copy is logged.
    """

    def hook(module: nn.Module, incompatible) -> None:
        missing = incompatible.missing_keys
        names = {module: name for name, module in encoder.named_modules()}
        modules: Dict[str, nn.Module] = dict(encoder.named_modules())
        for tag, pair in encoder.hila.items():
            if pair.bottom_block is None:  # restricted to Bottom-Up only: nothing to copy into
                continue
            marker = f"{names[pair]}.bottom_block."
            keys = [k for k in missing if marker in k]
            if not keys:
                continue
            prefix = keys[0][: keys[0].index(marker)]
            expected = {f"{prefix}{marker}{k}" for k in pair.bottom_block.state_dict()}
            lower = f"{prefix}{lower_blocks[tag]}."
            if set(keys) != expected or any(k.startswith(lower) for k in missing):
                logger.warning(
                    "HILA pair %s: not initialising its lower-level block from %s (the checkpoint "
                    "lacks that block or has part of the pair's own block)", tag, lower_blocks[tag]
                )
                continue
            pair.init_bottom_block_from(modules[lower_blocks[tag]])
            for key in keys:
                missing.remove(key)
            logger.info("HILA pair %s: lower-level block initialised from %s", tag, lower_blocks[tag])

    encoder.register_load_state_dict_post_hook(hook)


def attach_hila_pairs(
    encoder: nn.Module,
    hila: HILASettings,
    build_pair: Callable[[int], HILAPair],
    lower_block: Callable[[int], str],
) -> None:
    """Give ``encoder`` its HILA pairs as ``encoder.hila`` (a ModuleDict by ``pair_tag``, empty
    without pairs), ``build_pair(top)`` building the pair whose upper stage is ``top``; with
    ``hila.init_bottom_from_lower_stage``, also ``install_bottom_block_init`` with
    ``lower_block(top)``, the name in ``encoder`` of the last block of stage ``top - 1``."""
    encoder.hila = nn.ModuleDict({pair_tag(top): build_pair(top) for top in sorted(hila.stages)})
    if hila.init_bottom_from_lower_stage:
        install_bottom_block_init(
            encoder, {pair_tag(top): lower_block(top) for top in hila.stages}
        )
