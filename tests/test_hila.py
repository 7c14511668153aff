"""HILA's inter-level attention against slow references written from the spec (docs/design/hila.md
§1-§3), its locality, numerics, schedule and blocks."""
import math

import pytest
import torch
import torch.nn.functional as F

from hila_d2.modeling.hila.attention import BottomUpAttention, TopDownAttention, attention_weights
from hila_d2.modeling.hila.blocks import BottomUpBlock, TopDownBlock
from hila_d2.modeling.hila.schedule import hila_schedule

TOL = 1e-6


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, including the (zero-initialised) position biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)
    return module.double()


def _attention(module, query_dim, key_dim, heads, direction, parity):
    attn_dim = min(query_dim, key_dim)
    if direction == "bu":
        return BottomUpAttention(
            query_dim, key_dim, attn_dim, heads,
            scale_dim=query_dim if parity else attn_dim, mask_padding=not parity,
        )
    return TopDownAttention(query_dim, key_dim, attn_dim, heads, scale_dim=query_dim)


def _parents_of(r: int, parents: int):
    """Candidate parent rows of child row r (docs/design/hila.md §1), with the child's patch
    offset."""
    return [(i, r - (2 * i - 1)) for i in ((r + 1) // 2 - 1, (r + 1) // 2) if 0 <= i < parents]


def reference_bottom_up(attn, top, bottom, parity: bool):
    """Loop reference of §2.1: top (Ht, Wt, Ct), bottom (Hb, Wb, Cb), one image, float64."""
    ht, wt, _ = top.shape
    hb, wb, cb = bottom.shape
    heads, width = attn.num_heads, attn.attn_dim // attn.num_heads
    pos = attn.relative_position_init + attn.relative_position_bias_table
    out = torch.zeros(ht, wt, attn.attn_dim, dtype=top.dtype)
    for i in range(ht):
        for j in range(wt):
            q = attn.q(top[i, j])
            keys, values, biases = [], [], []
            for a in range(4):
                for b in range(4):
                    r, c = 2 * i - 1 + a, 2 * j - 1 + b
                    inside = 0 <= r < hb and 0 <= c < wb
                    if not inside and not parity:
                        continue  # clean mode: padding children are masked
                    child = bottom[r, c] if inside else torch.zeros(cb, dtype=top.dtype)
                    kv = attn.kv(child)
                    keys.append(kv[: attn.attn_dim])
                    values.append(kv[attn.attn_dim:])
                    biases.append(pos[4 * a + b])
            for h in range(heads):
                s = slice(h * width, (h + 1) * width)
                logits = torch.stack(
                    [attn.scale * (q[s] @ k[s]) + bias for k, bias in zip(keys, biases)]
                )
                weights = torch.softmax(logits, 0)
                out[i, j, s] = sum(w * v[s] for w, v in zip(weights, values))
    return attn.proj(out)


def reference_top_down(attn, top, bottom):
    """Loop reference of §2.2: every child's softmax runs over its candidate parents."""
    ht, wt, _ = top.shape
    hb, wb, _ = bottom.shape
    heads, width = attn.num_heads, attn.attn_dim // attn.num_heads
    pos = attn.relative_position_init + attn.relative_position_bias_table
    out = torch.zeros(hb, wb, attn.attn_dim, dtype=top.dtype)
    for r in range(hb):
        for c in range(wb):
            q = attn.q(bottom[r, c])
            parents = [
                (i, j, 4 * a + b) for i, a in _parents_of(r, ht) for j, b in _parents_of(c, wt)
            ]
            for h in range(heads):
                s = slice(h * width, (h + 1) * width)
                logits, values = [], []
                for i, j, p in parents:
                    kv = attn.kv(top[i, j])
                    logits.append(attn.scale * (q[s] @ kv[: attn.attn_dim][s]) + pos[p])
                    values.append(kv[attn.attn_dim:][s])
                weights = torch.softmax(torch.stack(logits), 0)
                out[r, c, s] = sum(w * v for w, v in zip(weights, values))
    return attn.proj(out)


def official_top_down(attn, top, bottom):
    """The official fold/unfold formulation for one head (§2.2 step 3): exp without max,
    per-child sums by fold, read back by unfold, contributions summed by fold."""
    ht, wt, _ = top.shape
    hb, wb, cb = bottom.shape
    grid = dict(kernel_size=4, stride=2, padding=1)
    patches = F.unfold(bottom.permute(2, 0, 1)[None], **grid)  # (1, Cb*16, L)
    patches = patches.view(cb, 16, ht * wt).permute(2, 1, 0)  # (L, 16, Cb)
    q = attn.q(patches)  # (L, 16, A)
    k, v = attn.kv(top.reshape(ht * wt, -1)).chunk(2, dim=-1)  # (L, A)
    pos = attn.relative_position_init + attn.relative_position_bias_table
    e = torch.exp(attn.scale * (q @ k[:, :, None]).squeeze(-1) + pos)  # (L, 16)
    fold = dict(output_size=(hb, wb), **grid)
    sums = F.fold(e.T[None], **fold)  # (1, 1, Hb, Wb)
    sums = F.unfold(sums, **grid)[0].T  # (L, 16)
    sums = torch.where(sums == 0, torch.ones_like(sums), sums)
    weighted = (e / sums)[:, :, None] * v[:, None, :]  # (L, 16, A)
    out = F.fold(weighted.permute(2, 1, 0).reshape(1, -1, ht * wt), **fold)[0]  # (A, Hb, Wb)
    return attn.proj(out.permute(1, 2, 0))


GEOMETRIES = [(3, 4, 6, 8), (4, 3, 7, 5), (2, 2, 4, 4)]  # (Ht, Wt, Hb, Wb), incl. odd Hb/Wb


@pytest.mark.parametrize("parity", [True, False])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_bottom_up_matches_loop_reference(parity, heads, geometry):
    ht, wt, hb, wb = geometry
    top_dim, bottom_dim = 12, 8
    attn = _randomise(_attention(None, top_dim, bottom_dim, heads, "bu", parity), seed=heads)
    top = torch.randn(2, ht, wt, top_dim, dtype=torch.float64)
    bottom = torch.randn(2, hb, wb, bottom_dim, dtype=torch.float64)
    padded = F.pad(bottom, (0, 0, 0, 2 * wt - wb, 0, 2 * ht - hb))
    valid = torch.zeros(2 * ht, 2 * wt, dtype=torch.bool)
    valid[:hb, :wb] = True
    out = attn(top, padded, valid)
    for n in range(2):
        expected = reference_bottom_up(attn, top[n], bottom[n], parity)
        torch.testing.assert_close(out[n], expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_top_down_matches_loop_reference(heads, geometry):
    ht, wt, hb, wb = geometry
    bottom_dim, top_dim = 8, 12
    attn = _randomise(_attention(None, bottom_dim, top_dim, heads, "td", True), seed=10 + heads)
    top = torch.randn(2, ht, wt, top_dim, dtype=torch.float64)
    bottom = torch.randn(2, 2 * ht, 2 * wt, bottom_dim, dtype=torch.float64)
    out = attn(top, bottom)[:, :hb, :wb]
    for n in range(2):
        expected = reference_top_down(attn, top[n], bottom[n, :hb, :wb])
        torch.testing.assert_close(out[n], expected, atol=TOL, rtol=0)


def test_top_down_matches_official_fold_formulation():
    """One head (every paper config): the stable per-child softmax equals the official code."""
    bottom_dim, top_dim = 8, 12
    attn = _randomise(_attention(None, bottom_dim, top_dim, 1, "td", True), seed=3)
    top = torch.randn(1, 5, 6, top_dim, dtype=torch.float64)
    bottom = torch.randn(1, 10, 12, bottom_dim, dtype=torch.float64)
    expected = official_top_down(attn, top[0], bottom[0])
    torch.testing.assert_close(attn(top, bottom)[0], expected, atol=TOL, rtol=0)


def test_scales_follow_parity_mode():
    """Parity: Bottom-Up scales by the upper width (official quirk); clean: by the attention width."""
    parity = BottomUpBlock(64, 160, num_heads=1, mlp_ratio=4, info_weights=(0.5, 0.5),
                           drop_path=0.0, parity_mode=True)
    clean = BottomUpBlock(64, 160, num_heads=2, mlp_ratio=4, info_weights=(0.5, 0.5),
                          drop_path=0.0, parity_mode=False)
    assert parity.bottomup_attn.scale == pytest.approx(160 ** -0.5)
    assert clean.bottomup_attn.scale == pytest.approx(32 ** -0.5)
    assert not parity.bottomup_attn.mask_padding and clean.bottomup_attn.mask_padding


def test_top_down_locality():
    """Changing a parent that is not a candidate of a child leaves that child's update unchanged,
    while changing one of its candidates changes it."""
    attn = _randomise(_attention(None, 8, 12, 1, "td", True), seed=4)
    top = torch.randn(1, 4, 4, 12, dtype=torch.float64)
    bottom = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    base = attn(top, bottom)
    child = (3, 4)  # candidate parents: rows {1, 2}, cols {1, 2}
    far, near = top.clone(), top.clone()
    far[0, 3, 3] += 5.0
    near[0, 2, 1] += 5.0
    assert torch.equal(attn(far, bottom)[0, child[0], child[1]], base[0, child[0], child[1]])
    assert not torch.allclose(attn(near, bottom)[0, child[0], child[1]], base[0, child[0], child[1]])


@pytest.mark.parametrize("parity", [True, False])
def test_bottom_up_locality(parity):
    """Changing a child outside a parent's 4x4 patch leaves that parent's update unchanged."""
    attn = _randomise(_attention(None, 12, 8, 1, "bu", parity), seed=5)
    top = torch.randn(1, 4, 4, 12, dtype=torch.float64)
    bottom = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    valid = torch.ones(8, 8, dtype=torch.bool)
    base = attn(top, bottom, valid)
    parent = (1, 1)  # children rows/cols 1..4
    far, near = bottom.clone(), bottom.clone()
    far[0, 5, 2] += 5.0
    near[0, 4, 1] += 5.0
    assert torch.equal(attn(top, far, valid)[0, 1, 1], base[0, parent[0], parent[1]])
    assert not torch.allclose(attn(top, near, valid)[0, 1, 1], base[0, 1, 1])


def test_softmax_is_stable_for_huge_logits():
    """The official exp() overflows for logits > 88; the max-subtracted softmax does not."""
    attn = _randomise(_attention(None, 8, 12, 1, "td", True), seed=6).float()
    with torch.no_grad():
        attn.q.weight.mul_(300.0)
    top = torch.randn(1, 3, 3, 12)
    bottom = torch.randn(1, 6, 6, 8)
    official = official_top_down(attn, top[0], bottom[0])
    assert not torch.isfinite(official).all()  # the official formulation overflows here
    out = attn(top, bottom)
    assert torch.isfinite(out).all()
    expected = reference_top_down(attn.double(), top[0].double(), bottom[0].double())
    torch.testing.assert_close(out[0].double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_weights_are_float32_under_autocast(dtype):
    """Under autocast the logits and the softmax are computed in float32 from the low-precision
    queries and keys, and match a float64 softmax of the same inputs."""
    torch.manual_seed(0)
    q = (torch.randn(3, 5, 8) * 4).to(dtype)
    keys = [(torch.randn(3, 1, 8) * 4).to(dtype) for _ in range(4)]  # broadcast over axis 1
    bias = torch.tensor([0.5, float("-inf"), -0.25, 1.0])
    with torch.autocast("cpu", dtype=dtype):
        weights = attention_weights(q, keys, 0.35, bias)
    assert weights.dtype == torch.float32 and weights.shape == (3, 5, 4)
    logits = torch.stack([(q.double() * k.double()).sum(-1) for k in keys], dim=-1)
    expected = torch.softmax(0.35 * logits + bias.double(), dim=-1)
    torch.testing.assert_close(weights.double(), expected, atol=1e-6, rtol=0)
    assert torch.all(weights[..., 1] == 0)


def test_top_down_under_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    attn = TopDownAttention(16, 24, 16, 1, scale_dim=16)
    top, bottom = torch.randn(2, 4, 4, 24), torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        exact = attn(top, bottom)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = attn(top, bottom)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), exact, atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    "depth, stride, bottom_up, top_down",
    [(2, 1, [0, 1], [0]), (6, 3, [0, 3], [1, 4]), (6, 2, [0, 2, 4], [1, 3]), (6, 1, list(range(6)),
     list(range(5)))],
)
def test_schedule(depth, stride, bottom_up, top_down):
    """docs/design/hila.md §4: which upper blocks get Bottom-Up before and Top-Down after them."""
    schedule = hila_schedule(depth, stride)
    assert [j for j, (bu, _) in enumerate(schedule) if bu] == bottom_up
    assert [j for j, (_, td) in enumerate(schedule) if td] == top_down


def test_schedule_rejects_bad_stride():
    with pytest.raises(ValueError, match="MODEL.HILA.STRIDES"):
        hila_schedule(2, 0)


def test_blocks_follow_their_formulas():
    """Top-Down block: b1 = b + TD(norm2(t), norm1(b)); b2 = w0 b1 + w1 FFN(norm3(b1));
    Bottom-Up block: the same on the parents with norm4..6 (docs/design/hila.md §3)."""
    torch.manual_seed(1)
    args = dict(num_heads=1, mlp_ratio=2, info_weights=(0.3, 0.7), drop_path=0.0, parity_mode=True)
    td, bu = TopDownBlock(8, 12, **args).double(), BottomUpBlock(8, 12, **args).double()
    for block in (td, bu):
        _randomise(block, seed=7)
    top = torch.randn(1, 3, 3, 12, dtype=torch.float64)
    bottom = torch.randn(1, 6, 5, 8, dtype=torch.float64)  # odd width: padded internally
    b1 = bottom + reference_top_down(td.topdown_attn, td.norm2(top)[0], td.norm1(bottom)[0])
    expected_bottom = (0.3 * b1 + 0.7 * td.bottom_mlp(td.norm3(b1)))[0]
    torch.testing.assert_close(td(top, bottom)[0], expected_bottom, atol=TOL, rtol=0)
    t1 = top + reference_bottom_up(bu.bottomup_attn, bu.norm4(top)[0], bu.norm5(bottom)[0], True)
    expected_top = (0.3 * t1 + 0.7 * bu.top_mlp(bu.norm6(t1)))[0]
    torch.testing.assert_close(bu(top, bottom)[0], expected_top, atol=TOL, rtol=0)


def test_blocks_reject_grids_that_are_not_a_pair():
    block = TopDownBlock(8, 12, num_heads=1, mlp_ratio=2, info_weights=(0.5, 0.5),
                         drop_path=0.0, parity_mode=True)
    with pytest.raises(ValueError, match="half its size"):
        block(torch.randn(1, 3, 3, 12), torch.randn(1, 8, 6, 8))
    assert math.isclose(block.topdown_attn.scale, 8 ** -0.5)
