"""Weights as users get them (G2), on random weights saved locally (no downloads): transformers
Segformer saved with ``save_pretrained`` (hub names) or as 5.x in-memory names, timm Swin and
pvt_v2 as safetensors, official Swin 22k and 384/window-12 files; the file readers (.safetensors,
.bin, .pth, .pkl, a model directory), config.json checks, ``ValidatingCheckpointer`` converting
any of them on load, the CLI report, and the class names of config.json's id2label travelling to
the checkpointer, the datasets' metadata, train_net's evaluation and the demo."""

import json
import logging
import pickle
import re
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from PIL import Image
from project_config import REPO, load_config, load_script, load_train_net
from safetensors.torch import save_file
from torch import nn

from benchmarks.references import TimmSwinStages, hf_segformer_config, timm_swin, use_mit_eps
from hila_d2.checkpoint import convert as convert_module
from hila_d2.checkpoint.convert import convert_checkpoint, convert_swin, detect_format
from hila_d2.checkpoint.files import CLASS_NAMES, convert_file, read_checkpoint
from hila_d2.checkpoint.loading import CheckpointError, ValidatingCheckpointer
from hila_d2.data.metadata import set_class_names
from hila_d2.modeling.backbone.mit import STAGE_NAMES, MixVisionTransformer
from hila_d2.modeling.backbone.swin import SwinTransformerBackbone
from hila_d2.modeling.heads.segformer_head import SegFormerHead

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


def _hf_labelled() -> nn.Module:
    """transformers' SegformerForSemanticSegmentation (B0) whose config names ``LABELS``."""
    return _hf(
        "SegformerForSemanticSegmentation",
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )


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
    hf = _hf_labelled()
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
    assert detect_format(state).name == "hf_segformer_v5"


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


def _record_detections(monkeypatch) -> list:
    """The formats that ``detect_format`` returns from now on, called from any module of
    ``hila_d2.checkpoint`` (each one that imported it gets a recording copy)."""
    original, detected = convert_module.detect_format, []

    def recording(obj):
        detected.append(original(obj))
        return detected[-1]

    for name, module in list(sys.modules.items()):
        if name.startswith("hila_d2.checkpoint") and vars(module).get("detect_format") is original:
            monkeypatch.setattr(module, "detect_format", recording)
    return detected


def test_each_conversion_detects_the_format_once(tmp_path, timm_t, monkeypatch):
    """From every entry point (a file, the CLI, MODEL.WEIGHTS, a family's converter, a Swin
    window resize) the format is detected once and handed to its converter."""
    hf = _hf("SegformerForSemanticSegmentation", num_labels=150)
    hf_dir = _save_pretrained(hf, tmp_path / "ade")
    swin = {"model": _official_layout(timm_t.state_dict())}
    cli = load_script("tools/convert_pretrained.py")
    model = _segformer()
    conversions = {
        "convert_file": (lambda: convert_file(hf_dir), "hf_segformer"),
        "CLI": (lambda: cli.main([hf_dir, str(tmp_path / "out.pkl")]), "hf_segformer"),
        "MODEL.WEIGHTS": (lambda: ValidatingCheckpointer(model).load(hf_dir), "hf_segformer"),
        "convert_checkpoint": (lambda: convert_checkpoint(swin, window_size=12), "swin_imagenet"),
        "convert_swin": (lambda: convert_swin(swin), "swin_imagenet"),
    }
    detected = _record_detections(monkeypatch)
    for entry, (convert, source_format) in conversions.items():
        detected.clear()
        convert()
        assert [source.name for source in detected] == [source_format], entry


# ------------------------------------------------------------------ the CLI report


def test_cli_reports_new_formats(tmp_path, timm_t, capsys):
    cli = load_script("tools/convert_pretrained.py")
    hf_dir = _save_pretrained(_hf_labelled(), tmp_path / "segformer")
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


# ------------------------------------------------------------------ class names (id2label)


def test_class_names_travel_with_the_weights(tmp_path):
    """config.json's id2label -> converted .pkl/.pth -> the checkpointer -> a run's checkpoints."""
    hub = _save_pretrained(_hf_labelled(), tmp_path / "segformer")
    model = _segformer("MODEL.SEM_SEG_HEAD.NUM_CLASSES", len(LABELS))
    converted = [str(tmp_path / "segformer.pkl"), str(tmp_path / "segformer.pth")]
    cli = load_script("tools/convert_pretrained.py")
    for dst in converted:
        cli.main([hub, dst])
        # detectron2's own checkpointer loads the file and returns the names as extra data
        assert DetectionCheckpointer(model).load(dst)[CLASS_NAMES] == LABELS
    for path in (hub, *converted):  # MODEL.WEIGHTS: a hub directory or a converted file
        checkpointer = ValidatingCheckpointer(model)
        assert checkpointer.load(path)[CLASS_NAMES] == LABELS
        assert checkpointer.class_names == LABELS, path

    run = ValidatingCheckpointer(model, str(tmp_path))
    run.load(hub)
    run.save("model_0000009", iteration=9)  # as the trainer's periodic checkpointer saves
    resumed = ValidatingCheckpointer(model, str(tmp_path))
    assert resumed.resume_or_load("", resume=True)["iteration"] == 9
    assert resumed.class_names == LABELS
    resumed.load("")  # no weights (the model keeps its initialisation): no names
    assert resumed.class_names is None  # the names of the last load, not of an earlier one


def test_class_names_of_another_count_are_refused_unless_the_head_is_new(tmp_path):
    source = _randomize_(_segformer())  # 150 classes
    path = tmp_path / "ade.pth"
    torch.save({"model": source.state_dict(), CLASS_NAMES: LABELS}, path)
    model = _segformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        CheckpointError,
        match=rf"'{re.escape(str(path))}' names 5 classes .* have 150: the names do not belong",
    ):
        ValidatingCheckpointer(model).load(str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # refused: nothing loaded
    torch.save({"model": source.state_dict(), CLASS_NAMES: "wall, sky"}, path)
    with pytest.raises(CheckpointError, match=r"entry that is not a list of class names"):
        ValidatingCheckpointer(model).load(str(path))

    # 5-class hub weights initialising a 150-class model: the new head has no names
    hub = _save_pretrained(_hf_labelled(), tmp_path / "segformer")
    checkpointer = ValidatingCheckpointer(model, optional_keys=["sem_seg_head.*"])
    checkpointer.load(hub)
    assert checkpointer.class_names is None
    predictor = "sem_seg_head.predictor.weight"
    assert torch.equal(model.state_dict()[predictor], before[predictor])  # the head is new


@pytest.fixture
def datasets():
    """Registers metadata-only datasets ``name -> stuff_classes or None``; removes them after."""
    names = []

    def register(name, stuff_classes=None):
        names.append(name)
        if stuff_classes is not None:
            MetadataCatalog.get(name).set(stuff_classes=stuff_classes)
        return name

    yield register
    for name in names:
        MetadataCatalog.remove(name)
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)


def test_set_class_names(datasets):
    unnamed = datasets("names_unnamed")
    set_class_names(unnamed, LABELS, "w.pkl")
    assert MetadataCatalog.get(unnamed).stuff_classes == LABELS

    own = ["wall", "sky", "street", "tree", "automobile"]
    named = datasets("names_named", own)
    # the records of set_class_names' own logger, whatever handlers earlier tests (train_net's
    # setup_logger) left on its parents
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("hila_d2.data.metadata")
    logger.addHandler(handler)
    try:
        set_class_names(named, LABELS, "w.pkl")
        set_class_names(datasets("names_same", LABELS), LABELS, "w.pkl")  # no warning
    finally:
        logger.removeHandler(handler)
    assert MetadataCatalog.get(named).stuff_classes == own  # the dataset's names win
    [warning] = [record.getMessage() for record in records]
    assert "'w.pkl' name 2 of the 5 classes of 'names_named' differently" in warning
    assert "2: 'street' / 'road', 4: 'automobile' / 'car'; keeping the dataset's" in warning

    with pytest.raises(ValueError, match=r"'names_other' has 7 classes .* weights 'w\.pkl' name 5"):
        set_class_names(datasets("names_other", ["c"] * 7), LABELS, "w.pkl")


def _tiny_sem_seg(folder, name: str) -> str:
    """Registers ``name``: 2 random 32x48 images, labels 0..4, evaluator ``sem_seg``, metadata
    without ``stuff_classes``."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(2):
        image, gt = folder / f"image_{i}.png", folder / f"gt_{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(image)
        Image.fromarray(rng.integers(0, len(LABELS), (32, 48), dtype=np.uint8)).save(gt)
        records.append(
            {"file_name": str(image), "sem_seg_file_name": str(gt), "height": 32, "width": 48}
        )
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(evaluator_type="sem_seg", ignore_label=255)
    return name


@pytest.mark.slow
def test_train_net_reports_iou_by_the_hub_class_names(tmp_path, datasets):
    """Training from a hub directory and evaluating its model_final.pth, on datasets whose
    metadata names no classes: SemSegEvaluator's per-class rows carry config.json's names."""
    train_net = load_train_net()
    hub = _save_pretrained(_hf_labelled(), tmp_path / "segformer")
    expected = [f"IoU-{n}" for n in LABELS]

    def run(output: str, dataset: str, *opts: str):
        args = ["--config-file", str(REPO / CONFIG), *opts, "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
                str(len(LABELS)), "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST",
                f"('{dataset}',)", "INPUT.MIN_SIZE_TEST", "32", "DATALOADER.NUM_WORKERS", "0",
                "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / output)]
        return train_net.main(default_argument_parser().parse_args(args))

    trained = datasets(_tiny_sem_seg(tmp_path / "train", "names_train"))
    run("run", trained, "MODEL.WEIGHTS", hub, "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2")
    assert MetadataCatalog.get(trained).stuff_classes == LABELS
    evaluation = tmp_path / "run" / "inference" / "sem_seg_evaluation.pth"
    evaluated = torch.load(evaluation, weights_only=False)  # numpy scalars
    assert [k for k in evaluated if k.startswith("IoU-")] == expected
    final = str(tmp_path / "run" / "model_final.pth")
    assert torch.load(final, weights_only=True)[CLASS_NAMES] == LABELS  # the trainer's save

    unnamed = datasets(_tiny_sem_seg(tmp_path / "eval", "names_eval"))
    results = run("eval", unnamed, "--eval-only", "MODEL.WEIGHTS", final)
    assert [k for k in results["sem_seg"] if k.startswith("IoU-")] == expected


def test_demo_draws_the_hub_class_names(tmp_path, monkeypatch):
    from project_config import recording_demo

    run_demo, drawn_with = recording_demo(monkeypatch, tmp_path, CONFIG, len(LABELS))
    run_demo("MODEL.WEIGHTS", _save_pretrained(_hf_labelled(), tmp_path / "segformer"))
    assert [m.stuff_classes for m in drawn_with] == [LABELS]
    assert (tmp_path / "vis.png").is_file()
    with pytest.raises(ValueError, match="DATASETS.TEST is empty and MODEL.WEIGHTS names no"):
        run_demo()  # random weights name no classes
