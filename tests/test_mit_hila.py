"""HILA inside MiT: schedule and data flow (docs/design/hila.md §4.1), HILA off = plain MiT,
gradients, parameter counts of the paper configurations (§7, §9.2), odd input sizes and the
"no HILA pretraining" initialisation."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from hila_d2.checkpoint.loading import CheckpointError, ValidatingCheckpointer
from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.hila import HILASettings
from hila_d2.solver import build_optimizer
from project_config import load_config

ADE = "configs/ade20k/semantic-segmentation/hila/"
CITY = "configs/cityscapes/semantic-segmentation/hila/"
BUILTIN = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
# a plain checkpoint lacks the pairs; exempting only their own modules, not the lower-level block
PAIRS_OWN_MODULES = tuple(
    f"backbone.hila.*.{module}.*" for module in ("top_down", "bottom_up", "bottom_norm")
)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_hila_off_is_exactly_the_plain_encoder():
    """No HILA parameters, and outputs bit-identical to timm's stage-by-stage MiT forward."""
    torch.manual_seed(0)
    mit = MixVisionTransformer(variant="B0").eval()
    assert len(mit.hila) == 0
    assert not [k for k in mit.state_dict() if k.startswith("hila")]
    x = torch.randn(2, 3, 75, 110)
    with torch.no_grad():
        outputs = mit(x)
        tokens = mit.patch_embed(x)
        for name, stage in zip(["res2", "res3", "res4", "res5"], mit.stages):
            tokens = stage(tokens)  # timm's PyramidVisionTransformerStage.forward
            assert torch.equal(outputs[name], tokens), name


def test_hila_leaves_the_plain_weights_and_upper_output_paths_intact():
    """With HILA on, the encoder's own weights are those of plain MiT (a plain checkpoint loads
    strictly into them) and only the outputs below a pair change."""
    torch.manual_seed(0)
    plain = MixVisionTransformer(variant="B0").eval()
    hila = MixVisionTransformer(variant="B0", hila=HILASettings(stages=(3,))).eval()
    own = {k: v for k, v in hila.state_dict().items() if not k.startswith("hila.")}
    assert own.keys() == plain.state_dict().keys()
    hila.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = plain(x), hila(x)
    assert torch.equal(got["res2"], expected["res2"])  # below the pair's lower stage
    assert not torch.allclose(got["res3"], expected["res3"])  # replaced by the pair
    assert not torch.allclose(got["res4"], expected["res4"])  # Bottom-Up updated the upper stage


CALL_ORDER_B2_S234 = (
    "S1blk0 S1blk1 norm1 | BU12 S2blk0 TD12 PREV12 BU12 S2blk1 norm2 PREVNORM12 | "
    "BU23 S3blk0 S3blk1 TD23 PREV23 S3blk2 BU23 S3blk3 S3blk4 TD23 PREV23 S3blk5 norm3 PREVNORM23 | "
    "BU34 S4blk0 TD34 PREV34 BU34 S4blk1 norm4 PREVNORM34"
)


def test_call_order_of_the_b2_s234_configuration():
    """The observed order of the official B2(2,2,6,2)-S234 model (docs/design/hila.md §4.1), with
    our ``bottom_norm`` (the official ``prevnorm``) running right after the upper stage's loop."""
    mit = MixVisionTransformer(
        variant="B2", depths=(2, 2, 6, 2), hila=HILASettings(stages=(2, 3, 4), strides=(1, 1, 3, 1))
    ).eval()
    calls = []
    names = {}
    for s, stage in enumerate(mit.stages):
        for b, block in enumerate(stage.blocks):
            names[block] = f"S{s + 1}blk{b}"
        names[stage.norm] = f"norm{s + 1}"
    for tag, pair in mit.hila.items():
        names.update({pair.bottom_up: f"BU{tag}", pair.top_down: f"TD{tag}",
                      pair.bottom_block: f"PREV{tag}", pair.bottom_norm: f"PREVNORM{tag}"})
    for module, name in names.items():  # before the HILA pairs' own hooks on the blocks
        module.register_forward_hook(lambda m, i, o, name=name: calls.append(name), prepend=True)
    with torch.no_grad():
        mit(torch.randn(1, 3, 64, 64))
    # the official prevnorm runs after the upper stage's norm; both are independent LayerNorms
    observed = " ".join(calls)
    for tag, top in (("12", 2), ("23", 3), ("34", 4)):
        observed = observed.replace(f"PREVNORM{tag} norm{top}", f"norm{top} PREVNORM{tag}")
    expected = CALL_ORDER_B2_S234.replace(" |", "")
    assert observed == expected


def test_every_parameter_gets_a_gradient_with_hila_on():
    torch.manual_seed(0)
    mit = MixVisionTransformer(
        variant="B0", drop_path_rate=0.0, hila=HILASettings(stages=(2, 3, 4))
    )
    outputs = mit(torch.randn(2, 3, 64, 64))
    sum((out ** 2).mean() for out in outputs.values()).backward()
    missing = [n for n, p in mit.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("size", [(500, 333), (64, 64), (96, 128), (65, 97)])
@pytest.mark.parametrize("parity", [True, False])
def test_odd_input_sizes(size, parity):
    torch.manual_seed(0)
    mit = MixVisionTransformer(
        variant="B0", hila=HILASettings(stages=(2, 3, 4), parity_mode=parity)
    ).eval()
    height, width = size
    with torch.no_grad():
        outputs = mit(torch.randn(1, 3, height, width))
    for (name, out), stride, channels in zip(outputs.items(), (4, 8, 16, 32), (32, 64, 160, 256)):
        expected = (1, channels, -(-height // stride), -(-width // stride))
        assert tuple(out.shape) == expected, name
        assert torch.isfinite(out).all()


def test_parity_and_clean_modes_share_weights_but_not_outputs():
    """The modes differ only in computation (docs/design/hila.md §12), so the same weights load into
    both and give different Bottom-Up results (padding masked, another scale)."""
    torch.manual_seed(0)
    parity = MixVisionTransformer(variant="B0", hila=HILASettings(stages=(3,))).eval()
    clean = MixVisionTransformer(
        variant="B0", hila=HILASettings(stages=(3,), parity_mode=False)
    ).eval()
    clean.load_state_dict(parity.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(parity(x)["res2"], clean(x)["res2"])
        assert not torch.allclose(parity(x)["res4"], clean(x)["res4"])


# Segmentor parameters (millions) of docs/design/hila.md §9.2 (ADE20K, 150 classes; Cityscapes, 19).
PAPER_PARAMS_M = [
    (ADE + "hila_mit_b0_s3_160k.yaml", 4.197),
    (ADE + "hila_mit_b1_s3_160k.yaml", 15.405),
    (ADE + "hila_mit_b1_s234_160k.yaml", 21.627),
    (ADE + "hila_mit_b2_s234_320k_nohilapretraining.yaml", 30.954),
    (CITY + "hila_mit_b0_s3_160k.yaml", 4.147),
    (CITY + "hila_mit_b1_s3_160k.yaml", 15.355),
    (CITY + "hila_mit_b1_s234_160k.yaml", 21.576),
    (CITY + "hila_mit_b2_s234_320k_nohilapretraining.yaml", 30.836),
]
# Backbone parameters from docs/design/hila.md §7: base MiT plus the pairs' additions.
PAPER_BACKBONE_PARAMS = {
    "hila_mit_b0_s3": 3_319_392 + 425_408,
    "hila_mit_b1_s3": 13_151_424 + 1_669_952,
    "hila_mit_b1_s234": 13_151_424 + 538_432 + 1_669_952 + 5_683_520,
    "hila_mit_b2_s234": 19_776_704 + 538_432 + 1_669_952 + 5_683_520,
}


@pytest.mark.parametrize("config, millions", PAPER_PARAMS_M)
def test_parameter_counts_of_the_paper_configurations(config, millions):
    """The official counts include mmseg's unused default classifier ``decode_head.conv_seg``
    (Conv2d(128, K), which the converter drops); the models are otherwise the same size."""
    cfg = load_config(config, "MODEL.DEVICE", "meta")
    with torch.device("meta"):
        model = build_model(cfg)
    classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    unused_conv_seg = 128 * classes + classes
    assert round((count(model) + unused_conv_seg) / 1e6, 3) == millions
    stem = config.split("/")[-1].rsplit("_", 1)[0].replace("_160k", "").replace("_320k", "")
    assert count(model.backbone) == PAPER_BACKBONE_PARAMS[stem]


def test_pair_parameter_breakdown_b0_s3():
    """docs/design/hila.md §7: TD 65,184, BU 241,824, lower block 118,272, norm 128."""
    mit = MixVisionTransformer(variant="B0", hila=HILASettings(stages=(3,)))
    pair = mit.hila["23"]
    parts = (pair.top_down, pair.bottom_up, pair.bottom_block, pair.bottom_norm)
    assert [count(m) for m in parts] == [65_184, 241_824, 118_272, 128]


def test_bad_hila_settings_name_the_key():
    with pytest.raises(ValueError, match="MODEL.HILA.STAGES"):
        MixVisionTransformer(variant="B0", hila=HILASettings(stages=(1,)))
    with pytest.raises(ValueError, match="MODEL.HILA.STRIDES"):
        MixVisionTransformer(variant="B0", hila=HILASettings(stages=(3,), strides=(1, 1)))
    with pytest.raises(ValueError, match="MODEL.MIT.DEPTHS"):
        MixVisionTransformer(variant="B0", depths=(2, 2, 2))


def _plain_checkpoint(tmp_path):
    """A random plain MiT-B0 segmentor checkpoint (no HILA keys), as a converted mit_b0 gives."""
    torch.manual_seed(1)
    plain = build_model(load_config(BUILTIN, "MODEL.HILA.STAGES", "[]"))
    DetectionCheckpointer(plain, str(tmp_path)).save("plain")
    return plain, str(tmp_path / "plain.pth")


def test_no_hila_pretraining_copies_the_lower_block_and_trains_it(tmp_path):
    plain, weights = _plain_checkpoint(tmp_path)
    cfg = load_config(BUILTIN, "MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE", "True")
    torch.manual_seed(2)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)  # built before loading, as DefaultTrainer does
    # the copied block is not missing: only the pair's own modules are exempt
    ValidatingCheckpointer(model, optional_keys=PAIRS_OWN_MODULES).load(weights)
    pair = model.backbone.hila["23"]
    source = plain.backbone.stages[1].blocks[-1].state_dict()
    for key, value in pair.bottom_block.state_dict().items():
        assert torch.equal(value, source[key]), key
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in pair.bottom_block.parameters())
    before = [p.detach().clone() for p in pair.bottom_block.parameters()]
    model.train()
    batch = [{"image": torch.rand(3, 64, 64) * 255,
              "sem_seg": torch.randint(0, 7, (64, 64))} for _ in range(2)]
    sum(model(batch).values()).backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, pair.bottom_block.parameters()))


def test_no_hila_pretraining_is_off_by_default_and_needs_matching_shapes(tmp_path):
    plain, weights = _plain_checkpoint(tmp_path)
    model = build_model(load_config(BUILTIN))
    with pytest.raises(CheckpointError, match=r"backbone\.hila\.23\.bottom_block\."):
        ValidatingCheckpointer(model, optional_keys=PAIRS_OWN_MODULES).load(weights)
    ValidatingCheckpointer(model, optional_keys=["backbone.hila.*"]).load(weights)
    block = model.backbone.hila["23"].bottom_block
    assert not torch.equal(block.attn.q.weight, plain.backbone.stages[1].blocks[-1].attn.q.weight)
    mismatched = build_model(load_config(
        BUILTIN, "MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE", "True", "MODEL.HILA.BOTTOM_MLP_RATIO", "2.0"
    ))
    before = {k: v.clone() for k, v in mismatched.state_dict().items()}
    with pytest.raises(ValueError, match="MODEL.HILA.BOTTOM_MLP_RATIO"):
        ValidatingCheckpointer(mismatched, optional_keys=["backbone.hila.*"]).load(weights)
    # a refused copy loads nothing
    assert all(torch.equal(v, before[k]) for k, v in mismatched.state_dict().items())


@pytest.mark.parametrize("case", ["lacks the lower stage's block", "has part of the pair's block"])
def test_no_hila_pretraining_warns_and_keeps_the_block_when_the_checkpoint_does_not_fit(
    tmp_path, caplog, case
):
    """The copy needs the lower stage's last block in the checkpoint and none of the pair's own
    lower-level block; otherwise the pair's block keeps its initialisation, with a warning."""
    plain, _ = _plain_checkpoint(tmp_path)
    torch.manual_seed(2)
    model = build_model(load_config(BUILTIN, "MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE", "True"))
    block = model.backbone.hila["23"].bottom_block
    initial = {k: v.clone() for k, v in block.state_dict().items()}
    state = plain.state_dict()
    if case == "lacks the lower stage's block":
        state = {k: v for k, v in state.items() if not k.startswith("backbone.stages.1.blocks.1.")}
    else:
        state.update({f"backbone.hila.23.bottom_block.{k}": v
                      for k, v in initial.items() if k.startswith("attn.q.")})  # fmt: skip
    torch.save({"model": state}, tmp_path / "partial.pth")
    with caplog.at_level("WARNING", logger="hila_d2.modeling.hila.encoder"):
        ValidatingCheckpointer(model, optional_keys=["*"]).load(str(tmp_path / "partial.pth"))
    assert "HILA pair 23: not initialising its lower-level block" in caplog.text
    for key, value in block.state_dict().items():
        assert torch.equal(value, initial[key]), key
