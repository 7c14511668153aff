"""hila_d2.validate_config: every bad model key is one ValueError naming the key and the allowed
values, raised by train_net.py's setup before anything is written, built or loaded; every
shipped config passes."""
from pathlib import Path

import pytest
import torch
from detectron2.engine import default_argument_parser

import hila_d2
from project_config import REPO, load_config, load_train_net

SEGFORMER = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
HILA_MIT = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
SEMANTIC_FPN = "configs/builtin/semantic-segmentation/semantic_fpn_hatnet_t.yaml"
HMSA = "configs/builtin/semantic-segmentation/hmsa_segformer_mit_b0.yaml"
MASK_RCNN = "configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml"
PANOPTIC = "configs/builtin/panoptic-segmentation/panoptic_fpn_mit_b0.yaml"
SWIN_UPERNET = "configs/ade20k/semantic-segmentation/swin/upernet_swin_t_160k.yaml"
FPN_OUTPUTS = r"\['p2', 'p3', 'p4', 'p5', 'p6'\]"

BAD_KEYS = [
    # unknown variants
    (SEGFORMER, "MODEL.MIT.VARIANT", "B9", r"MODEL\.MIT\.VARIANT.*\['B0', 'B1', 'B2', 'B3', 'B4', 'B5'\]"),
    (SWIN_UPERNET, "MODEL.HILA_D2_SWIN.VARIANT", "XL", r"MODEL\.HILA_D2_SWIN\.VARIANT.*\['B', 'L', 'S', 'T'\]"),
    (SEMANTIC_FPN, "MODEL.HATNET.VARIANT", "XS", r"MODEL\.HATNET\.VARIANT.*\['L', 'M', 'S', 'T'\]"),
    # HILA stage pairs out of range
    (HILA_MIT, "MODEL.HILA.STAGES", "[5]", r"MODEL\.HILA\.STAGES .*2\.\.4.*got \[5\]"),
    (HILA_MIT, "MODEL.HILA.STAGES", "[1, 3]", r"MODEL\.HILA\.STAGES .*2\.\.4.*got \[1, 3\]"),
    # heads reading features the backbone does not output: detectron2's heads (which would fail
    # with a KeyError in the RPN, or at the first forward pass of SemSegFPNHead) and ours
    (SEMANTIC_FPN, "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['p2', 'p7']", rf"MODEL\.SEM_SEG_HEAD\.IN_FEATURES is \['p2', 'p7'\].*no \['p7'\].*{FPN_OUTPUTS}"),
    (MASK_RCNN, "MODEL.RPN.IN_FEATURES", "['p2', 'res5']", rf"MODEL\.RPN\.IN_FEATURES .*no \['res5'\].*{FPN_OUTPUTS}"),
    (MASK_RCNN, "MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p6', 'p9']", rf"MODEL\.ROI_HEADS\.IN_FEATURES .*no \['p9'\].*{FPN_OUTPUTS}"),
    (PANOPTIC, "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2']", rf"MODEL\.SEM_SEG_HEAD\.IN_FEATURES .*no \['res2'\].*{FPN_OUTPUTS}"),
    (SEGFORMER, "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res6']", r"MODEL\.SEM_SEG_HEAD\.IN_FEATURES .*no \['res6'\].*\['res2', 'res3', 'res4', 'res5'\]"),
    (SEGFORMER, "MODEL.MIT.OUT_FEATURES", "['res2', 'res3']", r"MODEL\.SEM_SEG_HEAD\.IN_FEATURES .*no \['res4', 'res5'\].*\['res2', 'res3'\]"),
    # outputs that nothing reads while parameters only they need would get no gradient (DDP
    # stops): HILA S3's update of res3 (Swin's res4 norm: below)
    (HILA_MIT, "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res4', 'res5']", r"MODEL\.MIT\.OUT_FEATURES returns \['res3'\], which nothing reads .*set MODEL\.MIT\.OUT_FEATURES to \['res2', 'res4', 'res5'\]"),
    # HMSA scale lists
    (HMSA, "MODEL.HMSA.TRAIN_SCALES", "(1.0, -2.0)", r"MODEL\.HMSA\.TRAIN_SCALES .*positive, distinct"),
    (HMSA, "MODEL.HMSA.TRAIN_SCALES", "(0.5, 1.0, 2.0)", r"MODEL\.HMSA\.TRAIN_SCALES .*exactly 2 scales"),
    (HMSA, "MODEL.HMSA.TEST_SCALES", "(0.5, 2.0)", r"MODEL\.HMSA\.TEST_SCALES .*must contain 1\.0"),
    (HMSA, "MODEL.HMSA.ATTN_IN_FEATURE", "'res7'", r"MODEL\.HMSA\.ATTN_IN_FEATURE is \['res7'\].*no \['res7'\].*\['res2', 'res3', 'res4', 'res5'\]"),
    # names that no registry holds
    (SEGFORMER, "MODEL.BACKBONE.NAME", "build_mitt_backbone", r"MODEL\.BACKBONE\.NAME is 'build_mitt_backbone'.*'build_mit_backbone'"),
    (SEGFORMER, "MODEL.SEM_SEG_HEAD.NAME", "SegformerHead", r"MODEL\.SEM_SEG_HEAD\.NAME .*choose one of \[.*'SegFormerHead', 'SemSegFPNHead', 'UPerNetHead'"),
    (SEGFORMER, "MODEL.META_ARCHITECTURE", "SemanticSegmenter", r"MODEL\.META_ARCHITECTURE .*'SemanticSegmentor'"),
    (MASK_RCNN, "MODEL.ROI_HEADS.NAME", "MaskROIHeads", r"MODEL\.ROI_HEADS\.NAME .*'StandardROIHeads'"),
]


@pytest.mark.parametrize(
    "config, key, value, message", BAD_KEYS, ids=[f"{k}={v}" for _, k, v, _ in BAD_KEYS]
)
def test_bad_key_is_one_clear_error(config, key, value, message):
    cfg = load_config(config, key, value)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=message):
        hila_d2.validate_config(cfg)
    assert torch.equal(torch.get_rng_state(), rng)


def _setup_args(config: str, output_dir: Path, *opts: str):
    """train_net.py's arguments for ``config`` whose training set is not registered: loading
    any data would fail with detectron2's "not registered" KeyError instead."""
    return default_argument_parser().parse_args(
        [
            "--config-file",
            str(REPO / config),
            "OUTPUT_DIR",
            str(output_dir),
            "DATASETS.TRAIN",
            "('no_such_dataset',)",
            *opts,
        ]
    )


@pytest.mark.parametrize("config, key, value, message", [BAD_KEYS[0], BAD_KEYS[6], BAD_KEYS[11]])
def test_train_net_refuses_before_writing_building_or_loading(tmp_path, config, key, value, message):
    train_net = load_train_net()
    with pytest.raises(ValueError, match=message):
        train_net.setup(_setup_args(config, tmp_path, key, value, "MODEL.DEVICE", "cpu"))
    assert not (tmp_path / "config.yaml").exists()  # default_setup, which writes it, did not run


def test_valid_config_passes_without_touching_data(tmp_path):
    train_net = load_train_net()
    cfg = train_net.setup(_setup_args(SEGFORMER, tmp_path, "MODEL.DEVICE", "cpu"))
    assert cfg.DATASETS.TRAIN == ("no_such_dataset",) and (tmp_path / "config.yaml").exists()
    with pytest.raises(KeyError, match="no_such_dataset"):  # data is only touched afterwards
        train_net.Trainer(cfg)


def _shipped_configs():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if not path.name.startswith(("Base-", "HILA-")):
            yield str(path.relative_to(REPO))


@pytest.mark.slow
def test_every_shipped_config_validates():
    configs = list(_shipped_configs())
    assert len(configs) > 50
    for config in configs:
        hila_d2.validate_config(hila_d2.load_config(str(REPO / config)))


def test_unread_outputs_that_cost_no_parameter_are_accepted():
    """Plain MiT's res3 and res4 feed the next stages anyway, and the Swin UperNet's auxiliary
    head reads res4: neither leaves a parameter out of the loss."""
    hila_d2.validate_config(load_config(SEGFORMER, "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res5"]))
    swin = load_config(SWIN_UPERNET, "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res3", "res5"])
    swin.merge_from_list(["MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE", "res4"])
    with pytest.raises(ValueError, match="res4"):  # the auxiliary head is dropped with weight 0
        swin.merge_from_list(["MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT", 0.0])
        hila_d2.validate_config(swin)
    swin.merge_from_list(["MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT", 0.4])
    hila_d2.validate_config(swin)
