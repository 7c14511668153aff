"""Optimiser parameter groups and the warmup + poly LR schedule."""
import pytest
import torch
from detectron2.modeling import build_model
from project_config import hyperparams_by_name, load_config

from hila_d2.solver import build_lr_scheduler, build_optimizer


def segformer_cfg(*opts):
    return load_config("configs/ade20k/semantic-segmentation/segformer_mit_b0_bs16_160k.yaml", *opts)


def test_param_groups_follow_the_segformer_recipe():
    cfg = segformer_cfg()
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    hp = hyperparams_by_name(model, optimizer)
    assert len(hp) == len(list(model.parameters()))
    base, wd = 6e-5, 0.01
    assert hp["backbone.stages.0.blocks.0.attn.q.weight"] == pytest.approx((base, wd))
    assert hp["backbone.stages.0.blocks.0.norm1.weight"] == pytest.approx((base, 0.0))
    assert hp["backbone.stages.0.blocks.0.attn.norm.bias"] == pytest.approx((base, 0.0))
    assert hp["backbone.patch_embed.norm.weight"] == pytest.approx((base, 0.0))
    assert hp["sem_seg_head.embeds.0.weight"] == pytest.approx((10 * base, wd))
    assert hp["sem_seg_head.fuse.norm.weight"] == pytest.approx((10 * base, 0.0))
    assert hp["sem_seg_head.predictor.bias"] == pytest.approx((10 * base, wd))


def test_backbone_no_weight_decay_keywords_are_honoured():
    cfg = segformer_cfg()
    model = build_model(cfg)
    attn = model.backbone.stages[1].blocks[0].attn
    attn.relative_position_bias_table = torch.nn.Parameter(torch.zeros(9, 2))  # as in Swin
    model.backbone.no_weight_decay_keywords = lambda: {"relative_position_bias_table"}
    hp = hyperparams_by_name(model, build_optimizer(cfg, model))
    assert hp["backbone.stages.1.blocks.0.attn.relative_position_bias_table"] == pytest.approx((6e-5, 0.0))
    assert hp["backbone.stages.1.blocks.0.attn.q.weight"][1] == 0.01


def test_warmup_then_poly_schedule():
    cfg = segformer_cfg("SOLVER.MAX_ITER", 100, "SOLVER.WARMUP_ITERS", 10, "SOLVER.POLY_LR_POWER", 2.0)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = build_lr_scheduler(cfg, optimizer)
    factor = cfg.SOLVER.WARMUP_FACTOR
    for it in range(100):
        poly = (1 - it / 100) ** 2
        warmup = factor + (1 - factor) * it / 10 if it < 10 else 1.0
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * poly * warmup, rel=1e-6, abs=1e-12)
        optimizer.step()
        scheduler.step()


def test_unknown_optimizer_names_the_key():
    cfg = segformer_cfg("SOLVER.OPTIMIZER", "LION")
    with pytest.raises(ValueError, match=r"SOLVER\.OPTIMIZER.*ADAMW"):
        build_optimizer(cfg, build_model(cfg))
