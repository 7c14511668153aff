"""Official HAT-Net v2.0 checkpoints (docs/design/hatnet.md §5) -> hila_d2 HAT-Net: round trip of
random official-layout state dicts in every outer format, variant inference, errors, and the CLI's
--fpn output loading into a Mask R-CNN config with proj_norm still frozen."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from project_config import load_config, load_script
from test_hatnet import SPEC, official_shapes

from hila_d2.checkpoint.convert import convert_checkpoint, convert_hatnet, detect_format
from hila_d2.modeling.backbone.hatnet import HATNet
from hila_d2.solver import build_optimizer

CLASSIFIER = ["classifier.1.bias", "classifier.1.weight"]


def random_official(variant: str, device: str = "cpu", seed: int = 0) -> dict:
    """A state dict in the official layout (§5.2, classifier included) with random values."""
    generator = torch.Generator().manual_seed(seed)
    shapes = dict(official_shapes(variant))
    shapes["classifier.1.weight"] = (1000, SPEC[variant][0][-1])
    shapes["classifier.1.bias"] = (1000,)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: torch.randn(s, generator=generator) for k, s in shapes.items()}


@pytest.mark.parametrize(
    "wrap",
    [lambda sd: sd, lambda sd: {"model": sd, "epoch": 299}, lambda sd: {"state_dict": sd},
     lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}],
    ids=["bare", "model", "state_dict", "ddp_module_prefix"],
)  # fmt: skip
@pytest.mark.parametrize("variant", ["T", "S"])
def test_round_trip_loads_strictly_with_the_same_values(variant, wrap):
    official = random_official(variant)
    checkpoint = wrap(official)
    assert detect_format(checkpoint).name == "hatnet_imagenet"
    result = convert_checkpoint(checkpoint)
    assert result.source_format == "hatnet_imagenet" and result.variant == variant
    assert result.config == {"MODEL.HATNET.VARIANT": variant}
    assert [k.replace("module.", "") for k in result.dropped] == CLASSIFIER
    assert result.missing == []
    model = HATNet(variant=variant)
    state = {k[len("backbone.") :]: v for k, v in result.model.items()}
    model.load_state_dict(state, strict=True)  # proj_norm included
    for name, value in model.state_dict().items():
        assert torch.equal(value, official[name]), name
    assert not model.blocks[0][0].attn.proj_norm.weight.requires_grad


@pytest.mark.parametrize("variant", ["M", "L"])
def test_medium_and_large_are_told_apart_by_their_shapes(variant):
    result = convert_hatnet(random_official(variant, device="meta"))
    assert result.variant == variant and result.missing == []


def test_errors_name_the_problem():
    official = random_official("T", device="meta")
    # TransCNN-style 5x5 depthwise kernels everywhere (v1.0 weights are not supported)
    transcnn = {
        k: torch.empty(*v.shape[:2], 5, 5, device="meta") if "conv2.0" in k else v
        for k, v in official.items()
    }
    with pytest.raises(ValueError, match=r"No HAT-Net variant has .*kernel_sizes \(5, 5, 5, 5\).*TransCNN"):
        convert_hatnet(transcnn)
    wrong_shape = dict(official, **{"ds2.norm.weight": torch.empty(7, device="meta")})
    with pytest.raises(ValueError, match=r"'ds2\.norm\.weight' -> 'backbone\.ds2\.norm\.weight' of shape \(7,\)"):
        convert_hatnet(wrong_shape)
    extra = dict(official, **{"blocks.3.0.attn.grid_norm.weight": torch.empty(384, device="meta")})
    with pytest.raises(ValueError, match=r"unexpected keys.*blocks\.3\.0\.attn\.grid_norm\.weight"):
        convert_hatnet(extra)
    with pytest.raises(ValueError, match="convert_hatnet takes hatnet_imagenet checkpoints"):
        convert_hatnet({"patch_embed1.proj.weight": torch.zeros(1), "block1.0.attn.kv.weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def cli():
    return load_script("tools/convert_pretrained.py")


def test_cli_fpn_output_loads_into_mask_rcnn_and_keeps_proj_norm_frozen(tmp_path, cli, capsys):
    official = random_official("T")
    src, dst = tmp_path / "HAT-Net_Tiny.pth", tmp_path / "hatnet_t_fpn.pkl"
    torch.save({"model": official}, src)
    cli.main([str(src), str(dst), "--fpn"])
    stdout = capsys.readouterr().out
    assert "source format: hatnet_imagenet\nvariant: T\n" in stdout
    assert "dropped source keys (2):\n  classifier.1.bias\n  classifier.1.weight\n" in stdout
    assert "MODEL.HATNET.VARIANT T" in stdout

    cfg = load_config("configs/coco/instance-segmentation/mask_rcnn_hatnet_t_1x.yaml")
    model = build_model(cfg)
    incompatible = DetectionCheckpointer(model)._load_model(DetectionCheckpointer(model)._load_file(str(dst)))
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert not incompatible.unexpected_keys
    encoder = model.backbone.bottom_up.state_dict()
    for name, value in official.items():
        if not name.startswith("classifier."):
            assert torch.equal(encoder[name], value), name
    # the unused proj_norm loads but gets no gradient and no optimizer slot (DDP-safe)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(".attn.proj_norm." in n for n in frozen)
    optimised = {id(p) for group in build_optimizer(cfg, model).param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in model.parameters() if not p.requires_grad)


def test_cli_fpn_refuses_a_checkpoint_with_a_head(tmp_path, cli):
    trained = {f"backbone.{k}": v for k, v in HATNet(variant="T").state_dict().items()}
    with pytest.raises(ValueError, match="--fpn takes encoder-only"):
        cli.fpn_names({**trained, "sem_seg_head.predictor.weight": torch.zeros(1)})
    renamed = cli.fpn_names(trained)
    assert all(k.startswith("backbone.bottom_up.") for k in renamed) and len(renamed) == len(trained)
