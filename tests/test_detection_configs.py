"""The COCO Mask R-CNN and Panoptic FPN configs (Swin-T 1x/3x, MiT-B2 1x, each with and without
HILA; HAT-Net T/S/M/L) build the models and optimiser groups their recipes state, and
train_net.py picks the evaluators of instance and panoptic datasets."""
import pytest
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.modeling import build_model

from hila_d2.modeling import HATNet, MixVisionTransformer, SwinTransformerBackbone
from hila_d2.solver import build_optimizer
from project_config import REPO, load_config, load_train_net
from test_solver import hyperparams_by_name

INSTANCE = "configs/coco/instance-segmentation/"
PANOPTIC = "configs/coco/panoptic-segmentation/"
LEAVES = sorted(
    str(path.relative_to(REPO))
    for folder in (INSTANCE, PANOPTIC)
    for path in (REPO / folder).glob("*.yaml")
    if not path.name.startswith("Base-")
)
IMAGENET_RGB_MEAN = [123.675, 116.28, 103.53]


def test_every_backbone_has_both_tasks_with_and_without_hila():
    names = {path.rsplit("/", 1)[1] for path in LEAVES}
    for task in ("mask_rcnn", "panoptic_fpn"):
        for model in ("swin_t_1x", "swin_t_3x", "mit_b2_1x"):
            encoder, schedule = model.rsplit("_", 1)
            assert f"{task}_{model}.yaml" in names
            assert f"hila_{task}_{encoder}_s234_{schedule}.yaml" in names
    hatnet = {f"mask_rcnn_hatnet_{v}_1x.yaml" for v in "tsml"} | {
        "hila_mask_rcnn_hatnet_s_s234_1x.yaml",
        "panoptic_fpn_hatnet_s_1x.yaml",
    }
    assert hatnet <= names
    assert len(names) == 12 + len(hatnet)


@pytest.mark.parametrize("config", LEAVES)
def test_config_builds_the_recipe(config):
    cfg = load_config(config)
    name = config.rsplit("/", 1)[1]
    swin, hatnet = "swin_t" in name, "hatnet" in name
    hila = name.startswith("hila_")
    model = build_model(cfg)

    encoder = model.backbone.bottom_up
    encoder_class = SwinTransformerBackbone if swin else HATNet if hatnet else MixVisionTransformer
    assert isinstance(encoder, encoder_class)
    assert sorted(encoder.hila) == (["12", "23", "34"] if hila else [])
    assert cfg.MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE == hila  # from plain ImageNet weights
    assert [s.stride for s in model.backbone.output_shape().values()] == [4, 8, 16, 32, 64]
    assert model.roi_heads.box_predictor.num_classes == 80
    assert model.roi_heads.mask_head.predictor.out_channels == 80
    if config.startswith(PANOPTIC):
        assert type(model).__name__ == "PanopticFPN"
        assert model.sem_seg_head.predictor.out_channels == 54
        assert cfg.DATASETS.TRAIN == ("coco_2017_train_panoptic_separated",)
    else:
        assert type(model).__name__ == "GeneralizedRCNN"
        assert cfg.DATASETS.TRAIN == ("coco_2017_train",)

    # the encoders' ImageNet input convention
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == IMAGENET_RGB_MEAN
    # optimiser: AdamW, Swin lr 1e-4 / wd 0.05, MiT and HAT-Net (PVT recipes) lr 2e-4 / wd 1e-4;
    # no decay on MiT and Swin norms, nor on Swin's relative position tables; the same LR for
    # heads
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.IMS_PER_BATCH == 16
    hp = hyperparams_by_name(model, build_optimizer(cfg, model))
    lr, wd = (1e-4, 0.05) if swin else (2e-4, 1e-4)
    if swin:
        first = "backbone.bottom_up.layers.0.blocks.0."
        assert hp[first + "attn.qkv.weight"] == pytest.approx((lr, wd))
        assert hp[first + "attn.relative_position_bias_table"] == pytest.approx((lr, 0.0))
    elif hatnet:
        assert encoder.variant == name.split("hatnet_")[1][0].upper()
        first = "backbone.bottom_up.blocks.0.0.attn."
        assert hp[first + "qkv.weight"] == pytest.approx((lr, wd))
        # PVT's recipe decays every parameter, GroupNorms included; the unused proj_norm is
        # frozen, so it has no optimiser slot
        assert hp[first + "norm.weight"] == pytest.approx((lr, wd))
        assert first + "proj_norm.weight" not in hp
    else:
        first = "backbone.bottom_up.stages.0.blocks.0."
        assert hp[first + "attn.q.weight"] == pytest.approx((lr, wd))
    if not hatnet:
        assert hp[first + "norm1.weight"] == pytest.approx((lr, 0.0))
    assert hp["roi_heads.box_head.fc1.weight"] == pytest.approx((lr, wd))

    three_x = name.endswith("_3x.yaml")
    assert cfg.SOLVER.MAX_ITER == (270000 if three_x else 90000)
    if three_x:  # multi-scale 480..800 with the DETR crop policy
        assert cfg.INPUT.DATASET_MAPPER_NAME == "detr_crop"
        assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32))
    else:
        assert cfg.INPUT.DATASET_MAPPER_NAME == "" and tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,)


def kinds(evaluator):
    inner = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    return [type(e) for e in inner]


def test_train_net_evaluators_for_instance_and_panoptic_datasets(tmp_path):
    train_net = load_train_net()
    out = str(tmp_path)
    instance_cfg = load_config("configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml")
    coco = train_net.Trainer.build_evaluator(instance_cfg, "hila_shapes_val", out)
    assert kinds(coco) == [COCOEvaluator]
    # detectron2's C++ COCOeval is not built here: the official pycocotools one is used
    assert coco._use_fast_impl is False

    panoptic_cfg = load_config("configs/builtin/panoptic-segmentation/panoptic_fpn_mit_b0.yaml")
    separated = train_net.Trainer.build_evaluator(
        panoptic_cfg, "hila_shapes_val_panoptic_separated", out
    )
    assert kinds(separated) == [SemSegEvaluator, COCOEvaluator, COCOPanopticEvaluator]
    # the standard panoptic dataset's semantic maps have 7 classes, PanopticFPN predicts 4
    standard = train_net.Trainer.build_evaluator(panoptic_cfg, "hila_shapes_val_panoptic", out)
    assert kinds(standard) == [COCOEvaluator, COCOPanopticEvaluator]
