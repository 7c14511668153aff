"""HAT-Net backbone (docs/design/hatnet.md): the official parameter names, counts and shapes of
T/S/M/L; at sizes divisible by 224 the padded H-MHSA equals the official unpadded computation bit
for bit; at odd sizes it equals a brute-force per-window reference; outputs, options and config
errors."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

import hila_d2
from hila_d2.modeling.backbone import hatnet as hatnet_module
from hila_d2.modeling.backbone.hatnet import HATNet, HierarchicalAttention

# docs/design/hatnet.md §4: (dims, head dim, depths, depthwise kernels); expansions 8/8/4/4 for all
SPEC = {
    "T": ((48, 96, 240, 384), 48, (2, 2, 6, 3), (3, 3, 3, 3)),
    "S": ((64, 128, 320, 512), 64, (2, 3, 8, 3), (3, 3, 3, 3)),
    "M": ((64, 128, 320, 512), 64, (3, 6, 18, 3), (5, 3, 5, 3)),
    "L": ((64, 128, 320, 640), 64, (3, 8, 27, 3), (3, 3, 3, 3)),
}
EXPANSIONS = (8, 8, 4, 4)
# docs/design/hatnet.md §4: exact parameters of the official classification model (with its
# classifier)
PARAMS_WITH_CLASSIFIER = {"T": 12_655_912, "S": 25_747_784, "M": 42_942_472, "L": 63_132_488}
README_PARAMS_M = {"T": 12.7, "S": 25.7, "M": 42.9, "L": 63.1}
KEYS_WITH_CLASSIFIER = {"T": 295, "S": 364, "M": 686, "L": 939}


def official_shapes(variant: str) -> dict:
    """docs/design/hatnet.md §5.2: name -> shape of every official state-dict entry except the
    classifier."""
    dims, _, depths, kernels = SPEC[variant]
    shapes = {
        "patch_embed.0.weight": (16, 3, 3, 3), "patch_embed.0.bias": (16,),
        "patch_embed.1.weight": (16,), "patch_embed.1.bias": (16,),
        "patch_embed.3.weight": (dims[0], 16, 3, 3), "patch_embed.3.bias": (dims[0],),
    }  # fmt: skip
    for s, (c, depth, k, e) in enumerate(zip(dims, depths, kernels, EXPANSIONS)):
        for i in range(depth):
            p = f"blocks.{s}.{i}."
            norms = ["attn.norm", "attn.proj_norm", "conv.conv1.0", "conv.conv3.1"]
            convs = {"attn.qkv": (3 * c, c, 1, 1), "attn.proj": (c, c, 1, 1)}
            if s < 3:
                norms += ["attn.grid_norm", "attn.ds_norm"]
                convs.update({"attn.q": (c, c, 1, 1), "attn.kv": (2 * c, c, 1, 1)})
            for name in norms:
                shapes[f"{p}{name}.weight"] = shapes[f"{p}{name}.bias"] = (c,)
            for name, shape in convs.items():
                shapes[f"{p}{name}.weight"], shapes[f"{p}{name}.bias"] = shape, shape[:1]
            shapes[f"{p}conv.conv1.1.weight"] = (e * c, c, 1, 1)
            shapes[f"{p}conv.conv2.0.weight"] = (e * c, 1, k, k)
            shapes[f"{p}conv.conv3.0.weight"] = (c, e * c, 1, 1)
        if s:
            shapes[f"ds{s + 1}.conv.weight"] = (c, dims[s - 1], 3, 3)
            for name in ("ds{}.conv.bias", "ds{}.norm.weight", "ds{}.norm.bias"):
                shapes[name.format(s + 1)] = (c,)
    return shapes


@pytest.mark.parametrize("variant", list(SPEC))
def test_official_names_shapes_and_parameter_counts(variant):
    with torch.device("meta"):
        model = HATNet(variant=variant)
    state = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    assert state == official_shapes(variant)
    assert len(state) + 2 == KEYS_WITH_CLASSIFIER[variant]
    classifier = SPEC[variant][0][-1] * 1000 + 1000  # Linear(C4 -> 1000)
    params = sum(p.numel() for p in model.parameters()) + classifier
    assert params == PARAMS_WITH_CLASSIFIER[variant]
    assert round(params / 1e6, 1) == README_PARAMS_M[variant]
    shapes = model.output_shape()
    assert [shapes[n].channels for n in shapes] == list(SPEC[variant][0])
    assert [shapes[n].stride for n in shapes] == [4, 8, 16, 32]
    assert model.padding_constraints == {"size_divisibility": 32, "square_size": 0}
    heads = [stage[0].attn.num_heads for stage in model.blocks]
    assert heads == [c // SPEC[variant][1] for c in SPEC[variant][0]] and heads[0] == 1


# ---- the official computation (docs/design/hatnet.md §2.2-2.3), written independently of the
# model: windows by unfold, floor-mode pooling, no padding; valid only when every map is divisible
# by G and r. It calls the same attention kernel on contiguous q, k, v, as the model does, so
# results can be compared bit for bit.


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())


def _split_heads(t: torch.Tensor, parts: int, heads: int):
    """(B, parts*C, N...) -> parts x (B, heads, N, d), channel p*C + head*d + j."""
    batch = t.shape[0]
    t = t.reshape(batch, parts, heads, t.shape[1] // (parts * heads), -1)
    return [t[:, p].transpose(-1, -2) for p in range(parts)]


def official_attention(attn: HierarchicalAttention, x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    heads, grid = attn.num_heads, attn.grid_size
    t = attn.qkv(attn.norm(x))
    if grid == 1:
        q, k, v = _split_heads(t, 3, heads)
        out = sdpa(q, k, v)
        return attn.proj(out.transpose(-1, -2).reshape(batch, channels, height, width))
    assert height % grid == 0 and width % grid == 0, "the official code needs divisible maps"
    rows, cols = height // grid, width // grid
    windows = t.unfold(2, grid, grid).unfold(3, grid, grid)  # (B, 3C, rows, cols, G, G)
    windows = windows.reshape(batch, 3, heads, channels // heads, rows * cols, grid * grid)
    q, k, v = windows.permute(1, 0, 2, 4, 5, 3).flatten(1, 2).unbind(0)  # (B*h, nW, G*G, d)
    local = sdpa(q, k, v)
    local = local.reshape(batch, heads, rows, cols, grid, grid, channels // heads)
    local = local.permute(0, 1, 6, 2, 4, 3, 5).reshape(batch, channels, height, width)
    local = attn.grid_norm(x + local)
    (q,) = _split_heads(attn.q(local), 1, heads)
    merged = F.avg_pool2d(local, attn.ds_ratio, attn.ds_ratio)  # floor mode
    k, v = _split_heads(attn.kv(attn.ds_norm(merged)), 2, heads)
    out = sdpa(q, k, v).transpose(-1, -2)
    return attn.proj(out.reshape(batch, channels, height, width) + local)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with every parameter moved off its initial value (GN weights 1,
    biases 0 would hide layout mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


def run_with_official_attention(model: HATNet, x: torch.Tensor, monkeypatch) -> dict:
    """``model(x)`` with every H-MHSA replaced by ``official_attention``."""
    with monkeypatch.context() as patch:
        patch.setattr(HierarchicalAttention, "forward", official_attention)
        with torch.no_grad():
            return model(x)


@pytest.mark.parametrize(
    "variant, size",
    [("T", (224, 224)), ("T", (448, 224))]
    + [pytest.param(v, size, marks=pytest.mark.slow)  # 1.5-3.5 s each
       for v, size in (("S", (224, 448)), ("M", (224, 224)), ("L", (224, 224)))],
)  # fmt: skip
def test_padded_model_equals_the_official_computation_at_multiples_of_224(
    variant, size, monkeypatch
):
    torch.manual_seed(0)
    model = perturbed(HATNet(variant=variant))
    x = torch.randn(2, 3, *size)
    # at these sizes the padding branch must not run at all
    pads = []
    with monkeypatch.context() as patch:
        patch.setattr(hatnet_module.F, "pad", lambda *a, **k: pads.append(1) or F.pad(*a, **k))
        with torch.no_grad():
            actual = model(x)
    assert not pads
    expected = run_with_official_attention(model, x, monkeypatch)
    for name, stride in zip(actual, (4, 8, 16, 32)):
        assert actual[name].shape[-2:] == (size[0] // stride, size[1] // stride)
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)
    # the comparison is sensitive: a small change of one attention output shows
    model.blocks[2][0].attn.proj.bias.data.add_(1e-4)
    with torch.no_grad():
        changed = model(x)["res5"]
    assert (changed - expected["res5"]).abs().max() > 0


# ---- brute force at odd sizes: every window on its own, only its valid tokens


def brute_force_local(qkv: torch.Tensor, heads: int, grid: int, mask_padded_keys: bool):
    """Per window (a, b) and head: softmax(q k^T / sqrt(d)) v over the window's valid tokens;
    without masking, its padded positions take part as zero keys and values."""
    batch, three_c, height, width = qkv.shape
    channels = three_c // 3
    d = channels // heads
    out = torch.zeros(batch, channels, height, width, dtype=torch.float64)
    qkv = qkv.double()
    for a in range(math.ceil(height / grid)):
        for b in range(math.ceil(width / grid)):
            rows = slice(a * grid, min(a * grid + grid, height))
            cols = slice(b * grid, min(b * grid + grid, width))
            window = qkv[:, :, rows, cols]
            n, shape = window.shape[2] * window.shape[3], window.shape[2:]
            for h in range(heads):
                q, k, v = (window[:, p * channels + h * d : p * channels + (h + 1) * d].flatten(2)
                           for p in range(3))  # fmt: skip
                logits = q.transpose(1, 2) @ k / math.sqrt(d)  # (B, n, n)
                values = v.transpose(1, 2)
                if not mask_padded_keys and n < grid * grid:
                    logits = torch.cat([logits, logits.new_zeros(batch, n, grid * grid - n)], 2)
                    values = torch.cat([values, values.new_zeros(batch, grid * grid - n, d)], 1)
                o = logits.softmax(-1) @ values  # (B, n, d)
                out[:, h * d : (h + 1) * d, rows, cols] = o.transpose(1, 2).reshape(batch, d, *shape)
    return out


def brute_force_pool(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """Mean of the valid pixels of every r x r window (the last ones partial)."""
    height, width = x.shape[-2:]
    rows, cols = math.ceil(height / ratio), math.ceil(width / ratio)
    out = torch.zeros(*x.shape[:2], rows, cols, dtype=torch.float64)
    for i in range(rows):
        for j in range(cols):
            window = x[:, :, i * ratio : (i + 1) * ratio, j * ratio : (j + 1) * ratio]
            out[:, :, i, j] = window.double().mean((2, 3))
    return out


def brute_force_attention(attn: HierarchicalAttention, x: torch.Tensor) -> torch.Tensor:
    """docs/design/hatnet.md §2.2 with §2.6's padding rules, window by window, in float64."""
    attn, x = copy.deepcopy(attn).double(), x.double()
    heads, channels = attn.num_heads, x.shape[1]
    d = channels // heads
    local = brute_force_local(attn.qkv(attn.norm(x)), heads, attn.grid_size, attn.mask_padded_keys)
    local = attn.grid_norm(x + local)
    q = attn.q(local).flatten(2)  # (B, C, N)
    kv = attn.kv(attn.ds_norm(brute_force_pool(local, attn.ds_ratio))).flatten(2)  # (B, 2C, M)
    out = torch.zeros_like(q)
    for h in range(heads):
        heads_slice, values = slice(h * d, (h + 1) * d), slice(channels + h * d, channels + (h + 1) * d)
        weights = (q[:, heads_slice].transpose(1, 2) @ kv[:, heads_slice] / math.sqrt(d)).softmax(-1)
        out[:, heads_slice] = (weights @ kv[:, values].transpose(1, 2)).transpose(1, 2)  # (B, d, N)
    return attn.proj(out.reshape(local.shape) + local)


@pytest.mark.parametrize("mask_padded_keys", [True, False])
@pytest.mark.parametrize("grid, ratio, size", [(7, 4, (30, 23)), (8, 8, (13, 29)), (7, 2, (5, 9))])
def test_odd_sizes_equal_the_brute_force_reference(grid, ratio, size, mask_padded_keys):
    torch.manual_seed(0)
    attn = HierarchicalAttention(64, 32, grid, ratio, mask_padded_keys=mask_padded_keys)
    attn = perturbed(attn)
    x = torch.randn(2, 64, *size)
    qkv = attn.qkv(attn.norm(x))
    with torch.no_grad():
        local = attn.local_attention(qkv)
        expected_local = brute_force_local(qkv, 2, grid, mask_padded_keys)
        torch.testing.assert_close(local.double(), expected_local, rtol=1e-5, atol=1e-5)
        pooled = attn.merged_tokens(x)
        assert pooled.shape[-2:] == (math.ceil(size[0] / ratio), math.ceil(size[1] / ratio))
        torch.testing.assert_close(pooled.double(), brute_force_pool(x, ratio), rtol=1e-6, atol=1e-6)
        out = attn(x)
        torch.testing.assert_close(out.double(), brute_force_attention(attn, x), rtol=1e-5, atol=1e-5)
        # the choice matters: masked and unmasked padding give different outputs
        attn.mask_padded_keys = not mask_padded_keys
        assert (attn(x) - out).abs().max() > 1e-4


def test_any_input_size_gives_ceil_strides_and_finite_values():
    model = HATNet(variant="T", drop_path_rate=0.0).eval()
    x = torch.randn(1, 3, 333, 500)
    with torch.no_grad():
        outputs = model(x)
    for (name, out), stride, channels in zip(outputs.items(), (4, 8, 16, 32), SPEC["T"][0]):
        assert out.shape == (1, channels, math.ceil(333 / stride), math.ceil(500 / stride))
        assert torch.isfinite(out).all()
    # floor-mode pooling (the official rule) cannot pool a map smaller than its ratio
    floor = HATNet(variant="T", pool_ceil_mode=False).eval()
    with pytest.raises(ValueError, match="MODEL.HATNET.POOL_CEIL_MODE"):
        floor(torch.randn(1, 3, 16, 16))  # stage 1 is 4 x 4, smaller than r = 8
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 64, 64))


def test_every_trainable_parameter_gets_a_gradient_and_proj_norm_is_frozen():
    model = HATNet(variant="T", drop_path_rate=0.0)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(".attn.proj_norm." in n for n in frozen)
    assert len(frozen) == 2 * 13  # weight and bias of every block
    outputs = model(torch.randn(2, 3, 96, 80))
    sum(out.square().mean() for out in outputs.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing


def test_frozen_stages_have_no_gradients_and_stay_in_eval_mode():
    model = HATNet(variant="T", frozen_stages=2, drop_path_rate=0.2).train()
    trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
                 for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip
    assert trainable == {"blocks.2", "blocks.3", "ds3", "ds4"}
    assert not model.patch_embed.training and not model.blocks[1].training and not model.ds2.training
    assert model.blocks[2].training and model.ds3.training
    # frozen stages are deterministic in training mode (no drop path), later ones are not
    x = torch.randn(1, 3, 64, 64)
    first, second = model(x), model(x)
    torch.testing.assert_close(first["res3"], second["res3"], rtol=0, atol=0)
    assert (first["res5"] - second["res5"]).abs().max() > 0


def test_attention_fp32_computes_in_float32_under_low_precision():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 16).bfloat16() for _ in range(3))
    fp32 = HierarchicalAttention(48, 16, 7, 2, attention_fp32=True)
    low = HierarchicalAttention(48, 16, 7, 2, attention_fp32=False)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out = fp32._attend(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.bfloat16(), rtol=0, atol=0)
    assert low._attend(q, k, v).dtype == torch.bfloat16


def cfg_with(*opts: str):
    cfg = get_cfg()
    hila_d2.add_hila_config(cfg)
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_hatnet_backbone", *opts])
    return cfg


def test_config_builds_the_variant_and_overrides():
    backbone = build_backbone(cfg_with("MODEL.HATNET.VARIANT", "S", "MODEL.HATNET.OUT_FEATURES",
                                       "['res3', 'res5']", "MODEL.HATNET.DEPTHS", "[1, 1, 2, 1]"))  # fmt: skip
    assert isinstance(backbone, HATNet) and backbone.variant == "S"
    assert [len(stage) for stage in backbone.blocks] == [1, 1, 2, 1]
    assert list(backbone.output_shape()) == ["res3", "res5"]
    with torch.no_grad():
        outputs = backbone.eval()(torch.randn(1, 3, 64, 96))
    assert list(outputs) == ["res3", "res5"] and outputs["res5"].shape == (1, 512, 2, 3)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.HATNET.VARIANT", "XL"], r"MODEL\.HATNET\.VARIANT"),
        (["MODEL.HATNET.DEPTHS", "[2, 2, 6]"], r"MODEL\.HATNET\.DEPTHS"),
        (["MODEL.HATNET.HEAD_DIM", "40"], r"MODEL\.HATNET\.DIMS.*MODEL\.HATNET\.HEAD_DIM 40"),
        (["MODEL.HATNET.OUT_FEATURES", "['res6']"], r"MODEL\.HATNET\.OUT_FEATURES"),
        (["MODEL.HATNET.FROZEN_STAGES", "5"], r"MODEL\.HATNET\.FROZEN_STAGES"),
        (["MODEL.HILA.STAGES", "[3]", "MODEL.HILA.BOTTOM_MLP_RATIO", "2.0"],
         r"MODEL\.HILA\.BOTTOM_MLP_RATIO.*MODEL\.HATNET\.EXPANSIONS"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg_with(*opts), ShapeSpec(channels=3))
