"""Official Swin ImageNet checkpoints -> hila_d2 Swin backbone: names, dropped and missing keys,
variant and window inference, bicubic table resizing, format detection, errors and the CLI."""

import re

import pytest
import torch
import torch.nn.functional as F
from project_config import load_script
from timm.models.swin_transformer import SwinTransformer

from benchmarks.references import timm_swin
from hila_d2.checkpoint.convert import (
    SUPPORTED_FORMATS,
    convert_checkpoint,
    convert_swin,
    detect_format,
    infer_swin_variant,
)
from hila_d2.modeling.backbone.swin import SWIN_VARIANTS, SwinTransformerBackbone

NORMS = sorted(f"backbone.norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
# hand-written official -> hila_d2 pairs
SPOT_CHECKS = {
    "patch_embed.proj.weight": "backbone.patch_embed.proj.weight",
    "patch_embed.norm.bias": "backbone.patch_embed.norm.bias",
    "layers.0.downsample.reduction.weight": "backbone.layers.1.downsample.reduction.weight",
    "layers.2.downsample.norm.bias": "backbone.layers.3.downsample.norm.bias",
    "layers.2.blocks.5.mlp.fc2.weight": "backbone.layers.2.blocks.5.mlp.fc2.weight",
    "layers.3.blocks.1.attn.relative_position_bias_table": (
        "backbone.layers.3.blocks.1.attn.relative_position_bias_table"
    ),
}


@pytest.fixture(scope="module")
def reference():
    """timm's Swin-T (windows never clamped, any input size) with random weights, eval mode."""
    model = timm_swin("T", num_classes=0, drop_path_rate=0.0).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def official_state_dict(model: SwinTransformer) -> dict:
    """``model``'s weights in Microsoft's layout: downsampling at the end of stages 0..2, the
    buffers relative_position_index (every block) and attn_mask (shifted blocks), the final norm
    and a 1000-class head."""
    state = {}
    for name, value in model.state_dict().items():
        key = re.sub(
            r"^layers\.(\d)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", name
        )
        state[key] = value.clone()
    for s, stage in enumerate(model.layers):
        for b, block in enumerate(stage.blocks):
            state[f"layers.{s}.blocks.{b}.attn.relative_position_index"] = torch.zeros(
                49, 49
            ).long()
            if b % 2:
                state[f"layers.{s}.blocks.{b}.attn_mask"] = torch.zeros(64 // 4**s, 49, 49)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 768), torch.randn(1000)
    return state


def load_converted(model: dict, window_size: int = 7) -> SwinTransformerBackbone:
    """A fresh backbone holding the converted tensors; only norm0..3 keep their initialisation."""
    backbone = SwinTransformerBackbone(variant="T", window_size=window_size, drop_path_rate=0.0)
    wrapper = torch.nn.Module()
    wrapper.backbone = backbone
    incompatible = wrapper.load_state_dict(model, strict=False)
    assert incompatible.unexpected_keys == []
    assert sorted(incompatible.missing_keys) == NORMS
    return backbone.eval()


def test_convert_official_imagenet_file(reference):
    state = official_state_dict(reference)
    checkpoint = {"model": state}
    assert detect_format(checkpoint).name == detect_format(state).name == "swin_imagenet"
    assert "swin_imagenet" in SUPPORTED_FORMATS

    result = convert_checkpoint(checkpoint)
    assert (result.source_format, result.variant) == ("swin_imagenet", "T")
    buffers = [k for k in state if k.endswith(("relative_position_index", "attn_mask"))]
    assert len(buffers) == 12 + 6
    assert result.dropped == sorted(
        buffers + ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    )
    assert result.missing == NORMS
    for key, name in SPOT_CHECKS.items():
        assert torch.equal(result.model[name], state[key]), (key, name)
    assert len(result.model) == len(state) - len(result.dropped)

    backbone = load_converted(result.model)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        stages = reference.forward_intermediates(images, intermediates_only=True)
        outputs = backbone(images)
    for i, (name, stage) in enumerate(zip(("res2", "res3", "res4", "res5"), stages)):
        expected = getattr(backbone, f"norm{i}")(stage.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert (outputs[name] - expected).abs().max() <= 1e-4, name


def test_window_change_resizes_tables_bicubically(reference):
    state = official_state_dict(reference)
    result = convert_swin({"model": state}, window_size=12)
    for key in state:
        if not key.endswith("relative_position_bias_table"):
            continue
        name = "backbone." + key
        table = state[key]  # (13 * 13, heads)
        heads = table.shape[1]
        images = table.T.reshape(1, heads, 13, 13)
        expected = F.interpolate(images, size=(23, 23), mode="bicubic", align_corners=False)
        assert result.model[name].shape == (23 * 23, heads)
        torch.testing.assert_close(result.model[name], expected.reshape(heads, 23 * 23).T)
    assert torch.equal(
        result.model["backbone.layers.1.blocks.0.mlp.fc1.weight"],
        state["layers.1.blocks.0.mlp.fc1.weight"],
    )
    backbone = load_converted(result.model, window_size=12)
    assert backbone.layers[3].blocks[1].window_size == (12, 12)
    assert convert_checkpoint({"model": state}, window_size=12).model.keys() == result.model.keys()


@pytest.mark.parametrize("variant", sorted(SWIN_VARIANTS))
def test_variant_is_inferred_from_embed_dim_depths_and_heads(variant):
    spec = SWIN_VARIANTS[variant]
    model = {"backbone.patch_embed.proj.weight": torch.zeros(spec["embed_dim"], 3, 4, 4)}
    for s, (depth, heads) in enumerate(zip(spec["depths"], spec["num_heads"])):
        for b in range(depth):
            model[f"backbone.layers.{s}.blocks.{b}.attn.relative_position_bias_table"] = (
                torch.zeros(169, heads)
            )
    assert infer_swin_variant(model) == variant
    model["backbone.patch_embed.proj.weight"] = torch.zeros(64, 3, 4, 4)
    with pytest.raises(ValueError, match=r"No Swin variant has embed dim 64"):
        infer_swin_variant(model)


def test_format_detection():
    timm_layout = {  # timm's own names: no downsampling in stage 0
        "layers.0.blocks.0.attn.relative_position_bias_table": torch.zeros(169, 3),
        "layers.1.downsample.reduction.weight": torch.zeros(192, 384),
    }
    with pytest.raises(ValueError, match="Unknown checkpoint layout.*swin_imagenet"):
        detect_format({"model": timm_layout})
    mit = {"patch_embed1.proj.weight": torch.zeros(1), "block1.0.attn.kv.weight": torch.zeros(1)}
    assert detect_format(mit).name == "segformer_imagenet"
    with pytest.raises(ValueError, match="window_size applies to Swin checkpoints only"):
        convert_checkpoint(mit, window_size=12)
    with pytest.raises(ValueError, match="convert_swin takes swin_imagenet checkpoints"):
        convert_swin(mit)


def test_unplaceable_or_malformed_keys_raise(reference):
    state = official_state_dict(reference)
    with pytest.raises(
        ValueError,
        match=r"'layers\.0\.blocks\.0\.attn\.extra\.weight' -> "
        r"'backbone\.layers\.0\.blocks\.0\.attn\.extra\.weight'",
    ):
        convert_checkpoint(
            {"model": {**state, "layers.0.blocks.0.attn.extra.weight": torch.zeros(1)}}
        )
    with pytest.raises(ValueError, match=r"'layers\.3\.downsample\.norm\.weight' -> "):
        convert_checkpoint({"model": {**state, "layers.3.downsample.norm.weight": torch.zeros(1)}})
    with pytest.raises(
        ValueError, match=r"'layers\.1\.blocks\.0\.mlp\.fc1\.weight' -> .* of shape \(3, 3\)"
    ):
        convert_checkpoint(
            {"model": {**state, "layers.1.blocks.0.mlp.fc1.weight": torch.zeros(3, 3)}}
        )
    shallow = {k: v for k, v in state.items() if not k.startswith("layers.3.blocks.1.")}
    with pytest.raises(
        ValueError, match=r"No Swin variant has embed dim 96, depths \(2, 2, 6, 1\)"
    ):
        convert_checkpoint({"model": shallow})
    odd_table = {
        **state,
        "layers.0.blocks.0.attn.relative_position_bias_table": torch.zeros(170, 3),
    }
    with pytest.raises(
        ValueError, match=r"rows must be \(2w-1\)\^2 for one window w, got \[169, 170\]"
    ):
        convert_checkpoint({"model": odd_table})
    with pytest.raises(ValueError, match=r"not tensors: 'patch_embed\.proj\.weight'"):
        convert_checkpoint({"model": {**state, "patch_embed.proj.weight": [0.0]}})


def test_cli_window_size(tmp_path, reference, capsys):
    cli = load_script("tools/convert_pretrained.py")
    src, dst = tmp_path / "swin_tiny_patch4_window7_224.pth", tmp_path / "swin_t.pth"
    torch.save({"model": official_state_dict(reference)}, src)
    cli.main([str(src), str(dst), "--window-size", "12"])
    stdout = capsys.readouterr().out
    assert "source format: swin_imagenet\nvariant: T\n" in stdout
    assert "missing model keys (8):\n  backbone.norm0.bias\n" in stdout
    model = torch.load(dst, weights_only=True)["model"]
    assert model["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (529, 3)
    load_converted(model, window_size=12)
