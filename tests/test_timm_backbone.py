"""Any timm encoder as a detectron2 backbone (``TimmBackbone``), plain and with HILA, over
families rather than names: random weights, no downloads, an odd input size."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import test_hila_formulation as formulation_tests
import test_hub_weights as hub_tests
from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.backbone.timm import TimmBackbone, TimmEncoderError
from hila_d2.modeling.hila import HILASettings

IMAGE = (1, 3, 61, 93)  # odd: every family pads it internally
FIXED = {"img_size": (64, 96)}  # the input size of the fixed-size families
# the smallest variant of each family, its create_model options, and whether it takes HILA
FAMILIES = [
    ("convnext_atto", {}, True),
    ("pvt_v2_b0", {}, True),
    ("swinv2_cr_tiny_ns_224", {"img_size": (64, 96), "depths": (2, 2, 2, 2)}, True),
    ("swinv2_tiny_window8_256", {"img_size": (128, 128), "depths": (2, 2, 2, 2)}, True),
    ("focalnet_tiny_srf", {}, True),
    ("efficientformerv2_s0", FIXED, True),
    ("mambaout_femto", {}, True),
    ("caformer_s18", {}, True),
    ("edgenext_xx_small", {}, True),
    ("davit_tiny", {"depths": (1, 1, 2, 1)}, True),
    ("tiny_vit_5m_224", {}, True),
    ("repvit_m0_9", {}, True),
    ("maxvit_nano_rw_256", FIXED, False),
    ("efficientnet_b0", {}, False),
    ("regnetx_002", {}, False),
    ("resnet18", {}, False),
]
HILA_FAMILIES = [(name, kwargs) for name, kwargs, takes_hila in FAMILIES if takes_hila]
S3 = HILASettings(stages=(3,))


def _padded(x: torch.Tensor, backbone: TimmBackbone) -> torch.Tensor:
    """``x`` padded at the bottom and right to the model's fixed size or a multiple of 32."""
    height, width = backbone.fixed_size or [math.ceil(s / 32) * 32 for s in x.shape[-2:]]
    return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))


@pytest.mark.parametrize("name, kwargs, takes_hila", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_plain_outputs_are_timms_forward_intermediates(name, kwargs, takes_hila):
    torch.manual_seed(0)
    backbone = TimmBackbone(name=name, model_kwargs=kwargs).eval()
    reference = timm.create_model(name, pretrained=False, **kwargs).eval()
    loaded = reference.load_state_dict(backbone.encoder.state_dict(), strict=False)
    assert not loaded.unexpected_keys
    assert {f"encoder.{k}" for k in loaded.missing_keys} <= set(backbone.unbuilt_keys)

    x = torch.randn(IMAGE)
    with torch.no_grad():
        outputs = backbone(x)
        expected = reference.forward_intermediates(_padded(x, backbone), intermediates_only=True)
    by_stride = {info["reduction"]: out for info, out in zip(reference.feature_info, expected)}
    assert list(outputs) == ["res2", "res3", "res4", "res5"]
    for out_name, spec in backbone.output_shape().items():
        assert spec.stride == 2 ** int(out_name[3:])
        height, width = (math.ceil(s / spec.stride) for s in IMAGE[2:])
        assert outputs[out_name].shape == (1, spec.channels, height, width)
        reference_out = by_stride[spec.stride][..., :height, :width]
        torch.testing.assert_close(outputs[out_name], reference_out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, kwargs", HILA_FAMILIES, ids=[f[0] for f in HILA_FAMILIES])
def test_hila_trains_every_parameter_and_keeps_the_plain_upper_stream_at_strength_0(name, kwargs):
    torch.manual_seed(0)
    plain = TimmBackbone(name=name, model_kwargs=kwargs).eval()
    torch.manual_seed(0)
    hila = TimmBackbone(name=name, model_kwargs=kwargs, hila=S3)
    assert list(hila.hila) == ["23"]
    hila.load_state_dict({**hila.state_dict(), **plain.state_dict()})
    x = torch.randn(IMAGE)

    hila.eval()
    hila.hila.set_strength(0.0)
    with torch.no_grad():
        faded, expected = hila(x), plain(x)
    for out_name in ("res2", "res4", "res5"):  # res3 (the pair's lower stage) passes its norm
        torch.testing.assert_close(faded[out_name], expected[out_name], rtol=0, atol=1e-5)
    hila.hila.set_strength(1.0)
    with torch.no_grad():
        assert not torch.allclose(hila(x)["res4"], expected["res4"], atol=1e-3)

    hila.train()
    outputs = hila(x)
    sum((out * torch.randn_like(out)).sum() for out in outputs.values()).backward()
    trainable = [(k, p) for k, p in hila.named_parameters() if p.requires_grad]
    assert any(k.startswith("hila.23.bottom_block.") for k, _ in trainable)
    no_gradient = [k for k, p in trainable if p.grad is None or not p.grad.isfinite().all()]
    assert not no_gradient


def test_hila_on_pvt_v2_is_hila_d2s_mit():
    """PVTv2-B0 with MiT's MLP ratios is MiT-B0: with the same weights, HILA attached through
    hooks gives the outputs and gradients of the MiT encoder's own HILA."""
    hila = HILASettings(stages=(2, 3, 4))
    torch.manual_seed(0)
    mit = MixVisionTransformer(variant="B0", hila=hila, drop_path_rate=0.0)
    timm_mit = TimmBackbone(name="pvt_v2_b0", hila=hila, model_kwargs={"mlp_ratios": (4,) * 4})
    for pair in timm_mit.hila.values():  # MiT's lower-level block: LayerNorm eps 1e-5
        for module in pair.bottom_block.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = 1e-5
    timm_names = {k: k if k.startswith("hila.") else f"encoder.{k}" for k in mit.state_dict()}
    timm_mit.load_state_dict({timm_names[k]: v for k, v in mit.state_dict().items()})
    x = torch.randn(2, 3, 64, 96)
    outputs, expected = timm_mit(x), mit(x)
    for out_name in expected:
        torch.testing.assert_close(outputs[out_name], expected[out_name], rtol=0, atol=1e-5)
    sum(o.square().sum() for o in outputs.values()).backward()
    sum(o.square().sum() for o in expected.values()).backward()
    for key, parameter in mit.named_parameters():
        grad = dict(timm_mit.named_parameters())[timm_names[key]].grad
        torch.testing.assert_close(grad, parameter.grad, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["convnext_atto", "pvt_v2_b0"])
def test_full_checkpointing_gives_the_same_gradients(name):
    """MODEL.HILA.CHECKPOINT recomputes the pair's steps (its lower-level block, a timm block,
    among them) in the backward pass: the same gradients."""
    grads = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        hila = HILASettings(stages=(3,), checkpoint=checkpoint)
        backbone = TimmBackbone(name=name, hila=hila).train()
        outputs = backbone(torch.randn(IMAGE, generator=torch.Generator().manual_seed(1)))
        sum(o.square().sum() for o in outputs.values()).backward()
        grads.append({k: p.grad for k, p in backbone.named_parameters() if p.requires_grad})
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, rtol=1e-5, atol=1e-6, msg=key)


def test_blocks_that_change_matmul_results_in_place_run_without_selective_checkpointing():
    """timm's Swin V2 block adds its qkv bias and applies a ReLU in place on matmul results, which
    selective checkpointing keeps: its copy runs without; ConvNeXt's keeps the policy."""
    swin = TimmBackbone(name="swinv2_tiny_window8_256", model_kwargs=FAMILIES[3][1], hila=S3)
    assert swin.hila["23"].bottom_block.selective_checkpointing is False
    convnext = TimmBackbone(name="convnext_atto", hila=S3)
    assert getattr(convnext.hila["23"].bottom_block, "selective_checkpointing", True)


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True])
def test_hila_on_a_timm_encoder_traces_as_one_graph(training):
    """torch._dynamo captures the encoder with its hooked pair in one graph, without a break."""
    model = TimmBackbone(name="convnext_atto", hila=S3).train(training)
    with torch.set_grad_enabled(training):
        in_hila, graphs, breaks = formulation_tests._hila_graph_breaks(model, torch.randn(IMAGE))
    assert in_hila == [] and (graphs, breaks) == (1, 0)


@pytest.mark.parametrize(
    "name, kwargs, reason",
    [
        ("maxvit_nano_rw_256", FIXED, "inside its first block"),
        ("efficientnet_b0", {}, r"'blocks\.2' \(Sequential\), which does not hold its blocks"),
        ("regnetx_002", {}, r"'s2' \(RegStage\), which does not hold its blocks"),
        ("resnet18", {}, r"'layer2' \(Sequential\)"),
    ],
)
def test_families_that_cannot_take_hila_are_one_error(name, kwargs, reason):
    with pytest.raises(TimmEncoderError, match=rf"timm model '{name}' cannot take HILA.*{reason}"):
        TimmBackbone(name=name, model_kwargs=kwargs, hila=S3)


@pytest.mark.parametrize(
    "options, error",
    [
        ({"name": "vit_tiny_patch16_224"}, r"not a hierarchical encoder: its feature strides"),
        ({"name": "convnext_atom"}, r"MODEL.TIMM.NAME 'convnext_atom' is not a timm model"),
        ({"name": "convnext_atto", "out_features": ["res6"]}, r"OUT_FEATURES must be .*res5"),
        ({"name": "convnext_atto", "freeze_at": 6}, r"FREEZE_AT must be in 0\.\.5"),
        ({"name": "resnet18", "model_kwargs": {"window": 3}}, r"does not take the options"),
    ],
)
def test_bad_configurations_are_one_error(options, error):
    with pytest.raises(TimmEncoderError, match=error):
        TimmBackbone(**options)


def test_fixed_size_models_refuse_larger_images():
    backbone = TimmBackbone(name="efficientformerv2_s0", model_kwargs=FIXED)
    with pytest.raises(ValueError, match=r"at most 64x96 .*MODEL.TIMM.KWARGS.img_size"):
        backbone(torch.zeros(1, 3, 65, 96))


@pytest.mark.parametrize(
    "name, freeze_at, frozen, trained",
    [
        ("convnext_atto", 1, ["stem."], ["stages.0."]),
        ("convnext_atto", 3, ["stem.", "stages.0.", "stages.1."], ["stages.2."]),
        ("resnet18", 1, ["conv1."], ["layer1."]),
        ("resnet18", 2, ["conv1.", "layer1."], ["layer2."]),
        ("efficientnet_b0", 3, ["conv_stem.", "blocks.0.", "blocks.2."], ["blocks.3."]),
    ],
)
def test_freeze_at_freezes_the_stem_and_the_first_stages(name, freeze_at, frozen, trained):
    torch.manual_seed(0)
    plain = TimmBackbone(name=name).eval()
    backbone = TimmBackbone(name=name, freeze_at=freeze_at).eval()
    loaded = backbone.load_state_dict(plain.state_dict(), strict=False)
    assert not loaded.missing_keys  # frozen BatchNorms have no step counter:
    assert all(k.endswith("num_batches_tracked") for k in loaded.unexpected_keys)
    x = torch.randn(IMAGE)
    with torch.no_grad():  # the same model: frozen BatchNorms keep their activations
        for out_name, out in backbone(x).items():
            torch.testing.assert_close(out, plain(x)[out_name], rtol=0, atol=1e-5)
    backbone.train()
    parameters = dict(backbone.encoder.named_parameters())
    for prefix in frozen:
        group = [p for k, p in parameters.items() if k.startswith(prefix)]
        assert group and not any(p.requires_grad for p in group), prefix
    for prefix in trained:
        group = [p for k, p in parameters.items() if k.startswith(prefix)]
        assert group and all(p.requires_grad for p in group), prefix
    batch_norms = [m for k, m in backbone.encoder.named_modules() if k.startswith(frozen[0])]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in batch_norms)
    outputs = backbone(x)
    sum(o.sum() for o in outputs.values()).backward()
    assert all(p.grad is None for p in parameters.values() if not p.requires_grad)
    assert all(p.grad is not None for p in parameters.values() if p.requires_grad)


def test_only_what_feeds_the_outputs_is_built_or_trained():
    lower = TimmBackbone(name="convnext_atto", out_features=["res2", "res3"])
    assert list(lower.output_shape()) == ["res2", "res3"]
    assert len(lower.encoder.stages) == 2
    assert "encoder.stages.2.blocks.0.conv_dw.weight" in lower.unbuilt_keys
    # HILA S3 over res2, res3: stage 3 runs for the pair, but its norm feeds nothing
    paired = TimmBackbone(name="pvt_v2_b0", out_features=["res2", "res3"], hila=S3)
    assert len(paired.encoder.stages) == 3
    unused = [k for k, p in paired.named_parameters() if not p.requires_grad]
    assert unused == ["encoder.stages.2.norm.weight", "encoder.stages.2.norm.bias"]
    outputs = paired.train()(torch.randn(IMAGE))
    sum(o.sum() for o in outputs.values()).backward()
    assert all(p.grad is not None for p in paired.parameters() if p.requires_grad)


@pytest.fixture
def timm_weights(tmp_path):
    """A convnext_atto checkpoint as timm writes it (.safetensors and .pth), and the model."""
    torch.manual_seed(1)
    reference = timm.create_model("convnext_atto", pretrained=False)
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(reference.state_dict(), tmp_path / "convnext_atto.pth")
    return tmp_path, reference


def _assert_encoder_is(backbone: TimmBackbone, reference: torch.nn.Module) -> None:
    reference_state = reference.state_dict()
    for key, value in backbone.encoder.state_dict().items():
        assert torch.equal(value, reference_state[key]), key


@pytest.mark.parametrize("file", ["model.safetensors", "convnext_atto.pth"])
def test_timm_checkpoint_files_load_into_the_encoder(timm_weights, file):
    directory, reference = timm_weights
    backbone = TimmBackbone(name="convnext_atto", hila=S3)
    model = torch.nn.ModuleDict({"backbone": backbone})
    checkpointer = ValidatingCheckpointer(model, optional_keys=["backbone.hila.*"])
    checkpointer.load(str(directory / file))
    _assert_encoder_is(backbone, reference)
    other = torch.nn.ModuleDict({"backbone": TimmBackbone(name="convnext_femto")})
    with pytest.raises(ValueError, match="does not fit"):
        ValidatingCheckpointer(other).load(str(directory / file))


def test_timm_names_load_offline_from_the_cache(timm_weights, tmp_path, monkeypatch):
    directory, reference = timm_weights
    repo_id = timm.models.get_pretrained_cfg("convnext_atto").hf_hub_id.partition("@")[0]
    cache = tmp_path / "hub"
    (directory / "config.json").write_text('{"architecture": "convnext_atto"}')
    files = {n: directory / n for n in ("config.json", "model.safetensors")}
    hub_tests._cache_snapshot(cache, repo_id, "0" * 40, files, ["main"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_tests.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_tests.constants, "HF_HUB_OFFLINE", True)
    backbone = TimmBackbone(name="convnext_atto")
    ValidatingCheckpointer(torch.nn.ModuleDict({"backbone": backbone})).load("timm://convnext_atto")
    _assert_encoder_is(backbone, reference)
