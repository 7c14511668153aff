"""Weights by hub name (``hf://ORG/REPO[/FILE][@REVISION]``, ``timm://MODEL``), offline: a
Hugging Face cache laid out as huggingface_hub writes it (blobs, snapshots/<commit> symlinks,
refs) under ``tmp_path``, holding a transformers Segformer (two commits), encoder weights as
``pytorch_model.bin`` only, and timm's Swin-T under the hub id of timm's pretrained config, all
random. A name loads, converts and writes exactly what its cached path does; names neither the
hub nor the cache has, and malformed names, raise one error naming the fix."""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from detectron2.utils.file_io import PathManager
from huggingface_hub import constants
from project_config import load_config, load_script
from torch import nn

from benchmarks.references import hf_segformer_config
from hila_d2.checkpoint import hub
from hila_d2.checkpoint.hub import (
    HubPathHandler,
    HubWeightsError,
    HubWeightsNotFoundError,
    register_hub_handler,
)
from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.modeling.backbone.swin import SwinTransformerBackbone

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

CONFIG = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
LABELS = ["wall", "sky", "road", "tree", "car"]
SEGFORMER = "test-org/segformer-b0"  # commit MAIN on refs/main, commit V2 on refs/v2
ENCODER_BIN = "test-org/mit-b0-bin"  # config.json + pytorch_model.bin only
TIMM_NAME = "swin_tiny_patch4_window7_224"
PATCH_EMBED = "backbone.patch_embed.proj.weight"  # MiT's and Swin's first weight
MAIN, V2, BIN, TIMM = (hashlib.sha1(n.encode()).hexdigest() for n in ("main", "v2", "bin", "timm"))


def _cache_snapshot(cache: Path, repo_id: str, commit: str, files: dict, refs=()) -> Path:
    """Moves ``files`` (name in the repository -> local file) into the hub cache ``cache`` as
    huggingface_hub lays out a download: the content in blobs/<sha256>, snapshots/<commit>/<name>
    a relative symlink to it, refs/<ref> holding the commit; the snapshot directory."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        blob = repo / "blobs" / hashlib.sha256(Path(source).read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def _segformer_files(directory: Path, seed: int) -> dict:
    """transformers' SegformerForSemanticSegmentation (B0, ``LABELS``), random, as
    ``save_pretrained`` writes it."""
    torch.manual_seed(seed)
    config = hf_segformer_config(
        "B0",
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(str(directory))
    return {name: directory / name for name in ("config.json", "model.safetensors")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    cache = root / "hub"
    _cache_snapshot(cache, SEGFORMER, MAIN, _segformer_files(root / "main", 0), ["main"])
    _cache_snapshot(cache, SEGFORMER, V2, _segformer_files(root / "v2", 1), ["v2"])

    torch.manual_seed(2)  # encoder weights, hub names, as pytorch_model.bin only
    encoder = root / "bin"
    transformers.SegformerModel(hf_segformer_config("B0")).save_pretrained(str(encoder))
    from safetensors.torch import load_file

    torch.save(load_file(str(encoder / "model.safetensors")), encoder / "pytorch_model.bin")
    bin_files = {n: encoder / n for n in ("config.json", "pytorch_model.bin")}
    _cache_snapshot(cache, ENCODER_BIN, BIN, bin_files, ["main"])

    # timm's Swin-T under the hub id of its pretrained config, with a config.json as timm writes
    from safetensors.torch import save_file

    swin = timm.create_model(TIMM_NAME, pretrained=False)
    (root / "timm").mkdir()
    save_file(swin.state_dict(), str(root / "timm" / "model.safetensors"))
    (root / "timm" / "config.json").write_text(
        json.dumps(
            {
                "architecture": TIMM_NAME,
                "num_classes": 1000,
                "num_features": 768,
                "global_pool": "avg",
                "pretrained_cfg": {"tag": "ms_in1k", "input_size": [3, 224, 224]},
            }
        )
    )
    timm_files = {n: root / "timm" / n for n in ("config.json", "model.safetensors")}
    _cache_snapshot(cache, _timm_repo(), TIMM, timm_files, ["main"])
    return cache


def _timm_repo() -> str:
    return timm.models.get_pretrained_cfg(TIMM_NAME).hf_hub_id.partition("@")[0]


@pytest.fixture(autouse=True)
def offline(cache, monkeypatch):
    """The hub cache of ``cache``, offline, as the environment and huggingface_hub's constants
    (read at its import) name them."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _snapshot(cache: Path, repo_id: str, commit: str) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit


@pytest.fixture(scope="module")
def segformer():
    """The project's SegFormer MiT-B0 (5 classes) and its initial state."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", len(LABELS)))
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def swin():
    """A Swin-T backbone as a segmentor holds it (stage norms not in timm's weights)."""
    model = nn.Module()
    model.backbone = SwinTransformerBackbone(variant="T", drop_path_rate=0.0)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _load(built, weights, **kwargs) -> tuple:
    """The state of ``built``'s model after ``ValidatingCheckpointer.load(weights)`` from its
    initial state; the checkpointer's class names."""
    model, initial = built
    model.load_state_dict(initial)
    checkpointer = ValidatingCheckpointer(model, **kwargs)
    checkpointer.load(str(weights))
    return {k: v.clone() for k, v in model.state_dict().items()}, checkpointer.class_names


def _assert_same(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


def test_hf_names_load_as_their_paths(cache, segformer):
    main, v2 = _snapshot(cache, SEGFORMER, MAIN), _snapshot(cache, SEGFORMER, V2)
    by_path = {path: _load(segformer, path) for path in (main, v2)}
    for state, names in by_path.values():  # the weights replace the initialisation
        assert names == LABELS
        assert all(not torch.equal(state[k], v) for k, v in segformer[1].items() if v.dim() > 1)
    assert any(not torch.equal(by_path[main][0][k], v) for k, v in by_path[v2][0].items())
    for name, path in (
        (f"hf://{SEGFORMER}", main),
        (f"hf://{SEGFORMER}/", main),
        (f"hf://{SEGFORMER}@main", main),
        (f"hf://{SEGFORMER}@v2", v2),
        (f"hf://{SEGFORMER}@{V2}", v2),
        (f"hf://{SEGFORMER}/model.safetensors", main),
        (f"hf://{SEGFORMER}/model.safetensors@v2", v2),
    ):
        state, names = _load(segformer, name)
        _assert_same(state, by_path[path][0])
        assert names == LABELS, name

    # a repository with pytorch_model.bin only (encoder weights: the head keeps its init)
    encoder = _snapshot(cache, ENCODER_BIN, BIN)
    head = {"optional_keys": ["sem_seg_head.*"]}
    expected = _load(segformer, encoder, **head)[0]
    assert not torch.equal(expected[PATCH_EMBED], segformer[1][PATCH_EMBED])
    _assert_same(_load(segformer, f"hf://{ENCODER_BIN}", **head)[0], expected)


def test_timm_names_load_as_their_path(cache, swin):
    snapshot = _snapshot(cache, _timm_repo(), TIMM)
    norms = {"optional_keys": ["backbone.norm*"]}
    expected, _ = _load(swin, snapshot, **norms)
    assert not torch.equal(expected[PATCH_EMBED], swin[1][PATCH_EMBED])
    tag = timm.models.get_pretrained_cfg(TIMM_NAME).tag
    for name in (f"timm://{TIMM_NAME}", f"timm://{TIMM_NAME}.{tag}"):
        _assert_same(_load(swin, name, **norms)[0], expected)
    assert PathManager.get_local_path(f"timm://{TIMM_NAME}") == str(snapshot)


def test_path_manager_serves_hub_names(cache):
    main = _snapshot(cache, SEGFORMER, MAIN)
    assert PathManager.get_local_path(f"hf://{SEGFORMER}") == str(main)
    weights = f"hf://{SEGFORMER}/model.safetensors"
    assert PathManager.get_local_path(weights) == str(main / "model.safetensors")
    assert PathManager.isdir(f"hf://{SEGFORMER}") and not PathManager.isfile(f"hf://{SEGFORMER}")
    assert PathManager.isfile(weights) and PathManager.exists(weights)
    assert not PathManager.exists(f"hf://{SEGFORMER}/missing.pth")
    assert not PathManager.exists("hf://onlyorg")
    with PathManager.open(f"hf://{SEGFORMER}/config.json") as f:
        assert json.load(f)["model_type"] == "segformer"
    with pytest.raises(IsADirectoryError, match="names a repository"):
        PathManager.open(f"hf://{SEGFORMER}", "rb")
    with pytest.raises(ValueError, match="read-only"):
        PathManager.open(weights, "wb")
    # registered once at import, and again by nobody
    handler = PathManager._path_handlers["hf://"]
    assert isinstance(handler, HubPathHandler) and PathManager._path_handlers["timm://"] is handler
    assert register_hub_handler() is handler


def test_cli_writes_the_same_file_for_the_name(cache, tmp_path, capsys):
    cli = load_script("tools/convert_pretrained.py")
    main = _snapshot(cache, SEGFORMER, MAIN)
    cli.main([f"hf://{SEGFORMER}", str(tmp_path / "by_name.pkl")])
    by_name = capsys.readouterr().out
    cli.main([str(main), str(tmp_path / "by_path.pkl")])
    by_path = capsys.readouterr().out
    assert (tmp_path / "by_name.pkl").read_bytes() == (tmp_path / "by_path.pkl").read_bytes()
    assert by_name.startswith(f"hf://{SEGFORMER} resolved to {main}\n")
    assert by_name.split("\n", 1)[1] == by_path.replace("by_path.pkl", "by_name.pkl")
    with pytest.raises(SystemExit, match=r"error: hf://test-org/absent is not in the Hugging Face"):
        cli.main(["hf://test-org/absent", str(tmp_path / "absent.pkl")])


def test_demo_takes_a_hub_name(cache, tmp_path, monkeypatch):
    """MODEL.WEIGHTS hf://... in tools/demo.py: the model and the class names of the repository."""
    from project_config import recording_demo

    run_demo, drawn_with = recording_demo(monkeypatch, tmp_path, CONFIG, len(LABELS))
    run_demo("MODEL.WEIGHTS", f"hf://{SEGFORMER}@v2")
    assert [m.stuff_classes for m in drawn_with] == [LABELS]
    assert (tmp_path / "vis.png").is_file()


def test_loading_by_name_logs_the_resolved_path(cache, segformer, swin):
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger(hub.__name__)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        _load(segformer, f"hf://{SEGFORMER}@v2")
        _load(swin, f"timm://{TIMM_NAME}", optional_keys=["backbone.norm*"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    repo = _timm_repo()
    assert [r.getMessage() for r in records] == [
        f"hf://{SEGFORMER}@v2 resolved to {_snapshot(cache, SEGFORMER, V2)}",
        f"timm://{TIMM_NAME} (hf://{repo}) resolved to {_snapshot(cache, repo, TIMM)}",
    ]


@pytest.mark.parametrize(
    "name, fetch",
    [
        ("hf://test-org/absent", "hf download test-org/absent config.json model.safetensors`"),
        (
            f"hf://{SEGFORMER}@v3",
            f"hf download {SEGFORMER} config.json model.safetensors --revision v3`",
        ),
        (f"hf://{SEGFORMER}/sub/w.pth@abc1", f"hf download {SEGFORMER} sub/w.pth --revision abc1`"),
        ("timm://swin_small_patch4_window7_224", "hf download timm/swin_small_patch4_window7_224."),
    ],
)
def test_offline_and_not_cached_is_one_error(cache, segformer, name, fetch):
    with pytest.raises(HubWeightsNotFoundError) as error:
        ValidatingCheckpointer(segformer[0]).load(name)
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert message.startswith(f"{name} ")
    assert f"is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set" in message
    assert fetch in message and "pass their local path" in message


def test_unreachable_hub_and_not_cached(monkeypatch):
    """Online, the hub unreachable: huggingface_hub's LocalEntryNotFoundError, with its cause."""
    from huggingface_hub.utils import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        try:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        except ConnectionError as cause:
            raise LocalEntryNotFoundError("cannot find the requested files") from cause

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", unreachable)
    with pytest.raises(
        HubWeightsNotFoundError,
        match=r"^hf://org/repo is not in the Hugging Face cache .* and the hub could not be "
        r"reached \(ConnectionError: Failed to resolve 'huggingface.co'\)\. Fetch it once online",
    ):
        PathManager.get_local_path("hf://org/repo")


@pytest.mark.parametrize(
    "name, problem",
    [
        ("hf://onlyorg", r"'hf://onlyorg' names no repository \(ORG/REPO\); a hub name is hf://"),
        ("hf://", r"'hf://' names no repository"),
        ("hf://org//file.pth", r"names no repository"),
        ("hf://org/repo@a@b", r"more than one '@'"),
        ("hf://org/repo@", r"nothing after '@'"),
        ("hf://org/re po", r"'hf://org/re po': .*"),
        ("timm://", r"a timm name is timm://MODEL or timm://MODEL\.TAG"),
        ("timm://unknown_model", r"timm has no model 'unknown_model'; timm\.list_pretrained\(\)"),
        (f"timm://{TIMM_NAME}.badtag", rf"badtag.*timm's weights of it: .*{TIMM_NAME}\.ms_in1k"),
    ],
)
def test_malformed_names_are_one_error(name, problem, segformer):
    with pytest.raises(HubWeightsError, match=problem) as error:
        ValidatingCheckpointer(segformer[0]).load(name)
    assert not isinstance(error.value, HubWeightsNotFoundError)


def test_timm_config_with_only_a_url(monkeypatch):
    cfg = timm.models.PretrainedCfg(url="https://example.com/weights.pth")
    monkeypatch.setattr(timm.models, "get_pretrained_cfg", lambda name: cfg)
    with pytest.raises(
        HubWeightsError,
        match=r"'timm://some_model': timm's pretrained config names no Hugging Face hub "
        r"repository for it, only the URL https://example\.com/weights\.pth: download",
    ):
        PathManager.get_local_path("timm://some_model")
