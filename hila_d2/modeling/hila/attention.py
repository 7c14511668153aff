"""HILA's inter-level attention (Leung et al., 2022): the geometry of a stage pair and the two
attention directions (docs/design/hila.md §1-§3).

Two adjacent encoder stages form a pair: the lower ("bottom", children) grid ``(Hb, Wb)`` and the
upper ("top", parents) grid ``(Ht, Wt)`` with ``Hb <= 2 * Ht <= Hb + 1`` (and the same for widths).
Parent ``(i, j)`` owns the overlapping 4x4 patch of children at rows ``2i-1 .. 2i+2`` and columns
``2j-1 .. 2j+2`` (stride 2, one padding child on each border), so a child has 1, 2 or 4 candidate
parents. A child at row offset ``a`` and column offset ``b`` inside a parent's patch has patch
index ``p = 4a + b``; a learned bias per ``p`` is added to the attention logits.

* Bottom-Up (``BottomUpAttention``): every parent attends over the 16 children of its patch.
* Top-Down (``TopDownAttention``): every child attends over its candidate parents; the softmax runs
  over the parents ("higher levels compete for the child").

Tokens are channels-last ``(B, H, W, C)``. Both softmaxes are max-subtracted and computed in
float32, also under autocast. Cost: both directions work on views of one padded copy of their
keys and values, never on 16-way unfolded or 4-way gathered tensors. Bottom-Up takes the 16
per-offset views of the children on the parent grid (``patch_children``), Top-Down the 4 shifted
views of the parents for each 2x2 sub-position of the children (``sub_position_children``);
logits and outputs are elementwise multiply-reduces over channels (``attention_weights``,
``weighted_sum``). In training each direction's core (logits, softmax, weighted sum) is one
autograd Function with its analytic backward: it keeps the queries, the weights and the keys and
values (Bottom-Up: the children, its keys and values are projected again), and accumulates the
key and value gradients in place into one padded buffer (autograd's own backward of the
per-offset views would allocate a zero-filled padded tensor per view and offset). Under
``torch.compile`` the same gradients are summed functionally from shifted, zero-padded
contributions (``_shifted_sum``): the compiler turns each in-place add into a view into a scatter
of the whole buffer (Bottom-Up's compiled step took 1.7-2.8x its eager time) but fuses the padded
sum into few kernels.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..linear_backward import linear_backward

__all__ = [
    "BottomUpAttention",
    "PATCH",
    "PATCH_POSITIONS",
    "SUB_POSITIONS",
    "TopDownAttention",
    "attention_weights",
    "candidate_parents",
    "interleave_sub_positions",
    "patch_children",
    "sub_position_children",
    "weighted_sum",
]

PATCH = 4  # children per side of a parent's patch
PATCH_POSITIONS = PATCH * PATCH


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
    padded = F.pad(children, (0, 0) * len(rest) + (2, 2, 2, 2))
    return _patch_views(padded, height // 2, width // 2)


def _patch_views(padded: torch.Tensor, ht: int, wt: int) -> List[torch.Tensor]:
    """``patch_children`` of a grid already padded by two children per side: (B, 2Ht + 4,
    2Wt + 4, ...) -> 16 views (B, Ht, Wt, ...)."""
    batch, _, _, *rest = padded.shape
    # padded by two children per side, child 2i - 1 + a sits at padded row 2i + 1 + a, that is
    # row i + (a + 1) // 2 of the 2x2 sub-position (a + 1) % 2
    grid = padded.view(batch, ht + 2, 2, wt + 2, 2, *rest)
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


def _keys_values(views: Sequence[torch.Tensor], heads: int) -> Tuple[List[torch.Tensor], ...]:
    """Views (..., 2A) of the keys-then-values projection -> (keys, values), each a list of views
    (..., heads, A / heads)."""
    width = views[0].shape[-1] // 2
    split = [(v[..., :width].unflatten(-1, (heads, -1)), v[..., width:].unflatten(-1, (heads, -1)))
             for v in views]  # fmt: skip
    return [k for k, _ in split], [v for _, v in split]


def _logit_gradients(
    weights: torch.Tensor, grad_out: torch.Tensor, values: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The gradient (..., n) of the logits of ``out = weighted_sum(softmax(logits), values)``
    from that of ``out`` (..., d); zero for masked candidates (weight 0)."""
    grad_weights = torch.stack([(grad_out * v).sum(-1) for v in values], dim=-1)
    return weights * (grad_weights - (weights * grad_weights).sum(-1, keepdim=True))


def _accumulate_key_value_gradients(
    grad_keys: Sequence[torch.Tensor],
    grad_values: Sequence[torch.Tensor],
    grad_logits: torch.Tensor,
    weights: torch.Tensor,
    scaled_q: torch.Tensor,
    grad_out: torch.Tensor,
) -> None:
    """Add candidate i's key gradient ``grad_logits[..., i] * scaled_q`` and value gradient
    ``weights[..., i] * grad_out`` in place into the views ``grad_keys[i]``, ``grad_values[i]``
    (of one padded buffer, where the candidates of neighbouring queries overlap)."""
    for i, (grad_k, grad_v) in enumerate(zip(grad_keys, grad_values)):
        grad_k.addcmul_(grad_logits[..., i, None], scaled_q)
        grad_v.addcmul_(weights[..., i, None], grad_out)


def _candidate_gradients(
    grad_logits: torch.Tensor, weights: torch.Tensor, scaled_q: torch.Tensor, grad_out: torch.Tensor
) -> List[torch.Tensor]:
    """The functional counterpart of ``_accumulate_key_value_gradients``: candidate i's key then
    value gradients, ``grad_logits[..., i] * scaled_q`` and ``weights[..., i] * grad_out``, as one
    tensor (..., 2hd) per candidate (``scaled_q``, ``grad_out`` (..., h, d))."""
    return [
        torch.cat([(grad_logits[..., i, None] * scaled_q).flatten(-2),
                   (weights[..., i, None] * grad_out).flatten(-2)], dim=-1)
        for i in range(grad_logits.shape[-1])
    ]  # fmt: skip


def _shifted_sum(parts: Sequence[Tuple[torch.Tensor, int, int]]) -> torch.Tensor:
    """Sum of tensors (B, H, W, C) placed at row and column shifts 0..2 of a (B, H + 2, W + 2, C)
    grid (zero elsewhere), without in-place writes: ``parts`` are (tensor, row, column)."""
    return sum(F.pad(x, (0, 0, col, 2 - col, row, 2 - row)) for x, row, col in parts)


def _needs_backward(*inputs: torch.Tensor) -> bool:
    """Whether autograd differentiates through ``inputs`` here: then the attention cores run as
    autograd Functions; otherwise (inference, and tracing for export, which cannot record a
    Function) their forward computation runs as plain operations."""
    return (
        torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and any(x.requires_grad for x in inputs)
    )


def _bottom_up(q, children, kv_weight, bias, scale) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward computation of ``_BottomUpCore``: (output, weights)."""
    ht, wt = q.shape[1:3]
    kv = _at_least_float32(F.linear(children, kv_weight))
    padded = F.pad(kv, (0, 0, 2, 2, 2, 2))
    keys, values = _keys_values(_patch_views(padded, ht, wt), q.shape[-2])
    weights = attention_weights(q, keys, scale, bias)
    return weighted_sum(weights, values), weights


class _BottomUpCore(torch.autograd.Function):
    """Bottom-Up's softmax attention over the 16 children of each parent's patch, with the
    children's key and value projection.

    ``q`` (B, Ht, Wt, h, d), ``children`` (B, 2Ht, 2Wt, Cb), ``kv_weight`` (2hd, Cb) (keys then
    values, used without the kv bias), ``bias`` broadcastable to (B, Ht, Wt, h, 16) (-inf:
    masked) -> (B, Ht, Wt, h, d) float32. Saved for the backward pass: ``q``, ``children`` and the
    weights (B, Ht, Wt, h, 16); the keys and values (2hd channels on the lower grid) are projected
    again there, under the forward's autocast state.
    """

    @staticmethod
    def forward(ctx, q, children, kv_weight, bias, scale):
        device = q.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        out, weights = _bottom_up(q, children, kv_weight, bias, scale)
        ctx.save_for_backward(q, children, kv_weight, weights)
        ctx.scale, ctx.bias_shape = scale, bias.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, children, kv_weight, weights = ctx.saved_tensors
        ht, wt, heads = q.shape[1], q.shape[2], q.shape[-2]
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            kv = F.linear(children, kv_weight)
        with torch.autocast(device, enabled=False):
            padded = F.pad(_at_least_float32(kv), (0, 0, 2, 2, 2, 2))
            scaled_q = _at_least_float32(q) * ctx.scale
            keys, values = _keys_values(_patch_views(padded, ht, wt), heads)
            grad_logits = _logit_gradients(weights, grad_out, values)
            grad_q = weighted_sum(grad_logits, keys) * ctx.scale
            if torch.compiler.is_compiling():  # see the top
                grads = _candidate_gradients(grad_logits, weights, scaled_q, grad_out)
                # patch position p = 4a + b lies at padded row 2(i + (a + 1) // 2) + (a + 1) % 2:
                # sub-position row s holds the offsets a = 1 - s, 3 - s
                grad_padded = interleave_sub_positions([
                    _shifted_sum([(grads[PATCH * a + b], (a + 1) // 2, (b + 1) // 2)
                                  for a in range(1 - s, PATCH, 2) for b in range(1 - t, PATCH, 2)])
                    for s, t in SUB_POSITIONS
                ])  # fmt: skip
            else:
                grad_padded = torch.zeros_like(padded)
                _accumulate_key_value_gradients(
                    *_keys_values(_patch_views(grad_padded, ht, wt), heads),
                    grad_logits, weights, scaled_q, grad_out,
                )  # fmt: skip
            grad_kv = grad_padded[:, 2:-2, 2:-2].to(kv.dtype)
            grad_children, grad_kv_weight, _ = linear_backward(grad_kv, children, kv_weight, None)
        grad_bias = grad_logits.sum_to_size(ctx.bias_shape)
        return grad_q.to(q.dtype), grad_children, grad_kv_weight, grad_bias, None


def _parent_windows(padded: torch.Tensor, s: int, t: int, ht: int, wt: int) -> List[torch.Tensor]:
    """The 4 candidate parents of the children at sub-position (s, t), as views (B, Ht, Wt, ...)
    of the parent grid padded by one parent per side (B, Ht + 2, Wt + 2, ...): candidate
    (d, e) of child (2m + s, 2n + t) is parent (m + s + d - 1, n + t + e - 1)."""
    return [padded[:, s + d : s + d + ht, t + e : t + e + wt] for d in range(2) for e in range(2)]


def _top_down_weights(
    q: torch.Tensor, padded: torch.Tensor, bias: torch.Tensor, scale: float
) -> List[Tuple[torch.Tensor, List[torch.Tensor]]]:
    """Per sub-position of ``SUB_POSITIONS``: the weights (B, Ht, Wt, h, 4) of the children
    there over their candidate parents, and the candidates' values (4 views (B, Ht, Wt, h, d)).
    ``q``, ``bias`` as in ``_TopDownCore``, ``padded`` its ``kv`` padded by one parent per side."""
    ht, wt = padded.shape[1] - 2, padded.shape[2] - 2
    per_sub_position = []
    for (s, t), q_st, bias_st in zip(SUB_POSITIONS, sub_position_children(q), bias):
        keys, values = _keys_values(_parent_windows(padded, s, t, ht, wt), q.shape[-2])
        per_sub_position.append((attention_weights(q_st, keys, scale, bias_st), values))
    return per_sub_position


def _top_down(q, kv, bias, scale) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward computation of ``_TopDownCore``: (output, padded ``kv``, weights)."""
    padded = F.pad(kv, (0, 0, 1, 1, 1, 1))
    per_sub_position = _top_down_weights(q, padded, bias, scale)
    out = interleave_sub_positions([weighted_sum(w, values) for w, values in per_sub_position])
    return out, padded, torch.stack([weights for weights, _ in per_sub_position])


class _TopDownCore(torch.autograd.Function):
    """Top-Down's softmax attention of every child over its 4 candidate parents.

    ``q`` (B, 2Ht, 2Wt, h, d), ``kv`` (B, Ht, Wt, 2hd) the parents' keys then values (float32),
    ``bias`` (4, 1, Ht, Wt, 1, 4) per sub-position of ``SUB_POSITIONS`` (-inf: no such parent)
    -> (B, 2Ht, 2Wt, h, d) float32. Saved for the backward pass: ``q``, the padded ``kv`` and the
    weights (4, B, Ht, Wt, h, 4).
    """

    @staticmethod
    def forward(ctx, q, kv, bias, scale):
        out, padded, weights = _top_down(q, kv, bias, scale)
        ctx.save_for_backward(q, padded, weights)
        ctx.scale, ctx.bias_shape = scale, bias.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, padded, weights = ctx.saved_tensors
        ht, wt, heads = padded.shape[1] - 2, padded.shape[2] - 2, q.shape[-2]
        with torch.autocast(device_type=q.device.type, enabled=False):
            grad_q = torch.empty(q.shape, dtype=padded.dtype, device=q.device)
            # in place into one buffer, or (compiling) summed from shifted parts: see the top
            compiling = torch.compiler.is_compiling()
            grad_padded = None if compiling else torch.zeros_like(padded)
            shifted_grads, grad_logits = [], []
            for (s, t), q_st, grad_out_st, grad_q_st, weights_st in zip(
                SUB_POSITIONS, sub_position_children(q), sub_position_children(grad_out),
                sub_position_children(grad_q), weights,
            ):  # fmt: skip
                keys, values = _keys_values(_parent_windows(padded, s, t, ht, wt), heads)
                grad_logits_st = _logit_gradients(weights_st, grad_out_st, values)
                grad_q_st.copy_(weighted_sum(grad_logits_st, keys) * ctx.scale)
                scaled_q = _at_least_float32(q_st) * ctx.scale
                if compiling:  # candidate (d, e) at shift (s + d, t + e), as in _parent_windows
                    grads = _candidate_gradients(grad_logits_st, weights_st, scaled_q, grad_out_st)
                    shifts = [(s + d, t + e) for d in range(2) for e in range(2)]
                    shifted_grads += [(grad, *shift) for grad, shift in zip(grads, shifts)]
                else:
                    _accumulate_key_value_gradients(
                        *_keys_values(_parent_windows(grad_padded, s, t, ht, wt), heads),
                        grad_logits_st, weights_st, scaled_q, grad_out_st,
                    )  # fmt: skip
                grad_logits.append(grad_logits_st)
            if compiling:
                grad_padded = _shifted_sum(shifted_grads)
        grad_kv = grad_padded[:, 1:-1, 1:-1]
        grad_bias = torch.stack(grad_logits).sum_to_size(ctx.bias_shape)
        return grad_q.to(q.dtype), grad_kv, grad_bias, None


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
        bias = self.position_bias()
        if self.mask_padding:
            valid = patch_children(bottom_valid[None, :, :, None].to(bias.dtype))
            invalid = torch.stack(valid, dim=-1) == 0  # (1, Ht, Wt, 1, 16)
            bias = bias.masked_fill(invalid, float("-inf"))
        if _needs_backward(q, bottom, self.kv.weight, bias):
            out = _BottomUpCore.apply(q, bottom, self.kv.weight, bias, self.scale)
        else:
            out = _bottom_up(q, bottom, self.kv.weight, bias, self.scale)[0]  # (B, Ht, Wt, h, d)
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

    def _sub_position_bias(self, ht: int, wt: int, device: torch.device) -> torch.Tensor:
        """(4, 1, Ht, Wt, 1, 4): per sub-position (s, t) of ``SUB_POSITIONS``, the logit bias of
        the children's 4 candidates, -inf where the candidate lies outside the grid."""
        position = self.position_bias()
        rows, cols = (torch.arange(n, device=device) for n in (ht, wt))
        per_sub_position = []
        for s, t in SUB_POSITIONS:
            # candidate (d, e): the padded parent grid shifted by (u, v) = (s + d, t + e), that is
            # parent (m + u - 1, n + v - 1), patch offset (3 + s - 2u, 3 + t - 2v)
            shifts = [(s + d, t + e) for d in range(2) for e in range(2)]
            per_sub_position.append(
                torch.stack(
                    [
                        position[PATCH * (3 + s - 2 * u) + 3 + t - 2 * v].masked_fill(
                            ~(_inside(rows + u - 1, ht)[:, None] & _inside(cols + v - 1, wt)),
                            float("-inf"),
                        )
                        for u, v in shifts
                    ],
                    dim=-1,
                )
            )  # (Ht, Wt, 4)
        return torch.stack(per_sub_position)[:, None, :, :, None]

    def _queries_keys_values(self, top: torch.Tensor, bottom: torch.Tensor):
        """The children's queries (B, Hc, Wc, h, d), the parents' keys then values (B, Ht, Wt,
        2hd) in at least float32, and the bias of ``_sub_position_bias``."""
        ht, wt = top.shape[1:3]
        bias = self._sub_position_bias(ht, wt, top.device)
        return self._heads(self.q(bottom)), _at_least_float32(self.kv(top)), bias

    def assignment(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """How much each child is assigned to each of its candidate parents: (B, Hc, Wc, h, 4),
        summing to 1 over the last axis (0 for candidates outside the grid)."""
        q, kv, bias = self._queries_keys_values(top, bottom)
        padded = F.pad(kv, (0, 0, 1, 1, 1, 1))
        return interleave_sub_positions(
            [weights for weights, _ in _top_down_weights(q, padded, bias, self.scale)]
        )

    def forward(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        q, kv, bias = self._queries_keys_values(top, bottom)
        if _needs_backward(q, kv, bias):
            out = _TopDownCore.apply(q, kv, bias, self.scale)  # (B, Hc, Wc, h, d)
        else:
            out = _top_down(q, kv, bias, self.scale)[0]
        return self.proj(out.flatten(-2).to(self.proj.weight.dtype))
