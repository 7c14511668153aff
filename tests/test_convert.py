"""hila_d2.checkpoint.convert and tools/convert_pretrained.py on random checkpoints in the
official SegFormer layouts (no downloads): the MiT ImageNet file and the trained mmseg file."""

import dataclasses
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from project_config import REPO, load_config, load_script

from hila_d2.checkpoint.convert import (
    FORMATS,
    SUPPORTED_FORMATS,
    check_keys,
    convert_checkpoint,
    convert_segformer,
    detect_format,
    segformer_shapes,
)

SCRIPT = REPO / "tools" / "convert_pretrained.py"
CONFIG = "configs/ade20k/semantic-segmentation/segformer_mit_{}_bs16_160k.yaml"
NUM_CLASSES = 7
# hila_d2 name -> official name; written independently of the converter (which uses timm's renaming)
_TO_OFFICIAL = (
    (r"^backbone\.patch_embed\.", lambda m: "patch_embed1."),
    (r"^backbone\.stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}."),
    (r"^backbone\.stages\.(\d)\.blocks\.", lambda m: f"block{int(m[1]) + 1}."),
    (r"^backbone\.stages\.(\d)\.norm\.", lambda m: f"norm{int(m[1]) + 1}."),
    (r"\.mlp\.dwconv\.", lambda m: ".mlp.dwconv.dwconv."),
    (r"^sem_seg_head\.embeds\.(\d)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}.proj."),
    (r"^sem_seg_head\.fuse\.weight$", lambda m: "decode_head.linear_fuse.conv.weight"),
    (r"^sem_seg_head\.fuse\.norm\.", lambda m: "decode_head.linear_fuse.bn."),
    (r"^sem_seg_head\.predictor\.", lambda m: "decode_head.linear_pred."),
)
# hand-written official -> hila_d2 pairs (present in every variant)
SPOT_CHECKS = {
    "patch_embed1.proj.weight": "backbone.patch_embed.proj.weight",
    "patch_embed3.norm.bias": "backbone.stages.2.downsample.norm.bias",
    "block2.1.attn.kv.weight": "backbone.stages.1.blocks.1.attn.kv.weight",
    "block1.0.attn.sr.weight": "backbone.stages.0.blocks.0.attn.sr.weight",
    "block1.1.attn.norm.weight": "backbone.stages.0.blocks.1.attn.norm.weight",
    "block4.1.mlp.dwconv.dwconv.weight": "backbone.stages.3.blocks.1.mlp.dwconv.weight",
    "norm4.weight": "backbone.stages.3.norm.weight",
}
HEAD_SPOT_CHECKS = {
    "decode_head.linear_c1.proj.weight": "sem_seg_head.embeds.0.weight",
    "decode_head.linear_c4.proj.bias": "sem_seg_head.embeds.3.bias",
    "decode_head.linear_fuse.conv.weight": "sem_seg_head.fuse.weight",
    "decode_head.linear_fuse.bn.running_var": "sem_seg_head.fuse.norm.running_var",
    "decode_head.linear_pred.weight": "sem_seg_head.predictor.weight",
}


def build_segformer(variant: str) -> torch.nn.Module:
    """The project's ADE20K SemanticSegmentor for MiT ``variant`` on CPU, BN, NUM_CLASSES classes."""
    cfg = load_config(CONFIG.format(variant.lower()), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", NUM_CLASSES)
    return build_model(cfg).eval()


def official_name(name: str, layout: str) -> str:
    for pattern, replace in _TO_OFFICIAL:
        name = re.sub(pattern, replace, name)
    return name if layout == "imagenet" or name.startswith("decode_head.") else "backbone." + name


def random_official(model: torch.nn.Module, layout: str):
    """A random checkpoint in the official ``layout`` ("imagenet" or "trained") with the shapes of
    ``model``, and {official key: hila_d2 name} of its converted entries."""
    generator = torch.Generator().manual_seed(0)
    state, names = {}, {}
    for name, value in model.state_dict().items():
        if layout == "imagenet" and name.startswith("sem_seg_head."):
            continue
        key = official_name(name, layout)
        names[key] = name
        if value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=generator)
        else:
            state[key] = torch.randint(1, 1000, value.shape, generator=generator)
    if layout == "imagenet":
        channels = state["norm4.weight"].shape[0]
        state["head.weight"] = torch.randn(1000, channels, generator=generator)
        state["head.bias"] = torch.randn(1000, generator=generator)
        return state, names
    embed_dim = state["decode_head.linear_pred.weight"].shape[1]
    state["decode_head.conv_seg.weight"] = torch.randn(
        NUM_CLASSES, embed_dim, 1, 1, generator=generator
    )
    state["decode_head.conv_seg.bias"] = torch.randn(NUM_CLASSES, generator=generator)
    return {"state_dict": state, "meta": {"iter": 160000, "CLASSES": ("wall", "sky")}}, names


@pytest.mark.parametrize("variant", ["B0", "B2"])
@pytest.mark.parametrize("layout", ["imagenet", "trained"])
def test_convert_segformer(variant, layout):
    model = build_segformer(variant)
    checkpoint, names = random_official(model, layout)
    state = checkpoint if layout == "imagenet" else checkpoint["state_dict"]
    assert detect_format(checkpoint).name == f"segformer_{layout}"

    result = convert_checkpoint(checkpoint)
    assert (result.source_format, result.variant) == (f"segformer_{layout}", variant)
    assert set(result.model) == set(names.values())
    for key, name in names.items():
        assert torch.equal(result.model[name], state[key]), (key, name)
    spot_checks = (
        SPOT_CHECKS
        if layout == "imagenet"
        else {
            **{"backbone." + k: v for k, v in SPOT_CHECKS.items()},
            **HEAD_SPOT_CHECKS,
        }
    )
    for key, name in spot_checks.items():
        assert torch.equal(result.model[name], state[key]), (key, name)

    head_keys = sorted(k for k in model.state_dict() if k.startswith("sem_seg_head."))
    if layout == "imagenet":
        assert result.dropped == ["head.bias", "head.weight"]
        assert result.missing == head_keys
    else:
        assert result.dropped == ["decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
        assert result.missing == []

    incompatible = model.load_state_dict(result.model, strict=False)
    assert incompatible.unexpected_keys == []
    # torch fills a missing BatchNorm num_batches_tracked itself and does not report it
    assert sorted(incompatible.missing_keys) == [
        k for k in result.missing if not k.endswith("num_batches_tracked")
    ]
    loaded = model.state_dict()
    for name, value in result.model.items():
        assert torch.equal(loaded[name], value), name


def test_check_keys_reports_sorted_lists():
    expected = segformer_shapes("B0", num_classes=NUM_CLASSES)
    produced = {name: torch.zeros(shape) for name, shape in expected.items()}
    del produced["sem_seg_head.fuse.weight"]
    produced["sem_seg_head.extra.b"] = produced["sem_seg_head.extra.a"] = torch.zeros(1)
    produced["backbone.stages.3.norm.weight"] = torch.zeros(3)
    report = check_keys(produced, expected)
    assert report.missing == ["sem_seg_head.fuse.weight"]
    assert report.unexpected == ["sem_seg_head.extra.a", "sem_seg_head.extra.b"]
    assert report.mismatched == ["backbone.stages.3.norm.weight"]


def _b0_imagenet():
    return random_official(build_segformer("B0"), "imagenet")[0]


def test_unknown_layout_raises():
    for obj in ({"model": {"layers.0.blocks.0.attn.qkv.weight": torch.zeros(3)}}, torch.zeros(3)):
        with pytest.raises(ValueError, match="Unknown checkpoint layout") as error:
            convert_checkpoint(obj)
        for name in SUPPORTED_FORMATS:
            assert name in str(error.value)
    with pytest.raises(ValueError, match=r"found a dict with 1 key\(s\): 'model'"):
        detect_format({"model": {}})


def test_formats_are_one_immutable_table():
    assert SUPPORTED_FORMATS == tuple(source.name for source in FORMATS)
    assert len(set(SUPPORTED_FORMATS)) == len(FORMATS) == 11
    with pytest.raises(TypeError):
        FORMATS[0] = FORMATS[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        FORMATS[0].dropped = ".*"
    with pytest.raises(TypeError):
        FORMATS[0].markers[0] = "*"
    assert detect_format(_b0_imagenet()) is FORMATS[SUPPORTED_FORMATS.index("segformer_imagenet")]


def test_unmapped_or_malformed_keys_raise():
    state = _b0_imagenet()
    with pytest.raises(ValueError, match=r"'block1\.0\.attn\.extra\.weight' -> "):
        convert_segformer({**state, "block1.0.attn.extra.weight": torch.zeros(1)})
    with pytest.raises(
        ValueError,
        match=r"'block1\.0\.mlp\.fc1\.weight' -> .* of shape \(3, 3\), expected \(128, 32\)",
    ):
        convert_segformer({**state, "block1.0.mlp.fc1.weight": torch.zeros(3, 3)})
    shallow = {k: v for k, v in state.items() if not k.startswith("block4.1.")}
    with pytest.raises(ValueError, match=r"No MiT variant has depths \(2, 2, 2, 1\)"):
        convert_segformer(shallow)

    trained, _ = random_official(build_segformer("B0"), "trained")
    trained["state_dict"]["auxiliary_head.conv.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"map to no hila_d2 parameter: 'auxiliary_head\.conv\.weight'"
    ):
        convert_checkpoint(trained)


@pytest.fixture(scope="module")
def cli():
    """tools/convert_pretrained.py as a module."""
    return load_script("tools/convert_pretrained.py")


def _save_random_b0(tmp_path, layout: str):
    """(model, path of a saved random official B0 checkpoint, {hila_d2 name: its tensor})."""
    model = build_segformer("B0")
    checkpoint, names = random_official(model, layout)
    state = checkpoint if layout == "imagenet" else checkpoint["state_dict"]
    src = tmp_path / "official.pth"
    torch.save(checkpoint, src)
    return model, src, {name: state[key] for key, name in names.items()}


def _assert_loads(model: torch.nn.Module, path: Path, expected: dict) -> None:
    DetectionCheckpointer(model).load(str(path))
    loaded = model.state_dict()
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name


@pytest.mark.slow
def test_cli_subprocess_round_trip(tmp_path):
    """The script as users run it, from another directory: trained B0 -> .pkl -> MODEL.WEIGHTS."""
    model, src, expected = _save_random_b0(tmp_path, "trained")
    dst = tmp_path / "out" / "converted.pkl"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(src), str(dst)], capture_output=True, text=True, cwd="/"
    )
    assert run.returncode == 0, run.stderr
    assert "source format: segformer_trained\nvariant: B0\n" in run.stdout
    assert (
        "dropped source keys (2):\n  decode_head.conv_seg.bias\n  decode_head.conv_seg.weight\n"
        in run.stdout
    )
    assert "missing model keys (0)\n" in run.stdout
    with open(dst, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "hila_d2 convert_pretrained (segformer_trained)"
    assert data["matching_heuristics"] is False
    _assert_loads(model, dst, expected)


def test_cli_imagenet_to_pth(tmp_path, cli, capsys):
    model, src, expected = _save_random_b0(tmp_path, "imagenet")
    dst = tmp_path / "converted.pth"
    cli.main([str(src), str(dst)])
    stdout = capsys.readouterr().out
    assert "source format: segformer_imagenet\nvariant: B0\n" in stdout
    assert "dropped source keys (2):\n  head.bias\n  head.weight\n" in stdout
    assert "missing model keys (16) [the decode head: not in this checkpoint" in stdout
    _assert_loads(model, dst, expected)


def test_cli_errors(tmp_path, cli):
    truncated, unknown = tmp_path / "truncated.pth", tmp_path / "unknown.pth"
    torch.save(_b0_imagenet(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    torch.save({"model": {"layers.0.blocks.0.attn.qkv.weight": torch.zeros(3)}}, unknown)
    dst = tmp_path / "out.pkl"
    for src, message in (
        (truncated, f"cannot read '{truncated}' as a torch checkpoint"),
        (unknown, f"cannot convert '{unknown}': Unknown checkpoint layout"),
        (tmp_path / "absent.pth", "cannot read"),
    ):
        with pytest.raises(SystemExit) as exit_info:  # sys.exit(message): exit status 1
            cli.main([str(src), str(dst)])
        assert message in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:  # argparse error: exit status 2
        cli.main([str(unknown), str(tmp_path / "out.txt")])
    assert exit_info.value.code == 2
    assert not list(tmp_path.glob("out.*"))
