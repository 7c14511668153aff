"""Official HILA checkpoints (docs/design/hila.md §7) -> hila_d2 models, on random weights in the
official layouts (no downloads): trained MiT-HILA SegFormers, a HILA ImageNet file, a trained
Swin-HILA UperNet with ratio-4 lower-level blocks; the config they need, format detection,
errors, the CLI."""

import re

import pytest
import torch
from detectron2.modeling import build_model
from project_config import load_config, load_script
from test_convert import official_name as segformer_official_name
from torch import nn

from hila_d2.checkpoint.convert import (
    SUPPORTED_FORMATS,
    convert_checkpoint,
    detect_format,
    infer_mit_variant,
    segformer_shapes,
)
from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.backbone.swin import SwinTransformerBackbone
from hila_d2.modeling.heads.segformer_head import SegFormerHead
from hila_d2.modeling.heads.upernet_head import UPerNetHead
from hila_d2.modeling.hila import HILASettings

NUM_CLASSES = 7
FLAG = "reuse_bottomsa_pretraining_flag"
MIT_HILA_RATIOS = {"MODEL.HILA.MLP_RATIO": 4.0, "MODEL.HILA.BOTTOM_MLP_RATIO": 4.0}
SWIN_CONFIG = "configs/ade20k/semantic-segmentation/swin/hila_upernet_swin_t_s234_160k.yaml"
_HILA_NAME = re.compile(
    r"backbone\.hila\.(\d)(\d)\.(top_down|bottom_up|bottom_block|bottom_norm)\."
)
# official MiT-HILA module of each HILAPair attribute ({} = the pair tag)
_MIT_MODULES = {
    "top_down": "topdown.{}.0",
    "bottom_up": "bottomup.{}.0",
    "bottom_block": "prevblock.{}.0",
    "bottom_norm": "prevnorm.{}",
}


class Segmentor(nn.Module):
    """A backbone and an optional decode head under detectron2's names, in eval mode."""

    def __init__(self, backbone: nn.Module, head: nn.Module = None):
        super().__init__()
        self.backbone = backbone
        if head is not None:
            self.sem_seg_head = head
        self.eval()

    def forward(self, images: torch.Tensor) -> list:
        """The backbone's features and, with a head, its logits."""
        features = self.backbone(images)
        logits = [self.sem_seg_head(features)[0]] if hasattr(self, "sem_seg_head") else []
        return list(features.values()) + logits


def mit_segformer(variant, stages, depths=None, embed_dim=256, head=True) -> Segmentor:
    backbone = MixVisionTransformer(
        variant=variant, depths=depths, drop_path_rate=0.0, hila=HILASettings(stages=stages)
    )
    shapes = backbone.output_shape()
    return Segmentor(
        backbone,
        SegFormerHead(shapes, num_classes=NUM_CLASSES, embed_dim=embed_dim) if head else None,
    )


def swin_upernet() -> Segmentor:
    """Swin-T + HILA S234 as trained without HILA pretraining: HILA Mix-FFN ratio 2, lower-level
    blocks of ratio 4; UperNet of 64 channels with an auxiliary head of 32 on res4."""
    hila = HILASettings(stages=(2, 3, 4), strides=(1, 1, 2, 1), mlp_ratio=2.0, bottom_mlp_ratio=4.0)
    backbone = SwinTransformerBackbone(variant="T", drop_path_rate=0.0, hila=hila)
    shapes = backbone.output_shape()
    head = UPerNetHead(
        shapes,
        num_classes=NUM_CLASSES,
        channels=64,
        aux_input_shape={"res4": shapes["res4"]},
        aux_channels=32,
    )
    return Segmentor(backbone, head)


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with every state-dict entry random (positive BatchNorm variances)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                value.fill_(int(torch.randint(1, 1000, (), generator=generator)))
            elif name.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
            else:
                value.copy_(0.2 * torch.randn(value.shape, generator=generator))
    return model


def official_upernet_name(name: str) -> str:
    """hila_d2 UPerNetHead name -> mmseg UPerHead / auxiliary FCNHead name: a detectron2 Conv2d
    and its ``.norm`` are an mmcv ConvModule's ``.conv`` and ``.bn``."""
    module, param = name[len("sem_seg_head.") :].rsplit(".", 1)
    if module in ("predictor", "aux_head.2"):
        head = "decode_head" if module == "predictor" else "auxiliary_head"
        return f"{head}.conv_seg.{param}"
    head = "auxiliary_head" if module.startswith("aux_head.") else "decode_head"
    layer = "bn" if module.endswith(".norm") else "conv"
    module = re.sub(r"^ppm\.(\d)\.1$", r"psp_modules.\1.1", module.removesuffix(".norm"))
    return f"{head}.{'convs.0' if module == 'aux_head.0' else module}.{layer}.{param}"


def official_name(name: str, layout: str) -> str:
    """hila_d2 name -> official name in ``layout``: "mit_imagenet", "mit_trained" or "swin"."""
    match = _HILA_NAME.match(name)
    rest = name[match.end() :].replace("dwconv.", "dwconv.dwconv.") if match else ""
    if layout == "swin":
        if match:
            module = "bottom_sa.0" if match[3] == "bottom_block" else match[3]
            return f"backbone.layers.{int(match[2]) - 1}.{module}.{rest}"
        if name.startswith("sem_seg_head."):
            return official_upernet_name(name)
        return re.sub(
            r"^backbone\.layers\.(\d)\.downsample\.",
            lambda m: f"backbone.layers.{int(m[1]) - 1}.downsample.",
            name,
        )
    if match:
        prefix = "" if layout == "mit_imagenet" else "backbone."
        return prefix + _MIT_MODULES[match[3]].format(match[1] + match[2]) + "." + rest
    return segformer_official_name(name, layout[len("mit_") :])


def official_layout(state: dict, layout: str) -> dict:
    """``state`` (hila_d2 names) in the official ``layout`` with the extra entries of official
    files: the HILA flag; ImageNet: the classifier; MiT trained: mmseg's unused conv_seg; Swin:
    relative_position_index buffers and the norm{i} hila_d2 does not build."""
    official = {official_name(name, layout): value for name, value in state.items()}
    prefix = "" if layout == "mit_imagenet" else "backbone."
    official[prefix + FLAG] = torch.ones(1)
    if layout == "mit_imagenet":
        width = official["norm4.weight"].shape[0]
        official["head.weight"], official["head.bias"] = torch.randn(1000, width), torch.randn(1000)
    elif layout == "mit_trained":
        embed_dim = official["decode_head.linear_pred.weight"].shape[1]
        official["decode_head.conv_seg.weight"] = torch.randn(NUM_CLASSES, embed_dim, 1, 1)
        official["decode_head.conv_seg.bias"] = torch.randn(NUM_CLASSES)
    else:
        for key in list(official):
            if key.endswith("attn.relative_position_bias_table"):
                index = key.replace("relative_position_bias_table", "relative_position_index")
                official[index] = torch.zeros(49, 49, dtype=torch.long)
        for i, width in enumerate((96, 192, 384)):
            official[f"backbone.norm{i}.weight"] = torch.randn(width)
            official[f"backbone.norm{i}.bias"] = torch.randn(width)
    return official


def check_round_trip(model: Segmentor, build, layout: str, wrap: bool):
    """Convert ``model``'s weights in the official ``layout`` (``{"state_dict": ..., "meta":
    ...}`` if ``wrap``); the result must hold exactly those tensors, drop exactly the official
    extras, load strictly into a fresh ``build()`` and compute the same outputs."""
    state = model.state_dict()
    official = official_layout(state, layout)
    checkpoint = {"state_dict": official, "meta": {"iter": 160000}} if wrap else official
    result = convert_checkpoint(checkpoint)
    assert sorted(result.model) == sorted(state)
    for name, value in state.items():
        assert torch.equal(result.model[name], value), name
    extras = sorted(set(official) - {official_name(name, layout) for name in state})
    assert result.dropped == extras

    fresh = build()
    fresh.load_state_dict(result.model, strict=True)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for converted, expected in zip(fresh(images), model(images), strict=True):
            assert torch.equal(converted, expected)
    return result


@pytest.mark.parametrize(
    "variant, depths, stages, embed_dim, config",
    [
        ("B0", None, (3,), 256, {"MODEL.MIT.VARIANT": "B0", "MODEL.HILA.STAGES": [3]}),
        (  # HILA's "B2": MiT-B2 widths, depths (2, 2, 6, 2)
            "B2",
            (2, 2, 6, 2),
            (2, 3, 4),
            768,
            {
                "MODEL.MIT.VARIANT": "B2",
                "MODEL.MIT.DEPTHS": [2, 2, 6, 2],
                "MODEL.HILA.STAGES": [2, 3, 4],
            },
        ),
    ],
)
def test_mit_hila_trained(variant, depths, stages, embed_dim, config):
    def build():
        return mit_segformer(variant, stages, depths, embed_dim)

    result = check_round_trip(randomized(build()), build, "mit_trained", wrap=True)
    assert (result.source_format, result.variant, result.missing) == (
        "hila_segformer_trained",
        variant,
        [],
    )
    assert result.config == {
        **config,
        **MIT_HILA_RATIOS,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES,
        "MODEL.SEM_SEG_HEAD.EMBED_DIM": embed_dim,
    }


def test_mit_hila_imagenet():
    def build():
        return mit_segformer("B0", (3,), head=False)

    result = check_round_trip(randomized(build()), build, "mit_imagenet", wrap=False)
    assert (result.source_format, result.variant) == ("hila_segformer_imagenet", "B0")
    assert result.missing == sorted(k for k in segformer_shapes("B0") if k.startswith("sem_seg"))
    assert result.config == {
        "MODEL.MIT.VARIANT": "B0",
        "MODEL.HILA.STAGES": [3],
        **MIT_HILA_RATIOS,
    }


@pytest.fixture(scope="module")
def swin_model() -> Segmentor:
    return randomized(swin_upernet())


@pytest.fixture(scope="module")
def swin_official(swin_model) -> dict:
    """``swin_model`` in the official trained layout."""
    return official_layout(swin_model.state_dict(), "swin")


def test_swin_hila_trained(swin_model):
    result = check_round_trip(swin_model, swin_upernet, "swin", wrap=True)
    assert (result.source_format, result.variant, result.missing) == ("hila_swin_trained", "T", [])
    assert [k for k in result.dropped if "norm" in k] == [
        f"backbone.norm{i}.{p}" for i in range(3) for p in ("bias", "weight")
    ]
    assert result.config == {
        "MODEL.HILA_D2_SWIN.VARIANT": "T",
        "MODEL.HILA_D2_SWIN.WINDOW_SIZE": 7,
        "MODEL.HILA.STAGES": [2, 3, 4],
        "MODEL.HILA.MLP_RATIO": 2.0,
        "MODEL.HILA.BOTTOM_MLP_RATIO": 4.0,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES,
        "MODEL.SEM_SEG_HEAD.UPERNET.CHANNELS": 64,
        "MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE": "res4",
        "MODEL.SEM_SEG_HEAD.AUX.CHANNELS": 32,
    }


@pytest.fixture(scope="module")
def mit_official() -> dict:
    """A trained MiT-B0 + HILA S3 SegFormer in the official layout."""
    return official_layout(mit_segformer("B0", (3,)).state_dict(), "mit_trained")


def test_formats_are_detected_before_the_plain_ones(swin_official, mit_official):
    assert SUPPORTED_FORMATS.index("hila_swin_trained") < SUPPORTED_FORMATS.index("swin_imagenet")
    assert detect_format({"meta": {}, "state_dict": swin_official}).name == "hila_swin_trained"
    assert detect_format({"state_dict": mit_official}).name == "hila_segformer_trained"
    plain = {
        k: v
        for k, v in mit_official.items()
        if not k.startswith(("backbone.topdown.", "backbone.bottomup."))
    }
    assert detect_format(plain).name == "segformer_trained"


@pytest.mark.parametrize(
    "depths, dims, expected",
    [
        ((2, 2, 6, 2), (64, 128, 320, 512), "B2"),  # HILA's "B2": B2 has every block it has
        ((3, 4, 6, 3), (64, 128, 320, 512), "B2"),
        ((2, 2, 2, 2), (64, 128, 320, 512), "B1"),
        ((2, 2, 2, 1), (32, 64, 160, 256), "B0"),
        ((3, 9, 40, 3), (64, 128, 320, 512), "B1"),  # no variant is that deep: the first
    ],
)
def test_mit_variant_of_other_depths(depths, dims, expected):
    def blocks(dims):
        return {
            f"backbone.stages.{s}.blocks.{b}.norm1.weight": torch.zeros(dim)
            for s, (depth, dim) in enumerate(zip(depths, dims))
            for b in range(depth)
        }

    assert infer_mit_variant(blocks(dims)) == (expected, depths)
    with pytest.raises(ValueError, match=r"No MiT variant has embed dims \(48, "):
        infer_mit_variant(blocks((48,) + dims[1:]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (  # unshared per-iteration copies
            {"backbone.topdown.23.1.norm1.weight": torch.zeros(64)},
            r"'backbone\.topdown\.23\.1\.norm1\.weight' is not a weight of the shared copy "
            r"topdown…0 of HILA pair 23: .*unshared copies \(\.1, \.2, …\) are not supported",
        ),
        (  # wrong shape
            {"backbone.prevnorm.23.weight": torch.zeros(3)},
            r"'backbone\.prevnorm\.23\.weight' -> 'backbone\.hila\.23\.bottom_norm\.weight' "
            r"of shape \(3,\), expected \(64,\)",
        ),
        (  # unknown keys
            {"backbone.bottomup.23.0.bottomup_attn.extra": torch.zeros(1)},
            r"'backbone\.bottomup\.23\.0\.bottomup_attn\.extra' -> "
            r"'backbone\.hila\.23\.bottom_up\.bottomup_attn\.extra'",
        ),
        (  # a pair no four-stage encoder has
            {"backbone.prevnorm.13.weight": torch.zeros(64)},
            r"'backbone\.prevnorm\.13\.weight' -> 'backbone\.hila\.13\.bottom_norm\.weight'",
        ),
    ],
)
def test_mit_hila_errors(mit_official, extra, message):
    with pytest.raises(ValueError, match=message):
        convert_checkpoint({"state_dict": {**mit_official, **extra}})


def test_swin_hila_errors(swin_official):
    with pytest.raises(ValueError, match=r"'backbone\.layers\.2\.bottom_sa\.1\.norm1\.weight' is"):
        convert_checkpoint(
            {**swin_official, "backbone.layers.2.bottom_sa.1.norm1.weight": torch.ones(1)}
        )
    # pair 23's Bottom-Up Mix-FFN with the ratio 4 of the lower-level blocks, pair 12's with 2
    wide = {
        **swin_official,
        "backbone.layers.2.bottom_up.top_mlp.fc1.weight": torch.zeros(1536, 384),
    }
    with pytest.raises(
        ValueError,
        match=r"'backbone\.layers\.2\.bottom_up\.top_mlp\.fc1\.weight' -> "
        r"'backbone\.hila\.23\.bottom_up\.top_mlp\.fc1\.weight' of shape \(1536, 384\), "
        r"expected \(768, 384\)",
    ):
        convert_checkpoint(wide)
    with pytest.raises(ValueError, match=r"map to no hila_d2 parameter: 'auxiliary_head\.conv_cat"):
        convert_checkpoint({**swin_official, "auxiliary_head.conv_cat.conv.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="window_size applies to Swin checkpoints only"):
        convert_checkpoint(swin_official, window_size=12)


def test_cli_prints_the_config_that_builds_the_model(tmp_path, swin_model, swin_official, capsys):
    """The printed KEY VALUE lines, appended to the command line of the official config, build a
    model that the written checkpoint loads into strictly."""
    cli = load_script("tools/convert_pretrained.py")
    src, dst = tmp_path / "hila_swin_t.pth", tmp_path / "converted.pth"
    torch.save({"meta": {}, "state_dict": swin_official}, src)
    cli.main([str(src), str(dst)])
    stdout = capsys.readouterr().out
    assert "source format: hila_swin_trained\nvariant: T\n" in stdout
    title = (
        "config (9) [KEY VALUE: set these in the YAML or append them to the train_net.py "
        "command line]:\n"
    )
    lines = stdout.split(title)[1].splitlines()[:9]
    assert lines[:5] == [
        "  MODEL.HILA_D2_SWIN.VARIANT T",
        "  MODEL.HILA_D2_SWIN.WINDOW_SIZE 7",
        "  MODEL.HILA.STAGES [2,3,4]",
        "  MODEL.HILA.MLP_RATIO 2.0",
        "  MODEL.HILA.BOTTOM_MLP_RATIO 4.0",
    ]
    assert "note: MODEL.HILA.STRIDES, NUM_HEADS and PARITY_MODE leave no trace" in stdout

    opts = [token for line in lines for token in line.split()]
    model = build_model(load_config(SWIN_CONFIG, *opts)).eval()
    model.load_state_dict(torch.load(dst, weights_only=True)["model"], strict=True)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = model.sem_seg_head(model.backbone(images))[0]
        assert torch.equal(logits, swin_model(images)[-1])
