"""MiT B0-B5 as a detectron2 backbone: outputs, strides, sizes, parameter counts, config errors."""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from hila_d2.modeling.backbone.mit import MIT_VARIANTS, MixVisionTransformer

from project_config import default_config

# Encoder parameter counts of SegFormer's MiT (millions), without the ImageNet classifier.
SEGFORMER_ENCODER_PARAMS_M = {
    "B0": 3.32, "B1": 13.15, "B2": 24.20, "B3": 44.07, "B4": 60.84, "B5": 81.44,
}


def mit_cfg(variant="B0", **overrides):
    keys = {"MODEL.BACKBONE.NAME": "build_mit_backbone", "MODEL.MIT.VARIANT": variant}
    return default_config(**{**keys, **overrides})


@pytest.mark.parametrize("variant", sorted(SEGFORMER_ENCODER_PARAMS_M))
def test_parameter_count_equals_segformer(variant):
    with torch.device("meta"):
        model = MixVisionTransformer(variant=variant)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(SEGFORMER_ENCODER_PARAMS_M[variant], rel=5e-3)


@pytest.mark.parametrize("variant", ["B0", "B1", "B2", "B3", "B4", "B5"])
def test_output_shapes_at_several_sizes(variant):
    torch.manual_seed(0)
    backbone = build_backbone(mit_cfg(variant))
    backbone.eval()
    shapes = backbone.output_shape()
    dims = MIT_VARIANTS[variant]["embed_dims"]
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert [s.channels for s in shapes.values()] == list(dims)
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    sizes = [(64, 64), (75, 110)] if variant in ("B0", "B1") else [(75, 110)]
    with torch.no_grad():
        for height, width in sizes:
            outputs = backbone(torch.randn(2, 3, height, width))
            for name, spec in shapes.items():
                expected = (2, spec.channels, math.ceil(height / spec.stride), math.ceil(width / spec.stride))
                assert tuple(outputs[name].shape) == expected, (name, height, width)
                assert torch.isfinite(outputs[name]).all()


def test_size_divisibility_and_subset_of_outputs():
    backbone = build_backbone(mit_cfg(**{"MODEL.MIT.OUT_FEATURES": ["res3", "res5"]}))
    assert backbone.size_divisibility == 32
    assert list(backbone.output_shape()) == ["res3", "res5"]
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 96))
    assert sorted(outputs) == ["res3", "res5"]
    assert outputs["res5"].shape == (1, 256, 2, 3)


def test_outputs_are_stage_norm_outputs_and_batch_independent():
    """Each image's features do not depend on the other images of the batch (eval mode), and each
    output is layer-normed over channels (the stage norm's affine is identity at init)."""
    torch.manual_seed(0)
    backbone = build_backbone(mit_cfg()).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batched = backbone(images)
        single = backbone(images[1:2])
    for name in batched:
        torch.testing.assert_close(batched[name][1:2], single[name], atol=1e-5, rtol=1e-5)
        per_token_mean = batched[name].mean(dim=1)
        assert per_token_mean.abs().max() < 1e-4


def test_drop_path_is_linear_over_blocks():
    backbone = MixVisionTransformer(variant="B2", drop_path_rate=0.3)
    rates = [
        block.drop_path1.drop_prob if hasattr(block.drop_path1, "drop_prob") else 0.0
        for stage in backbone.stages
        for block in stage.blocks
    ]
    total = sum(MIT_VARIANTS["B2"]["depths"])
    assert rates == pytest.approx([0.3 * i / (total - 1) for i in range(total)], abs=1e-6)


def test_layer_norm_epsilons_match_mit():
    backbone = MixVisionTransformer(variant="B0")
    assert backbone.patch_embed.norm.eps == 1e-5
    assert backbone.stages[1].downsample.norm.eps == 1e-5
    block = backbone.stages[0].blocks[0]
    assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-6
    assert block.attn.norm.eps == 1e-5
    assert backbone.stages[3].norm.eps == 1e-6


def test_unknown_variant_names_the_key():
    with pytest.raises(ValueError, match=r"MODEL\.MIT\.VARIANT.*B0"):
        build_backbone(mit_cfg("B9"))


def test_unknown_out_feature_names_the_key():
    with pytest.raises(ValueError, match=r"MODEL\.MIT\.OUT_FEATURES"):
        build_backbone(mit_cfg(**{"MODEL.MIT.OUT_FEATURES": ["res6"]}))


def test_wrong_channel_count_is_a_clear_error():
    backbone = build_backbone(mit_cfg())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        backbone(torch.randn(1, 4, 64, 64))


def test_input_channels_follow_input_shape():
    cfg = mit_cfg()
    backbone = build_backbone(cfg, ShapeSpec(channels=1))
    with torch.no_grad():
        assert backbone(torch.randn(1, 1, 32, 32))["res2"].shape == (1, 32, 8, 8)
