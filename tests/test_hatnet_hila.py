"""HILA inside HAT-Net: the shared HILAPair wired as in MiT (the next stage reads the lower
tokens before the pair updates them, the pair's normalised lower tokens are that stage's output),
gradients at odd sizes, and the lower-level block copied from the lower stage on loading."""
import pytest
import torch

from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.modeling.backbone.hatnet import HATNet, HATNetBlock
from hila_d2.modeling.hila import HILASettings
from hila_d2.modeling.hila.pair import HILAPair


def hila_hatnet(stages, **kwargs) -> HATNet:
    torch.manual_seed(0)
    return HATNet(variant="T", drop_path_rate=0.0, hila=HILASettings(stages=tuple(stages), **kwargs))


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def test_pairs_are_the_shared_hila_module_with_a_lower_stage_block():
    model = hila_hatnet([2, 3, 4])
    assert list(model.hila) == ["12", "23", "34"]
    for tag, pair in model.hila.items():
        lower = int(tag[0]) - 1  # 0-based lower stage
        assert isinstance(pair, HILAPair) and isinstance(pair.bottom_block, HATNetBlock)
        reference = model.blocks[lower][-1]
        shapes = {k: v.shape for k, v in pair.bottom_block.state_dict().items()}
        assert shapes == {k: v.shape for k, v in reference.state_dict().items()}
        assert pair.bottom_block.attn.grid_size == reference.attn.grid_size
    assert model.output_shape()["res3"].channels == 96


def test_forward_follows_the_mit_wiring(monkeypatch):
    """Pair 2-3 by hand: stage 3's downsampling reads stage 2's raw output, the pair runs stage
    3's blocks with HILA, its lower tokens become res3; res2 is the plain model's."""
    model = hila_hatnet([3]).eval()
    plain = HATNet(variant="T", drop_path_rate=0.0).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("hila.23.") for k in unexpected)
    x = torch.randn(2, 3, 100, 76)
    with torch.no_grad():
        outputs, plain_outputs = model(x), plain(x)
        # the same weights, through the plain model's modules (the HILA model's blocks carry
        # the hooks that run its pairs)
        s1 = plain.patch_embed(x)
        for block in plain.blocks[0]:
            s1 = block(s1)
        s2 = plain.ds2(s1)
        for block in plain.blocks[1]:
            s2 = block(s2)
        blocks = [lambda t, b=b: nhwc(b(t.permute(0, 3, 1, 2))) for b in plain.blocks[2]]
        s3, res3 = model.hila["23"](nhwc(plain.ds3(s2)), nhwc(s2), blocks)
        s4 = plain.ds4(s3.permute(0, 3, 1, 2))
        for block in plain.blocks[3]:
            s4 = block(s4)
    torch.testing.assert_close(outputs["res2"], plain_outputs["res2"], rtol=0, atol=0)
    torch.testing.assert_close(outputs["res3"], res3.permute(0, 3, 1, 2), rtol=0, atol=0)
    torch.testing.assert_close(outputs["res4"], s3.permute(0, 3, 1, 2), rtol=0, atol=0)
    torch.testing.assert_close(outputs["res5"], s4, rtol=0, atol=0)
    # HILA changes every stage from the pair up
    for name in ("res3", "res4", "res5"):
        assert (outputs[name] - plain_outputs[name]).abs().max() > 1e-3
    # res3 is LayerNorm-ed over channels by the pair's bottom_norm (weight 1, bias 0 at init)
    torch.testing.assert_close(outputs["res3"].mean(1), torch.zeros(2, 13, 10), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stages, strides", [([2, 3, 4], (1, 1, 2, 1)), ([3], (1, 1, 1, 1))])
def test_every_hila_parameter_gets_a_gradient_at_an_odd_size(stages, strides):
    model = hila_hatnet(stages, strides=strides).train()
    outputs = model(torch.randn(2, 3, 97, 75))
    assert [o.shape[-2:] for o in outputs.values()] == [(25, 19), (13, 10), (7, 5), (4, 3)]
    sum(out.square().mean() for out in outputs.values()).backward()
    for tag, pair in model.hila.items():
        for name, p in pair.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"hila.{tag}.{name}"


def test_lower_block_is_copied_from_the_lower_stage_when_the_weights_lack_it(tmp_path):
    source = HATNet(variant="T").state_dict()  # plain weights, e.g. converted ImageNet ones
    model = hila_hatnet([2, 3], init_bottom_from_lower_stage=True)
    torch.save({"model": source}, tmp_path / "plain.pth")
    # only the pairs' own Top-Down / Bottom-Up / norm weights may stay missing
    exempt = [f"hila.*.{module}.*" for module in ("top_down", "bottom_up", "bottom_norm")]
    ValidatingCheckpointer(model, optional_keys=exempt).load(str(tmp_path / "plain.pth"))
    for tag, lower, last in (("12", 0, 1), ("23", 1, 1)):
        copied = model.hila[tag].bottom_block.state_dict()
        for name, value in copied.items():
            torch.testing.assert_close(value, source[f"blocks.{lower}.{last}.{name}"], rtol=0, atol=0)
