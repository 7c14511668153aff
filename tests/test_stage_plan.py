"""Encoders build only what produces their requested outputs (hila_d2.modeling.backbone.stage_plan):
every trainable parameter gets a gradient for any OUT_FEATURES subset and any HILA stages, the
outputs equal those of the full model with the same seed, and checkpoints of the full model load.
"""
import pytest
import torch
from torch import nn

from hila_d2.checkpoint.loading import CheckpointError, ValidatingCheckpointer
from hila_d2.modeling.backbone.hatnet import HATNet
from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.backbone.stage_plan import plan_encoder
from hila_d2.modeling.backbone.swin import SwinTransformerBackbone
from hila_d2.modeling.hila import HILASettings
from hila_d2.modeling.hila.schedule import hila_schedule, plan_pair

ALL = ("res2", "res3", "res4", "res5")
BUILDERS = {
    "mit": lambda out, hila: MixVisionTransformer(variant="B0", out_features=out, hila=hila),
    "swin": lambda out, hila: SwinTransformerBackbone(
        variant="T", window_size=2, out_features=out, hila=hila
    ),
    "hatnet": lambda out, hila: HATNet(
        variant="T", dims=(48, 48, 48, 48), depths=(1, 2, 3, 2), out_features=out, hila=hila
    ),
}
SUBSETS = [("res2", "res3", "res5"), ("res4",), ("res2", "res5")]


def settings(encoder: str, stages, parity: bool = True) -> HILASettings:
    ratio = 2.0 if encoder == "swin" else 4.0
    return HILASettings(stages=stages, mlp_ratio=2.0, bottom_mlp_ratio=ratio, parity_mode=parity)


CASES = [("mit", (), True, ("res2", "res3")), ("swin", (), True, ("res2", "res5"))] + [
    pytest.param(
        encoder, stages, parity, out,
        # Swin-T + S234 costs ~1.7 s a case: one case in the fast loop, the others slow
        marks=[pytest.mark.slow]
        if encoder == "swin" and (parity, out) != (True, SUBSETS[0])
        else [],
    )
    for encoder in BUILDERS
    for stages in ([(2, 3, 4)] if encoder == "swin" else [(3,), (2, 3, 4)])
    for parity in ([True, False] if encoder == "swin" else [True])
    for out in SUBSETS
]


@pytest.mark.parametrize("encoder,stages,parity,out", CASES)
def test_every_parameter_takes_part_and_outputs_equal_the_full_model(encoder, stages, parity, out):
    hila = settings(encoder, stages, parity)
    torch.manual_seed(0)
    full = BUILDERS[encoder](ALL, hila).eval()
    torch.manual_seed(0)
    model = BUILDERS[encoder](out, hila)
    x = torch.randn(2, 3, 45, 39)
    outputs = model.train()(x)
    assert sorted(outputs) == sorted(out)
    sum(v.square().mean() for v in outputs.values()).backward()
    no_gradient = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_gradient
    with torch.no_grad():
        expected, actual = full(x), model.eval()(x)
    for name in out:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6)
    # what was dropped is exactly what the full model has beyond this one
    assert set(model.unbuilt_keys) == set(full.state_dict()) - set(model.state_dict())


def test_s234_under_a_res2_res3_res5_head_drops_only_the_unread_norm():
    """The case that stopped DDP training: stage 3's tokens normalised for an unread res4."""
    model = BUILDERS["mit"](("res2", "res3", "res5"), settings("mit", (2, 3, 4)))
    assert model.unbuilt_keys == ("hila.34.bottom_norm.bias", "hila.34.bottom_norm.weight")


def test_stages_above_the_highest_output_are_not_built():
    model = BUILDERS["mit"](("res2", "res3"), HILASettings())
    assert len(model.stages) == 2 and not any(k.startswith("stages.2") for k in model.state_dict())
    # res4 is pair 3-4's update of the stage-3 tokens: stage 4 runs up to its last Top-Down
    # step, after block 1 of 2; block 2 and the stage-4 norm would feed nothing
    model = BUILDERS["mit"](("res4",), settings("mit", (3, 4)))
    assert len(model.stages) == 4 and len(model.stages[3].blocks) == 1
    assert model.stages[3].norm is None


@pytest.mark.parametrize("depth,stride,norm_every_step", [(2, 1, False), (6, 2, True), (5, 3, False)])
def test_a_pair_whose_outputs_are_all_used_runs_its_whole_schedule(depth, stride, norm_every_step):
    plan = plan_pair(depth, stride, norm_every_step)
    schedule = hila_schedule(depth, stride)
    assert plan.bottom_up == tuple(b for b, _ in schedule)
    assert plan.top_down == tuple(t for _, t in schedule)
    assert plan.step_norm == tuple(norm_every_step and not t for _, t in schedule)
    assert plan.final_norm == (not norm_every_step) and plan.blocks == depth


def test_a_pair_without_its_lower_output_keeps_the_steps_that_feed_the_upper_stage():
    plan = plan_pair(3, 1, False, top_used=True, bottom_used=False)
    # Top-Down after block 0 feeds Bottom-Up 1, after block 1 Bottom-Up 2; nothing reads the norm
    assert plan.top_down == (True, True, False) and not plan.final_norm
    plan = plan_pair(3, 1, False, top_used=False, bottom_used=True)
    assert plan.blocks == 2 and plan.bottom_up == (True, True, False)  # block 2 feeds nothing


def test_a_pair_without_top_down_steps_is_an_error():
    with pytest.raises(ValueError, match=r"MODEL\.HILA\.STRIDES\[3\] = 2 .* stage 4"):
        plan_encoder((2, 2, 2, 2), ALL, HILASettings(stages=(4,), strides=(1, 1, 1, 2)))


class _Wrapper(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def test_a_full_model_checkpoint_loads_into_a_pruned_model(tmp_path):
    hila = settings("mit", (2, 3, 4))
    torch.manual_seed(1)
    full = _Wrapper(BUILDERS["mit"](ALL, hila))
    torch.save({"model": full.state_dict()}, tmp_path / "full.pth")
    torch.manual_seed(2)
    pruned = _Wrapper(BUILDERS["mit"](("res2", "res3"), hila))
    ValidatingCheckpointer(pruned).load(str(tmp_path / "full.pth"))
    for key, value in pruned.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key], rtol=0, atol=0)
    # a key that is neither built nor dropped by the plan is still an error
    state = dict(full.state_dict(), **{"backbone.stages.0.extra": torch.zeros(1)})
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"backbone\.stages\.0\.extra"):
        ValidatingCheckpointer(pruned).load(str(tmp_path / "bad.pth"))
