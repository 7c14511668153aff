"""HILA's training recipe against the official HILA configs (docs/design/hila.md §3, §6): which
HILA parameters get weight decay and which learning rate, the drop-path rates of the HILA blocks
and of the extra lower-level block, and the initialisation of every HILA module."""
import math

import pytest
import torch
from detectron2.modeling import build_model
from project_config import hyperparams_by_name, load_config
from torch import nn

from hila_d2.solver import build_optimizer

MIT_S3 = "configs/ade20k/semantic-segmentation/hila/hila_mit_b0_s3_160k.yaml"
SWIN_S234 = "configs/ade20k/semantic-segmentation/swin/hila_upernet_swin_t_s234_160k.yaml"


def hila_parameters(hp):
    return {name: v for name, v in hp.items() if name.startswith("backbone.hila.")}


def test_mit_hila_param_groups_follow_the_official_segformer_keys():
    """Official MiT-HILA: decay 0 on names containing 'norm', lr x10 on the decode head, decay
    0.01 on everything else, HILA's position tables included (only Swin's recipe names them)."""
    cfg = load_config(MIT_S3)
    model = build_model(cfg)
    hp = hyperparams_by_name(model, build_optimizer(cfg, model))
    base, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    assert (base, wd) == (6e-5, 0.01)
    hila = hila_parameters(hp)
    assert len(hila) > 40
    layer_norm_params = {
        f"{module_name}.{local}"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm)
        for local, _ in module.named_parameters(recurse=False)
    }
    for name, (lr, decay) in hila.items():
        official_norm = "norm" in name  # the official key matches parameter names
        assert official_norm == (name in layer_norm_params), name
        assert lr == pytest.approx(base), name
        assert decay == pytest.approx(0.0 if official_norm else wd), name
    assert hp["backbone.hila.23.top_down.topdown_attn.relative_position_bias_table"] == (
        pytest.approx((base, wd))
    )
    assert hp["backbone.hila.23.bottom_up.bottomup_attn.relative_position_init"] == (
        pytest.approx((base, wd))
    )
    assert hp["backbone.hila.23.bottom_norm.weight"] == pytest.approx((base, 0.0))
    assert hp["backbone.hila.23.bottom_block.attn.norm.weight"] == pytest.approx((base, 0.0))
    assert hp["sem_seg_head.predictor.weight"] == pytest.approx((10 * base, wd))


def test_swin_hila_param_groups_exempt_the_relative_position_tables():
    """Official HILA-Swin: decay 0 on 'relative_position_bias_table' (Swin's and HILA's) and on
    norms, no head multiplier; HILA's ``relative_position_init`` keeps the decay."""
    cfg = load_config(SWIN_S234)
    model = build_model(cfg)
    hp = hyperparams_by_name(model, build_optimizer(cfg, model))
    base, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    for tag in ("12", "23", "34"):
        pair = f"backbone.hila.{tag}"
        assert hp[f"{pair}.top_down.topdown_attn.relative_position_bias_table"] == (
            pytest.approx((base, 0.0))
        )
        assert hp[f"{pair}.top_down.topdown_attn.relative_position_init"] == (
            pytest.approx((base, wd))
        )
        assert hp[f"{pair}.bottom_block.attn.relative_position_bias_table"] == (
            pytest.approx((base, 0.0))
        )
        assert hp[f"{pair}.bottom_up.norm5.weight"] == pytest.approx((base, 0.0))
        assert hp[f"{pair}.bottom_up.bottomup_attn.q.weight"] == pytest.approx((base, wd))
    assert hp["sem_seg_head.predictor.weight"] == pytest.approx((base, wd))


def drop_rate(module: nn.Module) -> float:
    return getattr(module, "drop_prob", 0.0)  # nn.Identity when the rate is 0


def test_mit_hila_blocks_have_no_drop_path():
    """Official MiT-HILA builds TD, BU and the extra lower block with ``dpr[0]`` = 0, whatever
    the encoder's drop-path rate (0.1 in these configs)."""
    cfg = load_config(MIT_S3)
    assert cfg.MODEL.MIT.DROP_PATH_RATE == 0.1
    pair = build_model(cfg).backbone.hila["23"]
    assert drop_rate(pair.top_down.drop_path) == 0.0
    assert drop_rate(pair.bottom_up.drop_path) == 0.0
    assert drop_rate(pair.bottom_block.drop_path1) == drop_rate(pair.bottom_block.drop_path2) == 0


def test_swin_hila_lower_block_drops_like_the_top_stages_first_block():
    """Official HILA-Swin: TD, BU and ``bottom_sa`` use the drop-path rate of the upper stage's
    first block (linspace(0, 0.3, 12) at indices 2, 4, 10)."""
    backbone = build_model(load_config(SWIN_S234)).backbone
    rates = torch.linspace(0, 0.3, 12)
    for tag, first_block in (("12", 2), ("23", 4), ("34", 10)):
        pair = backbone.hila[tag]
        expected = pytest.approx(rates[first_block].item())
        assert drop_rate(pair.top_down.drop_path) == expected
        assert drop_rate(pair.bottom_up.drop_path) == expected
        assert drop_rate(pair.bottom_block.drop_path1) == expected


def assert_official_init(name: str, module: nn.Module) -> None:
    """Linear: trunc-normal std 0.02, zero bias; LayerNorm (1, 0); Conv2d normal with std
    sqrt(2 / (k * k * out / groups)), zero bias; HILA's position tensors zero."""
    if isinstance(module, nn.Linear):
        assert module.weight.std().item() == pytest.approx(0.02, rel=0.15), name
        assert module.weight.abs().max().item() < 0.02 * 6, name
        assert module.bias is None or torch.all(module.bias == 0), name
    elif isinstance(module, nn.LayerNorm):
        assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    elif isinstance(module, nn.Conv2d):
        k_h, k_w = module.kernel_size
        std = math.sqrt(2.0 / (k_h * k_w * module.out_channels // module.groups))
        assert module.weight.std().item() == pytest.approx(std, rel=0.15), name
        assert torch.all(module.bias == 0), name
    for local, param in module.named_parameters(recurse=False):
        if local.startswith("relative_position_") and name.split(".")[-1].endswith("_attn"):
            assert torch.all(param == 0), f"{name}.{local}"


@pytest.mark.parametrize("config", [MIT_S3, SWIN_S234])
def test_every_hila_module_starts_from_the_official_initialisation(config):
    torch.manual_seed(0)
    backbone = build_model(load_config(config, "MODEL.HILA.STAGES", "[2, 3, 4]")).backbone
    checked = 0
    for name, module in backbone.hila.named_modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Conv2d)) or name.endswith("_attn"):
            assert_official_init(name, module)
            checked += 1
    assert checked > 60
    for pair in backbone.hila.values():
        assert torch.all(pair.top_down.topdown_attn.position_bias() == 0)
        assert torch.all(pair.bottom_up.bottomup_attn.position_bias() == 0)


ADE = "configs/ade20k/semantic-segmentation/hila"
CITY = "configs/cityscapes/semantic-segmentation/hila"
SWIN = "configs/ade20k/semantic-segmentation/swin"
# Each shipped HILA config -> the official config's (images per batch on 8 GPUs, iterations,
# strides, decode-head width, lower block copied from the lower stage): docs/design/hila.md §6.
OFFICIAL_RECIPES = {
    f"{ADE}/hila_mit_b0_s3_160k.yaml": (32, 160_000, [1, 1, 1, 1], 256, False),
    f"{ADE}/hila_mit_b0_s3_160k_nohilapretraining.yaml": (16, 160_000, [1, 1, 1, 1], 256, True),
    f"{ADE}/hila_mit_b1_s3_160k.yaml": (32, 160_000, [1, 1, 1, 1], 256, False),
    f"{ADE}/hila_mit_b1_s3_160k_nohilapretraining.yaml": (32, 160_000, [1, 1, 1, 1], 256, True),
    f"{ADE}/hila_mit_b1_s234_160k.yaml": (32, 160_000, [1, 1, 1, 1], 256, False),
    f"{ADE}/hila_mit_b2_s234_320k_nohilapretraining.yaml": (32, 320_000, [1, 1, 3, 1], 768, True),
    f"{CITY}/hila_mit_b0_s3_160k.yaml": (16, 160_000, [1, 1, 1, 1], 256, False),
    f"{CITY}/hila_mit_b0_s3_160k_nohilapretraining.yaml": (16, 160_000, [1, 1, 1, 1], 256, True),
    f"{CITY}/hila_mit_b1_s3_160k.yaml": (16, 160_000, [1, 1, 1, 1], 256, False),
    f"{CITY}/hila_mit_b1_s3_160k_nohilapretraining.yaml": (16, 160_000, [1, 1, 1, 1], 256, True),
    f"{CITY}/hila_mit_b1_s234_160k.yaml": (16, 160_000, [1, 1, 1, 1], 256, False),
    f"{CITY}/hila_mit_b2_s234_320k_nohilapretraining.yaml": (8, 320_000, [1, 1, 3, 1], 768, True),
    f"{SWIN}/hila_upernet_swin_t_s234_160k_nohilapretraining.yaml": (
        32, 160_000, [1, 1, 2, 1], None, True
    ),
}


@pytest.mark.parametrize("config", sorted(OFFICIAL_RECIPES))
def test_shipped_hila_configs_train_with_the_official_recipe(config):
    """Batch, schedule, strides, head width and the lower-block copy per config, and the common
    optimisation: AdamW 6e-5, betas (0.9, 0.999), decay 0.01 (0 on norms), linear warmup of 1500
    iterations from 1e-6 then poly power 1, head dropout 0.1, HILA with one head and info weights
    (0.5, 0.5); MiT: drop path 0.1 and head LR x10; Swin: drop path 0.3, no head multiplier."""
    batch, iterations, strides, embed_dim, copy_lower = OFFICIAL_RECIPES[config]
    cfg = load_config(config)
    solver, hila = cfg.SOLVER, cfg.MODEL.HILA
    assert (solver.IMS_PER_BATCH, solver.MAX_ITER, list(hila.STRIDES)) == (
        batch, iterations, strides
    )
    assert hila.INIT_BOTTOM_FROM_LOWER_STAGE == copy_lower
    assert (solver.OPTIMIZER, solver.BASE_LR, tuple(solver.BETAS)) == ("ADAMW", 6e-5, (0.9, 0.999))
    assert (solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM) == (0.01, 0.0)
    assert (solver.LR_SCHEDULER_NAME, solver.POLY_LR_POWER) == ("WarmupPolyLR", 1.0)
    assert (solver.WARMUP_METHOD, solver.WARMUP_ITERS, solver.WARMUP_FACTOR) == (
        "linear", 1500, 1e-6
    )
    assert cfg.MODEL.SEM_SEG_HEAD.DROPOUT == 0.1
    assert (hila.NUM_HEADS, tuple(hila.INFO_WEIGHTS)) == (1, (0.5, 0.5))
    if embed_dim is None:  # Swin + UperNet
        assert cfg.MODEL.HILA_D2_SWIN.DROP_PATH_RATE == 0.3
        assert solver.HEAD_LR_MULTIPLIER == 1.0
    else:
        assert cfg.MODEL.MIT.DROP_PATH_RATE == 0.1
        assert solver.HEAD_LR_MULTIPLIER == 10.0
        assert cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM == embed_dim
