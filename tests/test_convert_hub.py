"""Weights as users get them (G2), on random weights saved locally (no downloads): transformers
Segformer saved with ``save_pretrained`` (hub names) or as 5.x in-memory names, timm Swin and
pvt_v2 as safetensors, official Swin 22k and 384/window-12 files; the file readers (.safetensors,
.bin, .pth, .pkl, a model directory), config.json checks, ``ValidatingCheckpointer`` converting
any of them on load, and the CLI report."""

import json
import pickle
import re

import pytest
import torch
from project_config import load_config, load_script
from safetensors.torch import save_file
from torch import nn

from hila_d2.checkpoint.convert import convert_checkpoint, detect_format
from hila_d2.checkpoint.files import convert_file, read_checkpoint
from hila_d2.checkpoint.loading import CheckpointError, ValidatingCheckpointer
from hila_d2.modeling.backbone.mit import STAGE_NAMES, MixVisionTransformer
from hila_d2.modeling.backbone.swin import SwinTransformerBackbone
from hila_d2.modeling.heads.segformer_head import SegFormerHead
from hila_d2.utils.references import TimmSwinStages, hf_segformer_config, timm_swin, use_mit_eps

transformers = pytest.importorskip("transformers")
ODD_SIZE = (75, 110)
LABELS = ["wall", "sky", "road", "tree", "car"]


def _randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def _hf(cls_name: str, variant: str = "B0", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(hf_segformer_config(variant, **kwargs))
    return _randomize_(model)


def _save_pretrained(model: nn.Module, path) -> str:
    model.save_pretrained(str(path))
    return str(path)


def _into(module: nn.Module, model: dict, prefix: str) -> nn.Module:
    module.load_state_dict(  # strict
        {k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}
    )
    return module.eval()


def _mit(model: dict, variant: str = "B0") -> MixVisionTransformer:
    return _into(MixVisionTransformer(variant=variant, drop_path_rate=0.0), model, "backbone.")


# ------------------------------------------------------------------ transformers Segformer


@pytest.mark.parametrize("cls_name", ["SegformerModel", "SegformerForImageClassification"])
def test_hf_encoder_save_pretrained_matches_transformers(tmp_path, cls_name):
    hf = _hf(cls_name)
    directory = _save_pretrained(hf, tmp_path / "mit-b0")
    result = convert_file(directory)
    assert (result.source_format, result.variant) == ("hf_segformer", "B0")
    assert result.config == {"MODEL.MIT.VARIANT": "B0"}
    classifier = cls_name == "SegformerForImageClassification"
    assert result.dropped == (["classifier.bias", "classifier.weight"] if classifier else [])
    assert result.missing and all(k.startswith("sem_seg_head.") for k in result.missing)
    assert result.labels is None
    encoder = hf.segformer if classifier else hf
    use_mit_eps(encoder)
    ours = _mit(result.model)
    x = torch.randn(1, 3, *ODD_SIZE)
    with torch.no_grad():
        reference = encoder(x, output_hidden_states=True).hidden_states
        outputs = ours(x)
    for name, expected in zip(STAGE_NAMES, reference):
        torch.testing.assert_close(outputs[name], expected, atol=1e-4, rtol=0)


def test_hf_semantic_segmentation_matches_transformers(tmp_path):
    hf = _hf(
        "SegformerForSemanticSegmentation",
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    directory = _save_pretrained(hf, tmp_path / "segformer-b0-finetuned")
    result = convert_file(directory)
    assert (result.source_format, result.dropped, result.missing) == ("hf_segformer", [], [])
    assert result.labels == LABELS
    assert result.config["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] == len(LABELS)
    use_mit_eps(hf.segformer)
    backbone = _mit(result.model)
    head = SegFormerHead(backbone.output_shape(), num_classes=5, embed_dim=256, norm="BN")
    head = _into(head, result.model, "sem_seg_head.")
    x = torch.randn(1, 3, *ODD_SIZE)
    with torch.no_grad():
        expected = hf(x).logits
        logits = head.layers(backbone(x))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)

    # the same weights in transformers 5.x's in-memory names, as torch.save(model.state_dict())
    in_memory = tmp_path / "state_dict.pth"
    torch.save(hf.state_dict(), in_memory)
    v5 = convert_file(str(in_memory))
    assert v5.source_format == "hf_segformer_v5"
    assert v5.model.keys() == result.model.keys()
    for name, value in result.model.items():
        assert torch.equal(v5.model[name], value), name


def test_hf_config_json_must_agree_with_the_weights(tmp_path):
    directory = tmp_path / "segformer"
    _save_pretrained(_hf("SegformerForSemanticSegmentation", num_labels=3), directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    for change, message in (
        (
            {"hidden_sizes": [64, 128, 320, 512]},
            r"hidden_sizes \[64, 128, 320, 512\] \(the weights: \[32, 64, 160, 256\]\)",
        ),
        ({"depths": [3, 4, 6, 3]}, r"depths \[3, 4, 6, 3\] \(the weights: \[2, 2, 2, 2\]\)"),
        (
            {"id2label": {str(i): f"c{i}" for i in range(150)}},
            r"len\(id2label\) 150 \(the weights: 3\)",
        ),
        ({"model_type": "swin"}, r"model_type 'swin' \(the weights: 'segformer'\)"),
    ):
        config_path.write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=re.escape(repr(str(config_path))) + ".*" + message):
            convert_file(str(directory))


def test_hf_unplaceable_or_incomplete_keys_raise(tmp_path):
    state = _hf("SegformerModel").state_dict()
    on_disk = {  # the hub's names, as save_pretrained writes them
        **read_checkpoint(_save_pretrained(_hf("SegformerModel"), tmp_path / "m")).obj
    }
    with pytest.raises(
        ValueError, match=r"map to no hila_d2 parameter: 'encoder\.block\.0\.0\.extra\.weight'"
    ):
        convert_checkpoint({**on_disk, "encoder.block.0.0.extra.weight": torch.zeros(1)})
    no_value = {
        k: v for k, v in on_disk.items() if k != "encoder.block.1.0.attention.self.value.weight"
    }
    with pytest.raises(
        ValueError, match=r"'encoder\.block\.1\.0\.attention\.self\.key\.weight' without its value"
    ):
        convert_checkpoint(no_value)
    wrong = {**on_disk, "encoder.block.0.0.mlp.dense1.weight": torch.zeros(3, 3)}
    with pytest.raises(
        ValueError,
        match=r"hf_segformer checkpoint does not fit .* 'encoder\.block\.0\.0\.mlp\.dense1\.weight' -> "
        r"'backbone\.stages\.0\.blocks\.0\.mlp\.fc1\.weight' of shape \(3, 3\)",
    ):
        convert_checkpoint(wrong)
    assert detect_format(state) == "hf_segformer_v5"


# ------------------------------------------------------------------ timm Swin, official Swin


@pytest.fixture(scope="module")
def timm_t():
    """timm's Swin-T (1000-class head.fc) with random weights."""
    return _randomize_(timm_swin("T", num_classes=1000, drop_path_rate=0.0), seed=1)


def _official_layout(state: dict, window: int = 7) -> dict:
    """timm names -> Microsoft's: downsampling at the end of stages 0..2, buffers, head.*."""
    official = {}
    for name, value in state.items():
        name = re.sub(
            r"^layers\.(\d)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", name
        )
        official[name.replace("head.fc.", "head.")] = value
        if name.endswith("relative_position_bias_table"):
            area = window * window
            official[name.replace("bias_table", "index")] = torch.zeros(area, area).long()
    return official


def test_timm_swin_safetensors_matches_timm_and_the_official_file(tmp_path, timm_t):
    path = tmp_path / "model.safetensors"
    save_file(timm_t.state_dict(), str(path))
    result = convert_file(str(path))
    assert (result.source_format, result.variant) == ("timm_swin", "T")
    assert result.config == {"MODEL.HILA_D2_SWIN.VARIANT": "T", "MODEL.HILA_D2_SWIN.WINDOW_SIZE": 7}
    assert result.dropped == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    assert result.missing == sorted(
        f"backbone.norm{i}.{p}" for i in range(4) for p in ("weight", "bias")
    )

    official = convert_checkpoint({"model": _official_layout(timm_t.state_dict())})
    assert official.source_format == "swin_imagenet"
    assert official.model.keys() == result.model.keys()
    for name, value in result.model.items():
        assert torch.equal(official.model[name], value), name

    backbone = SwinTransformerBackbone(variant="T", drop_path_rate=0.0)
    wrapper = nn.Module()
    wrapper.backbone = backbone
    assert (
        sorted(wrapper.load_state_dict(result.model, strict=False).missing_keys) == result.missing
    )
    _randomize_(backbone, seed=2)  # the stage norms too
    backbone.load_state_dict(
        {k[len("backbone.") :]: v for k, v in result.model.items()}, strict=False
    )
    reference = TimmSwinStages(timm_t, [getattr(backbone, f"norm{i}") for i in range(4)]).eval()
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        expected = reference(x)
        outputs = backbone.eval()(x)
    for name, stage in zip(STAGE_NAMES, expected):
        torch.testing.assert_close(outputs[name], stage, atol=1e-4, rtol=0)


def test_swin_22k_and_window_12_files():
    """Official 22k (21841-class head) and 384/window-12 files convert at their own window."""
    timm_12 = timm_swin("T", num_classes=21841, window_size=12, img_size=384)
    state = timm_12.state_dict()
    for checkpoint, source_format, head in (
        (
            {"model": _official_layout(state, window=12)},
            "swin_imagenet",
            ["head.bias", "head.weight"],
        ),
        (state, "timm_swin", ["head.fc.bias", "head.fc.weight"]),
    ):
        result = convert_checkpoint(checkpoint)
        assert result.source_format == source_format
        assert result.config["MODEL.HILA_D2_SWIN.WINDOW_SIZE"] == 12
        assert set(head) <= set(result.dropped)
        table = result.model["backbone.layers.0.blocks.0.attn.relative_position_bias_table"]
        assert table.shape == (23 * 23, 3)
        assert (
            convert_checkpoint(checkpoint, window_size=7).config["MODEL.HILA_D2_SWIN.WINDOW_SIZE"]
            == 7
        )


# ------------------------------------------------------------------ timm pvt_v2


def _pvt_v2(**kwargs) -> nn.Module:
    from timm.models.pvt_v2 import PyramidVisionTransformerV2

    kwargs = {
        "depths": (2, 2, 2, 2),
        "embed_dims": (32, 64, 160, 256),
        "num_heads": (1, 2, 5, 8),
        **kwargs,
    }
    return PyramidVisionTransformerV2(**kwargs)


def test_timm_pvt_v2_converts_where_it_is_a_mit(tmp_path):
    pvt = _randomize_(_pvt_v2(mlp_ratios=(4, 4, 4, 4)))
    path = tmp_path / "pvt_v2_b0.safetensors"
    save_file(pvt.state_dict(), str(path))
    result = convert_file(str(path))
    assert (result.source_format, result.variant) == ("timm_pvt_v2", "B0")
    assert result.dropped == ["head.bias", "head.weight"]
    ours = _mit(result.model)
    x = torch.randn(1, 3, *ODD_SIZE)
    with torch.no_grad():
        expected = pvt.forward_intermediates(x, intermediates_only=True)
        outputs = ours(x)
    for name, stage in zip(STAGE_NAMES, expected):
        torch.testing.assert_close(outputs[name], stage, atol=1e-4, rtol=0)

    with pytest.raises(ValueError, match=r"MLP ratios \(8, 8, 4, 4\).*PVTv2.*not a MiT"):
        convert_checkpoint(_pvt_v2(mlp_ratios=(8, 8, 4, 4)).state_dict())
    with pytest.raises(ValueError, match=r"linear-attention PVTv2.*not a MiT"):
        convert_checkpoint(_pvt_v2(mlp_ratios=(8, 8, 4, 4), linear=True).state_dict())


# ------------------------------------------------------------------ readers


def test_file_readers(tmp_path):
    hf = _hf("SegformerModel")
    reference = convert_checkpoint(hf.state_dict()).model
    on_disk = read_checkpoint(_save_pretrained(hf, tmp_path / "hub")).obj
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    torch.save(on_disk, bin_dir / "pytorch_model.bin")
    pth, pkl = tmp_path / "mit.pth", tmp_path / "mit.pkl"
    torch.save({"state_dict": on_disk}, pth)
    pkl.write_bytes(pickle.dumps({k: v.numpy() for k, v in on_disk.items()}))
    for path in (
        bin_dir,
        bin_dir / "pytorch_model.bin",
        pth,
        pkl,
        tmp_path / "hub" / "model.safetensors",
    ):
        result = convert_file(str(path))
        assert result.model.keys() == reference.keys(), path
        for name, value in reference.items():
            assert torch.equal(result.model[name], value), (path, name)

    truncated = tmp_path / "cut" / "model.safetensors"
    truncated.parent.mkdir()
    data = (tmp_path / "hub" / "model.safetensors").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError,
        match=rf"cannot read '{re.escape(str(truncated))}' as a safetensors file.*truncated",
    ):
        convert_file(str(truncated))
    with pytest.raises(ValueError, match=r"a model directory holds config.json"):
        read_checkpoint(str(tmp_path / "cut"))


# ------------------------------------------------------------------ MODEL.WEIGHTS


CONFIG = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"


def _segformer(*opts) -> nn.Module:
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(load_config(CONFIG, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150, *opts))


def test_validating_checkpointer_converts_any_source_on_load(tmp_path, timm_t, caplog):
    hf = _hf("SegformerForSemanticSegmentation", num_labels=150)
    directory = _save_pretrained(hf, tmp_path / "ade")
    expected = convert_file(directory).model
    for path in (directory, f"{directory}/model.safetensors"):
        model = _segformer()
        with caplog.at_level("INFO"):
            ValidatingCheckpointer(model).load(path)
        assert "source format: hf_segformer" in caplog.text
        loaded = model.state_dict()
        for name, value in expected.items():
            assert torch.equal(loaded[name], value), name

    # encoder-only weights initialise, the head keeps its initialisation
    encoder = tmp_path / "mit.safetensors"
    save_file(_hf("SegformerModel").state_dict(), str(encoder))  # 5.x in-memory names
    ValidatingCheckpointer(_segformer(), optional_keys=["sem_seg_head.*"]).load(str(encoder))

    # an official Swin file into a model of another window: tables resized to the model's
    backbone = nn.Module()
    backbone.backbone = SwinTransformerBackbone(variant="T", window_size=12, out_features=["res5"])
    official = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": _official_layout(timm_t.state_dict())}, official)
    ValidatingCheckpointer(backbone, optional_keys=["backbone.norm*"]).load(str(official))
    assert backbone.backbone.layers[0].blocks[0].attn.relative_position_bias_table.shape == (529, 3)


def test_validating_checkpointer_refuses_bad_sources(tmp_path):
    model = _segformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    b1 = _save_pretrained(
        _hf("SegformerForSemanticSegmentation", "B1", num_labels=150), tmp_path / "b1"
    )
    with pytest.raises(
        CheckpointError,
        match=r"(?s)'.*b1' does not fit.*converted from hf_segformer and fits a model of MODEL.MIT.VARIANT B1",
    ):
        ValidatingCheckpointer(model).load(b1)
    truncated = tmp_path / "model.safetensors"
    data = (tmp_path / "b1" / "model.safetensors").read_bytes()
    truncated.write_bytes(data[:1000])
    with pytest.raises(
        CheckpointError, match=rf"cannot read '{re.escape(str(truncated))}' as a safetensors file"
    ):
        ValidatingCheckpointer(model).load(str(truncated))
    unknown = tmp_path / "unknown.safetensors"
    save_file({"layers.0.weight": torch.zeros(2)}, str(unknown))
    with pytest.raises(CheckpointError, match=r"unknown\.safetensors'.*Unknown checkpoint layout"):
        ValidatingCheckpointer(model).load(str(unknown))
    config = json.loads((tmp_path / "b1" / "config.json").read_text())
    (tmp_path / "b1" / "config.json").write_text(
        json.dumps({**config, "hidden_sizes": [32, 64, 160, 256]})
    )
    with pytest.raises(CheckpointError, match=r"config\.json' disagrees with the weights"):
        ValidatingCheckpointer(model).load(b1)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


# ------------------------------------------------------------------ the CLI report


def test_cli_reports_new_formats(tmp_path, timm_t, capsys):
    cli = load_script("tools/convert_pretrained.py")
    hf_dir = _save_pretrained(
        _hf(
            "SegformerForSemanticSegmentation",
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
        ),
        tmp_path / "segformer",
    )
    swin = tmp_path / "swin" / "model.safetensors"
    swin.parent.mkdir()
    save_file(timm_t.state_dict(), str(swin))
    (swin.parent / "config.json").write_text(
        json.dumps({"architecture": "swin_tiny_patch4_window7_224", "num_classes": 1000})
    )
    cli.main([hf_dir, str(tmp_path / "segformer.pkl")])
    out = capsys.readouterr().out
    assert "source format: hf_segformer\nvariant: B0\n" in out
    assert "class names (5, config.json id2label): wall, sky, road, tree, car" in out
    cli.main([str(swin), str(tmp_path / "swin.pkl")])
    out = capsys.readouterr().out
    assert "source format: timm_swin\nvariant: T\n" in out
    assert "dropped source keys (4):\n  head.fc.bias\n" in out
    (swin.parent / "config.json").write_text(
        json.dumps({"architecture": "swin_base_patch4_window12_384"})
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(swin), str(tmp_path / "other.pkl")])
    assert "is Swin-B, the weights Swin-T" in str(exit_info.value.code)
    assert "has window 12, the weights' relative position tables window 7" in str(
        exit_info.value.code
    )


def test_validating_checkpointer_names_fpn_encoders(tmp_path):
    """A MiT file named in MODEL.WEIGHTS of an FPN model lands in backbone.bottom_up."""
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bottom_up = MixVisionTransformer(variant="B0")
    hf = _hf("SegformerModel")
    path = _save_pretrained(hf, tmp_path / "mit-b0")
    ValidatingCheckpointer(model).load(path)
    expected = convert_file(path).model
    loaded = model.state_dict()
    for name, value in expected.items():
        assert torch.equal(loaded["backbone.bottom_up." + name[len("backbone.") :]], value), name
