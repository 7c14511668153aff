"""The HILA warmup (SOLVER.HILA_WARMUP_ITERS): ``HILAPair.set_strength`` scales what each step
changes, strength 0 gives the plain encoder's token streams, every parameter stays in the loss,
``HILAWarmup`` ramps the strength from the trainer's iteration (resumes included), and
train_net.py's trainer runs it first; bad values are refused with the key named."""
import itertools
from types import SimpleNamespace

import pytest
import torch
from project_config import load_config, load_train_net

import hila_d2
from hila_d2.hooks import HILAWarmup, build_hila_warmup, set_hila_strength
from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.hila import HILASettings
from hila_d2.modeling.hila.pair import HILAPair

CONFIG = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"


def mit(stages=()):
    torch.manual_seed(0)
    hila = HILASettings(stages=stages)
    return MixVisionTransformer(variant="B0", depths=(1, 2, 2, 2), drop_path_rate=0.0, hila=hila)


def image():
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def test_strength_zero_gives_the_plain_encoder_streams():
    """MiT-B0 + S3 (pair 23) at strength 0, with the plain encoder's weights: res2, res4 and res5
    are the plain encoder's exactly; res3 is the plain res3 through the pair's bottom_norm."""
    plain, hila = mit().eval(), mit((3,)).eval()
    missing, unexpected = hila.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("hila.23.") for k in missing)
    assert set_hila_strength(hila, 0.0) == 1
    bottom_norm = hila.hila["23"].bottom_norm
    with torch.no_grad():
        bottom_norm.weight.uniform_(0.5, 2.0)  # not the identity on normalised tokens
        expected, outputs = plain(image()), hila(image())
        for stage in ("res2", "res4", "res5"):
            assert torch.equal(outputs[stage], expected[stage]), stage
        res3 = bottom_norm(expected["res3"].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(outputs["res3"], res3)
        set_hila_strength(hila, 1.0)
        full = hila(image())
    assert not torch.allclose(full["res4"], expected["res4"], atol=1e-2)  # HILA acts at 1


def test_strength_one_is_the_unscaled_forward():
    model = mit((2, 3, 4)).eval()
    with torch.no_grad():
        default = model(image())
        set_hila_strength(model, 0.3)
        scaled = model(image())
        set_hila_strength(model, 1.0)
        again = model(image())
    for stage, value in default.items():
        assert torch.equal(again[stage], value), stage
        assert not torch.allclose(scaled[stage], value, atol=1e-3), stage


def test_a_step_changes_its_stream_by_strength_times_its_change():
    """A pair over two identity upper blocks (Bottom-Up, Top-Down + lower block, Bottom-Up):
    each step's result is ``before + s * (step(before) - before)``, computed by hand."""
    torch.manual_seed(0)
    lower_block = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU())
    pair = HILAPair(16, 32, lambda x, use_index: lower_block(x)).eval()
    generator = torch.Generator().manual_seed(1)
    top = torch.randn(2, 3, 5, 32, generator=generator)
    bottom = torch.randn(2, 6, 10, 16, generator=generator)
    identity = [lambda x: x, lambda x: x]
    s = 0.3
    pair.set_strength(s)
    with torch.no_grad():
        top_out, bottom_out = pair(top, bottom, identity)
        top1 = top + s * (pair.bottom_up(top, bottom) - top)
        bottom1 = bottom + s * (lower_block(pair.top_down(top1, bottom)) - bottom)
        top2 = top1 + s * (pair.bottom_up(top1, bottom1) - top1)
        torch.testing.assert_close(top_out, top2)
        torch.testing.assert_close(bottom_out, pair.bottom_norm(bottom1))
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\], got 1.5"):
        pair.set_strength(1.5)


@pytest.mark.parametrize("strength", [0.0, 0.25])
def test_every_parameter_stays_in_the_loss_during_warmup(strength):
    """Every parameter gets a gradient (DDP's find_unused_parameters=False holds); at strength 0
    the pairs' are zero (none of their changes reaches the loss), above 0 every pair block's
    are non-zero."""
    model = mit((2, 3, 4)).train()
    set_hila_strength(model, strength)
    sum(v.mean() for v in model(image()).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    steps = [n for n, p in model.named_parameters() if ".bottom_up." in n or ".top_down." in n]
    assert steps
    zero = [n for n in steps if not model.get_parameter(n).grad.any()]
    assert zero == (steps if strength == 0 else []), zero


def test_the_hook_ramps_the_strength_from_the_trainer_iteration():
    model = mit((3,))
    pair = model.hila["23"]
    trainer = SimpleNamespace(model=torch.nn.Sequential(model), start_iter=0, iter=0)
    hook = HILAWarmup(8)
    hook.trainer = trainer
    hook.before_train()
    seen = []
    for trainer.iter in range(10):
        hook.before_step()
        seen.append((pair.strength.item(), pair.scaled))
    assert seen == [(t / 8, True) for t in range(8)] + [(1.0, False)] * 2
    set_hila_strength(model, 0.5)
    hook.after_train()
    assert (pair.strength.item(), pair.scaled) == (1.0, False)
    trainer.start_iter = 6  # a resumed run continues the ramp before its first step
    hook.before_train()
    assert pair.strength.item() == 0.75


def test_the_hook_refuses_a_model_without_hila_pairs():
    hook = HILAWarmup(8)
    hook.trainer = SimpleNamespace(model=mit(), start_iter=0, iter=0)
    with pytest.raises(ValueError, match="SOLVER.HILA_WARMUP_ITERS is set, but the model has no"):
        hook.before_train()
    with pytest.raises(ValueError, match="at least 1 iteration"):
        HILAWarmup(0)


def test_build_hila_warmup_and_validate_config():
    cfg = load_config(CONFIG, "SOLVER.MAX_ITER", "100")
    assert cfg.SOLVER.HILA_WARMUP_ITERS == 0 and build_hila_warmup(cfg) is None
    cfg.SOLVER.HILA_WARMUP_ITERS = 40
    assert build_hila_warmup(cfg).iters == 40
    hila_d2.validate_config(cfg)
    for value, stages, message in [
        (-1, [3], r"must be an integer in \[0, SOLVER.MAX_ITER = 100\), got -1"),
        (100, [3], r"must be an integer in \[0, SOLVER.MAX_ITER = 100\), got 100"),
        (40, [], "but MODEL.HILA.STAGES is empty"),
    ]:
        bad = cfg.clone()
        bad.SOLVER.HILA_WARMUP_ITERS, bad.MODEL.HILA.STAGES = value, stages
        with pytest.raises(ValueError, match=message):
            build_hila_warmup(bad)
        with pytest.raises(ValueError, match=message):
            hila_d2.validate_config(bad)


@pytest.mark.slow
def test_train_net_trainer_warms_up_first(tmp_path):
    """train_net.py's Trainer with SOLVER.HILA_WARMUP_ITERS 4 over 6 iterations: HILAWarmup is
    its first hook; the pair's strength in the training forwards is 0, 1/4, 1/2, 3/4, 1, 1, and
    1 in the final evaluation."""
    cfg = load_config(
        CONFIG,
        "SOLVER.MAX_ITER", "6",
        "SOLVER.HILA_WARMUP_ITERS", "4",
        "SOLVER.IMS_PER_BATCH", "2",
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    batch = [
        {"image": torch.rand(3, 64, 64, generator=generator) * 255,
         "sem_seg": torch.randint(0, 7, (64, 64), generator=generator)}
        for _ in range(2)
    ]  # fmt: skip
    train_net = load_train_net()
    strengths = []

    class InMemoryTrainer(train_net.Trainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return itertools.repeat(batch)

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            strengths.append(("test", model.backbone.hila["23"].strength.item()))
            return {}

    trainer = InMemoryTrainer(cfg)
    assert isinstance(trainer._hooks[0], HILAWarmup) and trainer._hooks[0].iters == 4
    pair = trainer.model.backbone.hila["23"]
    trainer.model.backbone.register_forward_pre_hook(
        lambda m, args: strengths.append(pair.strength.item())
    )
    trainer.train()
    assert strengths == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, ("test", 1.0)]
