"""ValidatingCheckpointer: unreadable files, checkpoints of another variant and checkpoints with
missing keys are errors that list what is wrong; initialisation weights may lack the modules
MODEL.WEIGHTS_OPTIONAL_KEYS names, a resume and an evaluation may not; train_net.py uses it."""
import pickle
from pathlib import Path

import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from PIL import Image

from hila_d2.checkpoint.loading import CheckpointError, ValidatingCheckpointer
from project_config import REPO, load_config, load_script, load_train_net

CONFIG = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
PREDICTOR = "sem_seg_head.predictor.weight"


def build(*opts: str, seed: int = 0) -> torch.nn.Module:
    cfg = load_config(CONFIG, *opts)
    torch.manual_seed(seed)
    return build_model(cfg)


def optional_keys() -> list:
    return list(load_config(CONFIG).MODEL.WEIGHTS_OPTIONAL_KEYS)


def save(state: dict, path: Path) -> str:
    torch.save({"model": state}, path)
    return str(path)


def state_of(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)


@pytest.fixture(scope="module")
def source() -> dict:
    """The state dict of a MiT-B0 SegFormer (seed 1)."""
    return build(seed=1).state_dict()


# ---------------------------------------------------------------- unreadable files


def test_truncated_pth_is_an_error_naming_the_file(tmp_path, source):
    path = tmp_path / "model_final.pth"
    save(source, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    model = build()
    before = state_of(model)
    with pytest.raises(CheckpointError, match=r"(?s)Cannot read the checkpoint '.*model_final\.pth'.*truncated"):
        ValidatingCheckpointer(model).load(str(path))
    assert_unchanged(model, before)


def test_truncated_model_zoo_pkl_is_an_error(tmp_path, source):
    path = tmp_path / "model.pkl"
    data = pickle.dumps({"model": {k: v.numpy() for k, v in source.items()}, "__author__": "test"})
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"Cannot read the checkpoint '.*model\.pkl'"):
        ValidatingCheckpointer(build()).load(str(path))


class NotAWeight:
    """A pickled object that torch.load(weights_only=True) refuses to rebuild."""


def test_pth_is_read_with_weights_only(tmp_path, source):
    path = tmp_path / "with_object.pth"
    torch.save({"model": source, "note": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match=r"weights_only=True") as error:
        ValidatingCheckpointer(build()).load(str(path))
    assert "NotAWeight" in str(error.value.__cause__)


# ---------------------------------------------------------------- keys and shapes


def test_checkpoint_of_another_variant_lists_every_shape(tmp_path):
    path = save(build("MODEL.MIT.VARIANT", "B1").state_dict(), tmp_path / "b1.pth")
    model = build()  # B0: widths 32/64/160/256 where B1 has 64/128/320/512
    with pytest.raises(CheckpointError) as error:
        ValidatingCheckpointer(model, optional_keys=optional_keys()).load(path)
    message = str(error.value)
    assert "does not fit the SemanticSegmentor model" in message
    assert "backbone.patch_embed.proj.weight: checkpoint (64, 3, 7, 7), model (32, 3, 7, 7)" in message
    assert "tensors of another shape (" in message and "another variant" in message
    # B0 has the blocks of B1 (depths 2/2/2/2 both), so no key is missing or unexpected
    assert "lacks" not in message


def test_checkpoint_of_another_depth_lists_the_missing_blocks(tmp_path, source):
    path = save(source, tmp_path / "b0.pth")  # depths 2/2/2/2 into a model with 3 in stage 3
    model = build("MODEL.MIT.DEPTHS", "[2, 2, 3, 2]")
    with pytest.raises(CheckpointError) as error:
        ValidatingCheckpointer(model, optional_keys=optional_keys()).load(path)
    missing = [k for k in model.state_dict() if k.startswith("backbone.stages.2.blocks.2.")]
    assert f"model keys the checkpoint lacks ({len(missing)}):" in str(error.value)
    assert "backbone.stages.2.blocks.2.norm1.weight" in str(error.value)
    assert len(missing) > 10 and "of another shape" not in str(error.value)


def test_missing_backbone_key_is_an_error_even_for_initialisation(tmp_path, source):
    state = dict(source)
    del state["backbone.stages.1.blocks.1.mlp.fc2.bias"]
    path = save(state, tmp_path / "incomplete.pth")
    with pytest.raises(CheckpointError, match=r"lacks \(1\):\n    backbone\.stages\.1\.blocks\.1\.mlp\.fc2\.bias\n"):
        ValidatingCheckpointer(build(), optional_keys=optional_keys()).load(path)


def test_unexpected_keys_are_listed(tmp_path, source):
    state = {**source, "backbone.stages.4.blocks.0.attn.q.weight": torch.zeros(4, 4)}
    path = save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"checkpoint keys the model lacks \(1\):\n    backbone\.stages\.4\.blocks"):
        ValidatingCheckpointer(build(), optional_keys=optional_keys()).load(path)


def test_encoder_weights_initialise_a_model_whose_head_is_new(tmp_path, source):
    """ImageNet-style weights (no decode head): loaded, the head keeps its initialisation."""
    encoder = {k: v for k, v in source.items() if k.startswith("backbone.")}
    path = save(encoder, tmp_path / "encoder.pth")
    model = build()
    before = state_of(model)
    ValidatingCheckpointer(model, optional_keys=optional_keys()).load(path)
    for name, value in model.state_dict().items():
        expected = encoder[name] if name.startswith("backbone.") else before[name]
        torch.testing.assert_close(value, expected, msg=name)
    assert not torch.equal(source[PREDICTOR], before[PREDICTOR])  # so the check can fail


def test_evaluation_needs_the_head(tmp_path, source):
    encoder = {k: v for k, v in source.items() if k.startswith("backbone.")}
    path = save(encoder, tmp_path / "encoder.pth")
    with pytest.raises(CheckpointError, match=r"model keys the checkpoint lacks .*\n.*sem_seg_head\.") as error:
        ValidatingCheckpointer(build()).load(path)  # no optional keys: the whole model must load
    assert "evaluation and inference load the whole model" in str(error.value)


def test_another_class_count_initialises_everything_but_the_classifier(tmp_path):
    path = save(build("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19", seed=1).state_dict(), tmp_path / "k19.pth")
    model = build()
    predictor = model.state_dict()[PREDICTOR].clone()
    ValidatingCheckpointer(model, optional_keys=optional_keys()).load(path)
    torch.testing.assert_close(model.state_dict()[PREDICTOR], predictor)
    with pytest.raises(CheckpointError, match=rf"{PREDICTOR}: checkpoint \(19, 256, 1, 1\), model \(\d+, 256, 1, 1\)"):
        ValidatingCheckpointer(build()).load(path)


def test_resuming_requires_every_key(tmp_path, source):
    checkpointer = ValidatingCheckpointer(build(), str(tmp_path), optional_keys=optional_keys())
    encoder = {k: v for k, v in source.items() if k.startswith("backbone.")}
    save(encoder, tmp_path / "model_0000009.pth")
    checkpointer.tag_last_checkpoint("model_0000009.pth")
    with pytest.raises(CheckpointError, match=r"(?s)lacks \(15\).*Resuming requires every key"):
        checkpointer.resume_or_load("", resume=True)
    checkpointer.resume_or_load(str(tmp_path / "model_0000009.pth"), resume=False)  # initialises


def test_trainer_own_checkpoint_resumes(tmp_path):
    model = build()
    ValidatingCheckpointer(model, str(tmp_path)).save("model_0000009", iteration=9)
    resumed = build(seed=3)
    loaded = ValidatingCheckpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)
    assert loaded["iteration"] == 9
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name], msg=name)


# ---------------------------------------------------------------- train_net.py


def test_train_net_eval_only_refuses_a_truncated_checkpoint(tmp_path, source):
    path = tmp_path / "model_final.pth"
    save(source, path)
    path.write_bytes(path.read_bytes()[:1000])
    args = default_argument_parser().parse_args(
        ["--config-file", str(REPO / CONFIG), "--eval-only", "MODEL.WEIGHTS", str(path),
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "eval")]
    )
    with pytest.raises(CheckpointError, match="Cannot read the checkpoint"):
        load_train_net().main(args)


def test_train_net_trainer_refuses_weights_of_another_variant(tmp_path):
    path = save(build("MODEL.MIT.VARIANT", "B1").state_dict(), tmp_path / "b1.pth")
    train_net = load_train_net()
    cfg = load_config(CONFIG, "MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path / "train"))
    trainer = train_net.Trainer(cfg)
    assert isinstance(trainer.checkpointer, ValidatingCheckpointer)
    assert trainer.checkpointer.optional_keys == tuple(cfg.MODEL.WEIGHTS_OPTIONAL_KEYS)
    periodic = [h for h in trainer._hooks if type(h).__name__ == "PeriodicCheckpointer"]
    assert periodic[0].checkpointer is trainer.checkpointer
    with pytest.raises(CheckpointError, match="tensors of another shape"):
        trainer.resume_or_load(resume=False)


HILA = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
SWIN = "configs/ade20k/semantic-segmentation/swin/upernet_swin_t_160k.yaml"


@pytest.mark.parametrize(
    "source_config, target_config, absent",
    [
        (CONFIG, HILA, ("sem_seg_head.",)),  # plain MiT weights for HILA: the pairs are new
        (SWIN, SWIN, ("sem_seg_head.", "backbone.norm")),  # ImageNet Swin has no stage norms
    ],
)
def test_imagenet_style_weights_initialise_new_modules(tmp_path, source_config, target_config, absent):
    torch.manual_seed(1)
    weights = build_model(load_config(source_config)).state_dict()
    weights = {k: v for k, v in weights.items() if not k.startswith(absent)}
    path = save(weights, tmp_path / "encoder.pth")
    cfg = load_config(target_config)
    torch.manual_seed(0)
    model = build_model(cfg)
    ValidatingCheckpointer(model, optional_keys=cfg.MODEL.WEIGHTS_OPTIONAL_KEYS).load(path)
    new = [k for k in model.state_dict() if k not in weights]
    assert new and all(k.startswith(("sem_seg_head.", "backbone.hila.", "backbone.norm")) for k in new)
    for name, value in weights.items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)
    with pytest.raises(CheckpointError, match="model keys the checkpoint lacks"):
        ValidatingCheckpointer(model).load(path)


@pytest.mark.parametrize(
    "tool, args",
    [
        ("tools/demo.py", ["--input", "in.png", "--output", "vis.png"]),
        ("tools/export_model.py", ["--format", "torchscript", "--output", "m.ts", "--height", "64", "--width", "64"]),
        ("tools/visualize_hila.py", ["--input", "in.png", "--output", "vis", "--pixel", "3", "3"]),
    ],
)
def test_tools_refuse_weights_of_another_variant(tmp_path, monkeypatch, tool, args):
    path = save(build("MODEL.MIT.VARIANT", "B1").state_dict(), tmp_path / "b1.pth")
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    monkeypatch.chdir(tmp_path)
    config = HILA if "visualize" in tool else CONFIG
    with pytest.raises(CheckpointError, match="tensors of another shape"):
        load_script(tool).main(
            ["--config-file", str(REPO / config), *args, "MODEL.WEIGHTS", path, "MODEL.DEVICE", "cpu"]
        )
