"""Swin T/S/B/L as a detectron2 backbone: equality with timm, the official window order at sizes
that are no multiple of the window, shapes, parameter counts, gradients and config errors."""

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from timm.models.swin_transformer import SwinTransformerBlock

from benchmarks.references import TimmSwinStages, timm_swin
from hila_d2.modeling.backbone.swin import (
    SWIN_VARIANTS,
    SwinBlock,
    SwinTransformerBackbone,
)
from hila_d2.solver import build_param_groups

from project_config import default_config

NAMES = ("res2", "res3", "res4", "res5")
# Swin-T: timm's swin_tiny (28,288,354) - classifier (769,000) - final norm (1,536) + norm0..3
SWIN_T_PARAMS = 27_520_698


def swin_cfg(variant="T", **overrides):
    keys = {"MODEL.BACKBONE.NAME": "build_swin_backbone", "MODEL.HILA_D2_SWIN.VARIANT": variant}
    return default_config(**{**keys, **overrides})


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Add noise to every parameter, so that biases and norms are not at their trivial init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- equality with timm


@pytest.fixture(scope="module")
def t_pair():
    """(timm Swin-T, our Swin-T with timm's weights and random norm0..3), both in eval mode."""
    reference = timm_swin("T", num_classes=0, drop_path_rate=0.0).eval()
    randomize_(reference)
    backbone = SwinTransformerBackbone(variant="T", drop_path_rate=0.0).eval()
    randomize_(backbone, seed=1)
    incompatible = backbone.load_state_dict(reference.state_dict(), strict=False)
    assert incompatible.unexpected_keys == ["norm.weight", "norm.bias"]  # timm's final norm
    assert sorted(incompatible.missing_keys) == [
        f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight")
    ]
    return reference, backbone


@pytest.mark.parametrize("size", [(224, 224), (448, 224)])
def test_equals_timm_when_every_grid_is_a_multiple_of_the_window(t_pair, size):
    reference, backbone = t_pair
    images = torch.randn(1, 3, *size)
    with_norms = TimmSwinStages(reference, [getattr(backbone, f"norm{i}") for i in range(4)])
    with torch.no_grad():
        stages = with_norms(images)  # NCHW, after copies of our norm0..3
        outputs = backbone(images)
    for name, expected in zip(NAMES, stages):
        assert outputs[name].shape == expected.shape
        assert (outputs[name] - expected).abs().max() <= 1e-4, name


@pytest.mark.parametrize("variant", ["S", "B", "L"])
def test_parameter_count_equals_timm_without_classifier_plus_stage_norms(variant):
    with torch.device("meta"):
        reference = timm_swin(variant, num_classes=1000)
        backbone = SwinTransformerBackbone(variant=variant)
    dims = [SWIN_VARIANTS[variant]["embed_dim"] * 2**i for i in range(4)]
    expected = count(reference) - count(reference.head) - count(reference.norm) + 2 * sum(dims)
    assert count(backbone) == expected


def test_swin_t_parameter_count():
    with torch.device("meta"):
        backbone = SwinTransformerBackbone(variant="T")
    assert count(backbone) == SWIN_T_PARAMS
    assert round(count(backbone) / 1e6, 3) == 27.521
    assert not hasattr(backbone, "norm") and not hasattr(backbone, "head")


# ---------------------------------------------------------------- the official window order


def official_block(block: SwinBlock, x: torch.Tensor, shift: int) -> torch.Tensor:
    """The official Swin segmentation block on (B, H, W, C), one window and one head at a time:
    norm1, zero-pad bottom/right to a multiple of the window, roll by -shift, attention with the
    relative position bias and (shift > 0) the -100 mask between the official slice regions of
    the padded grid, roll back, crop, residual, then norm2 + MLP + residual."""
    B, H, W, C = x.shape
    w = block.window_size[0]
    heads = block.attn.num_heads
    Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w
    padded = torch.zeros(B, Hp, Wp, C)
    padded[:, :H, :W] = block.norm1(x)
    label = torch.zeros(Hp, Wp)
    if shift:
        padded = torch.roll(padded, (-shift, -shift), (1, 2))
        region = 0
        for rows in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            for cols in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
                label[rows, cols] = region
                region += 1
    table = block.attn.relative_position_bias_table  # ((2w-1)^2, heads)
    positions = [(r, c) for r in range(w) for c in range(w)]
    bias = torch.empty(heads, w * w, w * w)
    for a, (ra, ca) in enumerate(positions):
        for b, (rb, cb) in enumerate(positions):
            bias[:, a, b] = table[(ra - rb + w - 1) * (2 * w - 1) + (ca - cb + w - 1)]
    attended = torch.zeros_like(padded)
    for top in range(0, Hp, w):
        for left in range(0, Wp, w):
            tokens = padded[:, top : top + w, left : left + w].reshape(B, w * w, C)
            labels = label[top : top + w, left : left + w].reshape(w * w)
            mask = torch.where(labels[:, None] == labels[None, :], 0.0, -100.0)
            q, k, v = block.attn.qkv(tokens).chunk(3, dim=-1)
            per_head = []
            for h in range(heads):
                sl = slice(h * C // heads, (h + 1) * C // heads)
                logits = q[..., sl] @ k[..., sl].transpose(1, 2) * (C // heads) ** -0.5
                per_head.append((logits + bias[h] + mask).softmax(-1) @ v[..., sl])
            out = block.attn.proj(torch.cat(per_head, dim=-1))
            attended[:, top : top + w, left : left + w] = out.reshape(B, w, w, C)
    if shift:
        attended = torch.roll(attended, (shift, shift), (1, 2))
    x = x + attended[:, :H, :W]
    return x + block.mlp(block.norm2(x))


def make_block(shift_size: int, seed: int = 0) -> SwinBlock:
    torch.manual_seed(seed)
    block = SwinBlock(
        dim=32,
        input_resolution=(10, 12),
        num_heads=2,
        window_size=7,
        shift_size=shift_size,
        always_partition=True,
        dynamic_mask=True,
    ).eval()
    randomize_(block, seed)
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    return block


@pytest.mark.parametrize("shift", [0, 3])
def test_block_follows_the_official_order_at_a_grid_off_the_window(shift):
    block = make_block(shift)
    x = torch.randn(2, 10, 12, 32)
    with torch.no_grad():
        expected = official_block(block, x, shift)
        assert (block(x) - expected).abs().max() <= 1e-5
        assert (block(x, shift_size=shift) - expected).abs().max() <= 1e-5
        if shift:  # timm's own order (roll, then pad) differs off the window grid
            timm_block = SwinTransformerBlock(
                dim=32,
                input_resolution=(10, 12),
                num_heads=2,
                window_size=7,
                shift_size=shift,
                always_partition=True,
                dynamic_mask=True,
            ).eval()
            timm_block.load_state_dict(block.state_dict())
            assert (timm_block(x) - expected).abs().max() > 1e-2


def test_explicit_shift_overrides_the_blocks_own():
    shifted, plain = make_block(3), make_block(0)
    plain.load_state_dict(shifted.state_dict())
    x = torch.randn(1, 10, 12, 32)
    with torch.no_grad():
        assert (shifted(x, shift_size=0) - shifted(x)).abs().max() > 1e-2
        torch.testing.assert_close(shifted(x, shift_size=0), plain(x), rtol=0, atol=0)
        torch.testing.assert_close(plain(x, shift_size=3), shifted(x), rtol=0, atol=0)
        torch.testing.assert_close(
            plain(x, shift_size=2), official_block(plain, x, 2), rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ValueError, match="shift_size"):
        plain(x, shift_size=7)


# ---------------------------------------------------------------- shapes, config, training


@pytest.fixture(scope="module")
def t_backbone():
    torch.manual_seed(0)
    return build_backbone(swin_cfg()).eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (500, 333)])
def test_output_shapes_at_any_size(t_backbone, size):
    shapes = t_backbone.output_shape()
    assert list(shapes) == list(NAMES)
    assert [s.channels for s in shapes.values()] == [96, 192, 384, 768]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    height, width = size
    with torch.no_grad():
        outputs = t_backbone(torch.randn(1, 3, height, width))
    assert list(outputs) == list(NAMES)
    for name, spec in shapes.items():
        expected = (
            1,
            spec.channels,
            math.ceil(height / spec.stride),
            math.ceil(width / spec.stride),
        )
        assert tuple(outputs[name].shape) == expected, (name, size)
        assert torch.isfinite(outputs[name]).all()


def test_built_through_the_registry_from_the_config():
    cfg = swin_cfg("T", **{"MODEL.HILA_D2_SWIN.WINDOW_SIZE": 12, "MODEL.HILA_D2_SWIN.DROP_PATH_RATE": 0.2})
    backbone = build_backbone(cfg, ShapeSpec(channels=1))
    assert isinstance(backbone, SwinTransformerBackbone) and backbone.variant == "T"
    assert backbone.patch_embed.proj.in_channels == 1
    assert backbone.size_divisibility == 32
    for stage in backbone.layers:  # never clamped to the construction size, unlike timm's default
        for j, block in enumerate(stage.blocks):
            assert type(block) is SwinBlock
            assert block.window_size == (12, 12)
            assert block.shift_size == ((6, 6) if j % 2 else (0, 0))
    rates = [
        getattr(block.drop_path1, "drop_prob", 0.0)
        for stage in backbone.layers
        for block in stage.blocks
    ]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 12).tolist(), abs=1e-7)
    norms = [backbone.patch_embed.norm, backbone.layers[1].downsample.norm, backbone.norm3]
    norms += [m for block in backbone.layers[2].blocks for m in (block.norm1, block.norm2)]
    assert all(norm.eps == 1e-5 for norm in norms)
    with torch.no_grad():
        assert backbone(torch.randn(1, 1, 32, 32))["res2"].shape == (1, 96, 8, 8)


def test_subset_of_outputs_has_only_their_norms():
    backbone = build_backbone(swin_cfg(**{"MODEL.HILA_D2_SWIN.OUT_FEATURES": ["res3", "res5"]}))
    assert list(backbone.output_shape()) == ["res3", "res5"]
    assert [hasattr(backbone, f"norm{i}") for i in range(4)] == [False, True, False, True]
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 96))
    assert list(outputs) == ["res3", "res5"]
    assert outputs["res5"].shape == (1, 768, 2, 3)


def test_every_parameter_gets_a_gradient():
    backbone = SwinTransformerBackbone(variant="T", drop_path_rate=0.0).train()
    outputs = backbone(torch.randn(2, 3, 64, 64))
    sum(output.square().mean() for output in outputs.values()).backward()
    no_grad = [
        n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert no_grad == []


def test_position_tables_are_exempt_from_weight_decay():
    cfg = swin_cfg()
    model = torch.nn.Module()
    model.backbone = build_backbone(cfg)
    decay = {}
    for group in build_param_groups(cfg, model):
        for p in group["params"]:
            decay[id(p)] = group["weight_decay"]
    attn = model.backbone.layers[2].blocks[1].attn
    assert decay[id(attn.relative_position_bias_table)] == 0.0
    assert decay[id(attn.qkv.weight)] == cfg.SOLVER.WEIGHT_DECAY > 0


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.HILA_D2_SWIN.VARIANT", "XL", r"MODEL\.HILA_D2_SWIN\.VARIANT.*\['B', 'L', 'S', 'T'\]"),
        ("MODEL.HILA_D2_SWIN.OUT_FEATURES", ["res6"], r"MODEL\.HILA_D2_SWIN\.OUT_FEATURES"),
        ("MODEL.HILA_D2_SWIN.OUT_FEATURES", [], r"MODEL\.HILA_D2_SWIN\.OUT_FEATURES"),
        ("MODEL.HILA_D2_SWIN.WINDOW_SIZE", 0, r"MODEL\.HILA_D2_SWIN\.WINDOW_SIZE"),
    ],
)
def test_config_errors_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(swin_cfg(**{key: value}))


def test_wrong_input_is_a_clear_error(t_backbone):
    for bad in (torch.randn(1, 4, 64, 64), torch.randn(3, 64, 64)):
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            t_backbone(bad)
