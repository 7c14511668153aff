"""HILA inside Swin (docs/design/hila.md §4.2): call order, the stateless lower-level block,
outputs, gradients, odd sizes, parameter counts of the UperNet configurations, and the
"no HILA pretraining" initialisation."""
import pytest
import torch
from detectron2.modeling import build_model

from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.modeling.backbone.swin import SwinBlock, SwinTransformerBackbone
from hila_d2.modeling.hila import HILASettings
from project_config import load_config

SWIN = "configs/ade20k/semantic-segmentation/swin/"
S234 = HILASettings(stages=(2, 3, 4), strides=(1, 1, 2, 1), mlp_ratio=2.0, bottom_mlp_ratio=2.0)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def record_calls(swin: SwinTransformerBackbone) -> list:
    """Names of the modules in the order they run, as in docs/design/hila.md §4.2."""
    calls, names = [], {}
    for s, stage in enumerate(swin.layers):
        for b, block in enumerate(stage.blocks):
            names[block] = f"L{s}blk{b}"
    for tag, pair in swin.hila.items():
        names.update({pair.bottom_up: f"BU{tag}", pair.top_down: f"TD{tag}",
                      pair.bottom_block: f"BSA{tag}", pair.bottom_norm: f"BNORM{tag}"})
    names[swin.norm3] = "norm3"
    for module, name in names.items():  # before the HILA pairs' own hooks on the blocks
        module.register_forward_hook(lambda m, i, o, name=name: calls.append(name), prepend=True)
    return calls


def test_call_order_of_the_official_swin_t_configuration():
    """The official order, with norm0..2 (computed but discarded there) not built here."""
    swin = SwinTransformerBackbone(variant="T", hila=S234).eval()
    calls = record_calls(swin)
    with torch.no_grad():
        swin(torch.randn(1, 3, 64, 64))
    assert " ".join(calls) == (
        "L0blk0 L0blk1 BU12 L1blk0 TD12 BSA12 BU12 L1blk1 BNORM12 "
        "BU23 L2blk0 BNORM23 L2blk1 TD23 BSA23 BU23 L2blk2 BNORM23 L2blk3 TD23 BSA23 BU23 "
        "L2blk4 BNORM23 L2blk5 BNORM23 BU34 L3blk0 TD34 BSA34 BU34 L3blk1 BNORM34 norm3"
    )


def test_clean_mode_normalises_the_lower_tokens_once():
    swin = SwinTransformerBackbone(
        variant="T", hila=HILASettings(stages=(3,), strides=(1, 1, 2, 1), parity_mode=False)
    ).eval()
    calls = record_calls(swin)
    with torch.no_grad():
        swin(torch.randn(1, 3, 64, 64))
    assert calls.count("BNORM23") == 1 and calls.index("BNORM23") > calls.index("L2blk5")


def test_lower_block_alternates_its_shift_and_keeps_no_state(monkeypatch):
    """Uses 0, 1, ... of the lower-level block run with shift 0, 3, 0, ... in every forward pass,
    so the same image twice gives the same output (the official block toggles a persistent
    shift, docs/design/hila.md §11 P8)."""
    torch.manual_seed(0)
    swin = SwinTransformerBackbone(variant="T", hila=S234).eval()
    shifts = []  # explicit shifts: only the lower-level blocks pass one
    original = SwinBlock.forward
    monkeypatch.setattr(
        SwinBlock, "forward",
        lambda self, x, shift_size=None: shifts.append(shift_size) or original(self, x, shift_size),
    )
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        first = swin(x)
        second = swin(x)
    # per pass: pair 12 once, pair 23 twice, pair 34 once
    assert [shift for shift in shifts if shift is not None] == [0, 0, 3, 0] * 2
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_outputs_below_pairs_are_the_pairs_lower_tokens():
    """With HILA, norm0..2 are not built; res2..res4 are the pairs' bottom_norm-ed tokens."""
    swin = SwinTransformerBackbone(variant="T", hila=S234).eval()
    assert [hasattr(swin, f"norm{i}") for i in range(4)] == [False, False, False, True]
    captured = {}
    for tag, pair in swin.hila.items():
        pair.bottom_norm.register_forward_hook(lambda m, i, o, tag=tag: captured.update({tag: o}))
    with torch.no_grad():
        outputs = swin(torch.randn(1, 3, 64, 96))
    for name, tag in (("res2", "12"), ("res3", "23"), ("res4", "34")):
        assert torch.equal(outputs[name], captured[tag].permute(0, 3, 1, 2)), name


def test_hila_off_has_no_hila_parameters_and_keeps_every_norm():
    swin = SwinTransformerBackbone(variant="T")
    assert len(swin.hila) == 0 and not [k for k in swin.state_dict() if k.startswith("hila")]
    assert all(hasattr(swin, f"norm{i}") for i in range(4))


def test_every_parameter_gets_a_gradient_with_hila_on():
    torch.manual_seed(0)
    swin = SwinTransformerBackbone(variant="T", drop_path_rate=0.0, hila=S234)
    outputs = swin(torch.randn(2, 3, 64, 64))
    sum((out ** 2).mean() for out in outputs.values()).backward()
    missing = [n for n, p in swin.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_odd_input_sizes():
    torch.manual_seed(0)
    swin = SwinTransformerBackbone(variant="T", hila=S234).eval()
    for height, width in ((500, 333), (64, 64), (96, 128)):
        with torch.no_grad():
            outputs = swin(torch.randn(1, 3, height, width))
        for (name, out), stride, channels in zip(outputs.items(), (4, 8, 16, 32), (96, 192, 384, 768)):
            assert tuple(out.shape) == (1, channels, -(-height // stride), -(-width // stride))
            assert torch.isfinite(out).all()


def test_hila_drop_path_is_the_upper_stages_first_block_rate():
    """docs/design/hila.md §3: 0.0545 / 0.1091 / 0.2727 for pairs 12 / 23 / 34 at rate 0.3."""
    swin = SwinTransformerBackbone(variant="T", hila=S234)
    rates = [swin.hila[tag].top_down.drop_path.drop_prob for tag in ("12", "23", "34")]
    assert rates == pytest.approx([0.3 * 2 / 11, 0.3 * 4 / 11, 0.3 * 10 / 11])


# docs/design/hila.md §7 (pairs, exact) and §9.2 (segmentors, millions). The official backbone also
# has norm0..norm2 (1,344 parameters), which HILA-Swin computes but never uses; hila_d2 does not
# build them.
UNUSED_OFFICIAL_NORMS = 2 * (96 + 192 + 384)


def test_pair_parameter_counts():
    swin = SwinTransformerBackbone(variant="T", hila=S234)
    assert {tag: count(pair) for tag, pair in swin.hila.items()} == {
        "12": 379_675, "23": 1_496_566, "34": 5_942_188,
    }
    assert round((count(swin) + UNUSED_OFFICIAL_NORMS) / 1e6, 3) == 35.339


@pytest.mark.parametrize(
    "config, millions, official_unused",
    [
        ("upernet_swin_t_160k.yaml", 59.94, 0),
        ("hila_upernet_swin_t_s234_160k.yaml", 67.76, UNUSED_OFFICIAL_NORMS),
        ("hila_upernet_swin_t_s234_160k_nohilapretraining.yaml", 68.54, UNUSED_OFFICIAL_NORMS),
    ],
)
def test_upernet_parameter_counts(config, millions, official_unused):
    with torch.device("meta"):
        model = build_model(load_config(SWIN + config, "MODEL.DEVICE", "meta"))
    assert round((count(model) + official_unused) / 1e6, 2) == millions


def test_no_hila_pretraining_copies_the_lower_stages_last_block(tmp_path):
    torch.manual_seed(1)
    plain = SwinTransformerBackbone(variant="T")
    checkpoint = {f"backbone.{k}": v for k, v in plain.state_dict().items()}
    torch.manual_seed(2)
    hila = SwinTransformerBackbone(
        variant="T", hila=HILASettings(stages=(2, 3, 4), strides=(1, 1, 2, 1), mlp_ratio=2.0,
                                       init_bottom_from_lower_stage=True),
    )
    model = torch.nn.Module()
    model.backbone = hila
    torch.save({"model": checkpoint}, tmp_path / "plain.pth")
    # exempt: the pairs' own modules and the stage norms below a pair, not the lower-level blocks
    exempt = [f"backbone.hila.*.{m}.*" for m in ("top_down", "bottom_up", "bottom_norm")]
    ValidatingCheckpointer(model, optional_keys=exempt + ["backbone.norm[012].*"]).load(
        str(tmp_path / "plain.pth")
    )
    for tag, lower in (("12", plain.layers[0]), ("23", plain.layers[1]), ("34", plain.layers[2])):
        source = lower.blocks[-1].state_dict()
        for key, value in hila.hila[tag].bottom_block.state_dict().items():
            assert torch.equal(value, source[key]), (tag, key)
