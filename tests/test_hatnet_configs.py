"""The HAT-Net semantic segmentation configs (ADE20K Semantic FPN T/S/M/L and HILA S234,
UperNet and SegFormer head; built-in) build the models and optimiser groups their recipes state,
and a training step and inference run on the ADE20K Semantic FPN model at an odd size."""
import pytest
import torch
from detectron2.modeling import FPN, SemanticSegmentor, build_model
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.utils.events import EventStorage
from project_config import REPO, load_config
from test_solver import hyperparams_by_name

from hila_d2.modeling import HATNet, SegFormerHead, UPerNetHead
from hila_d2.solver import build_optimizer

ADE = "configs/ade20k/semantic-segmentation/hatnet/"
LEAVES = sorted(p.name for p in (REPO / ADE).glob("*.yaml") if not p.name.startswith("Base-"))


def test_the_ade20k_configs():
    assert LEAVES == sorted(
        [f"semantic_fpn_hatnet_{v}_40k.yaml" for v in "tsml"]
        + ["hila_semantic_fpn_hatnet_s_s234_40k.yaml", "upernet_hatnet_s_160k.yaml",
           "segformer_hatnet_s_160k.yaml"]
    )  # fmt: skip


@pytest.mark.parametrize("config", LEAVES)
def test_config_builds_the_recipe(config):
    cfg = load_config(ADE + config)
    model = build_model(cfg)
    assert isinstance(model, SemanticSegmentor)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150 and tuple(cfg.INPUT.CROP.SIZE) == (512, 512)
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.HATNET.DROP_PATH_RATE == 0.1
    hp = hyperparams_by_name(model, build_optimizer(cfg, model))
    if config.startswith(("semantic_fpn", "hila_semantic_fpn")):
        encoder = model.backbone.bottom_up
        assert isinstance(model.backbone, FPN) and isinstance(model.sem_seg_head, SemSegFPNHead)
        assert model.sem_seg_head.in_features == ["p2", "p3", "p4", "p5"]
        assert model.sem_seg_head.predictor.in_channels == 128
        # PVT's Semantic FPN recipe: batch 32, 40k iterations, AdamW 2e-4, weight decay 1e-4 on
        # every parameter (GroupNorms too), poly 0.9 without warm-up, one LR for all
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER) == (32, 40000)
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" and cfg.SOLVER.POLY_LR_POWER == 0.9
        assert cfg.SOLVER.WARMUP_ITERS == 0
        first = "backbone.bottom_up.blocks.0.0.attn."
        for name in (first + "qkv.weight", first + "norm.weight", "sem_seg_head.predictor.weight"):
            assert hp[name] == pytest.approx((2e-4, 1e-4)), name
        hila = config.startswith("hila_")
        assert sorted(encoder.hila) == (["12", "23", "34"] if hila else [])
        assert cfg.MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE == hila
    else:
        encoder = model.backbone
        head = UPerNetHead if config.startswith("upernet") else SegFormerHead
        assert isinstance(model.sem_seg_head, head)
        assert hp["backbone.blocks.0.0.attn.qkv.weight"][0] == pytest.approx(6e-5)
    assert isinstance(encoder, HATNet)
    assert encoder.variant == config.split("hatnet_")[1][0].upper()


def test_semantic_fpn_trains_and_predicts_at_an_odd_size():
    cfg = load_config(
        ADE + "semantic_fpn_hatnet_t_40k.yaml", "MODEL.HATNET.DROP_PATH_RATE", "0.0",
        "MODEL.SEM_SEG_HEAD.NORM", "GN",  # BN on one image of this size is fine, GN is exact
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    height, width = 181, 243
    record = {"image": torch.randint(0, 256, (3, height, width)).float(),
              "sem_seg": torch.randint(0, 150, (height, width))}  # fmt: skip
    with EventStorage():
        losses = model([record])
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": record["image"], "height": 90, "width": 120}])
    assert output["sem_seg"].shape == (150, 90, 120) and torch.isfinite(output["sem_seg"]).all()
