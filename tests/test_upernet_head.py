"""UperNet head: shapes, wiring values, losses and their weights, auxiliary head, config, size."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head

from hila_d2.modeling.heads.upernet_head import UPerNetHead

from project_config import default_config

SHAPES = {
    "res2": ShapeSpec(channels=8, stride=4),
    "res3": ShapeSpec(channels=12, stride=8),
    "res4": ShapeSpec(channels=16, stride=16),
    "res5": ShapeSpec(channels=20, stride=32),
}
CH = 16  # UperNet width in the small heads
K = 5


def features(batch=2, height=64, width=96):
    """Backbone-like maps of size ceil(H / stride) x ceil(W / stride)."""
    return {
        name: torch.randn(batch, spec.channels, -(-height // spec.stride), -(-width // spec.stride))
        for name, spec in SHAPES.items()
    }


def make_head(aux=True, **kwargs):
    torch.manual_seed(0)
    args = dict(num_classes=K, channels=CH, pool_scales=(1, 2, 3, 6), dropout=0.1, norm="BN")
    if aux:
        args.update(aux_input_shape={"res4": SHAPES["res4"]}, aux_channels=8, aux_loss_weight=0.4)
    args.update(kwargs)
    return UPerNetHead(SHAPES, **args)


def randomize_norm_statistics(head):
    """Non-trivial eval-mode BN (random affine and running statistics), so wiring errors show."""
    torch.manual_seed(1)
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(std=0.5)


def head_cfg():
    return default_config(
        **{
            "MODEL.SEM_SEG_HEAD.NAME": "UPerNetHead",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 7,
            "MODEL.SEM_SEG_HEAD.NORM": "BN",
            "MODEL.SEM_SEG_HEAD.UPERNET.CHANNELS": 32,
            "MODEL.SEM_SEG_HEAD.UPERNET.POOL_SCALES": (1, 3),
        }
    )


@pytest.mark.parametrize("size, padded", [((64, 96), (64, 96)), ((65, 97), (68, 100))])
def test_inference_logits_at_padded_input_resolution_without_running_aux(size, padded):
    head = make_head().eval()
    calls = []
    head.aux_head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        logits, losses = head(features(2, *size), None)
    assert logits.shape == (2, K, *padded) and losses == {} and not calls


def test_pyramid_pooling_concatenates_input_then_pooled_branches():
    """The bottleneck reads [res5, scale-1 branch, ...]; the scale-1 branch is the 1x1 conv (with
    norm and ReLU) of the global mean, broadcast over the coarsest map."""
    head = make_head().eval()
    randomize_norm_statistics(head)
    feats = features(batch=2, height=65, width=97)
    captured = []
    head.bottleneck.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    with torch.no_grad():
        head.layers(feats)
        res5 = feats["res5"]
        global_branch = head.ppm[0][1](res5.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, 3, 4)
    (bottleneck_in,) = captured
    assert bottleneck_in.shape == (2, 20 + 4 * CH, 3, 4)
    torch.testing.assert_close(bottleneck_in[:, :20], res5)
    torch.testing.assert_close(bottleneck_in[:, 20 : 20 + CH], global_branch)


def test_layers_match_a_written_out_reference():
    """PPM -> laterals -> top-down sums -> FPN convs -> resize to the finest level -> concat
    (finest first) -> fuse -> classifier, with bilinear resizing (align_corners=False)."""
    head = make_head().eval()
    randomize_norm_statistics(head)
    feats = features(batch=2, height=65, width=97)

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    with torch.no_grad():
        c2, c3, c4, c5 = (feats[n] for n in ("res2", "res3", "res4", "res5"))
        ppm = [up(branch(c5), c5) for branch in head.ppm]
        p5 = head.bottleneck(torch.cat([c5] + ppm, dim=1))
        l4 = head.lateral_convs[2](c4) + up(p5, c4)
        l3 = head.lateral_convs[1](c3) + up(l4, c3)
        l2 = head.lateral_convs[0](c2) + up(l3, c2)
        p4, p3, p2 = head.fpn_convs[2](l4), head.fpn_convs[1](l3), head.fpn_convs[0](l2)
        fused = head.fpn_bottleneck(torch.cat([p2, up(p3, p2), up(p4, p2), up(p5, p2)], dim=1))
        expected = head.predictor(fused)
        torch.testing.assert_close(head.layers(feats), expected, atol=1e-5, rtol=1e-5)


def test_training_losses_and_their_weights():
    head = make_head(dropout=0.0, loss_weight=0.7).train()
    feats = features(batch=2, height=65, width=97)
    torch.manual_seed(2)
    targets = torch.randint(0, K, (2, 65, 97))
    targets[:, :9] = 255
    _, losses = head(feats, targets)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    assert all(torch.isfinite(v) for v in losses.values())

    def cross_entropy(logits):
        up = F.interpolate(logits, size=(65, 97), mode="bilinear", align_corners=False)
        return F.cross_entropy(up, targets, ignore_index=255)

    # train mode, no dropout: the same batch statistics give the same logits again
    with torch.no_grad():
        main = cross_entropy(head.layers(feats))
        aux = cross_entropy(head.aux_head(feats["res4"]))
    torch.testing.assert_close(losses["loss_sem_seg"], 0.7 * main, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses["loss_sem_seg_aux"], 0.4 * aux, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_every_parameter():
    head = make_head().train()
    targets = torch.randint(0, K, (2, 64, 96))
    _, losses = head(features(), targets)
    sum(losses.values()).backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad


def test_no_aux_head_when_its_loss_weight_is_zero():
    cfg = head_cfg()
    cfg.MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT = 0.0
    cfg.MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE = "not_a_feature"  # unused, so not checked
    head = build_sem_seg_head(cfg, SHAPES).train()
    assert head.aux_head is None
    assert not [n for n, _ in head.named_parameters() if "aux" in n]
    _, losses = head(features(), torch.randint(0, 7, (2, 64, 96)))
    assert set(losses) == {"loss_sem_seg"}


def test_build_from_config():
    cfg = head_cfg()
    cfg.MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT = 0.4
    head = build_sem_seg_head(cfg, SHAPES)
    assert isinstance(head, UPerNetHead)
    assert head.in_features == ["res2", "res3", "res4", "res5"] and head.common_stride == 4
    assert head.predictor.out_channels == 7 and head.predictor.in_channels == 32
    assert [branch[0].output_size for branch in head.ppm] == [1, 3]
    assert head.bottleneck.in_channels == 20 + 2 * 32
    assert head.fpn_bottleneck.in_channels == 4 * 32
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1
    assert isinstance(head.bottleneck.norm, torch.nn.BatchNorm2d) and head.bottleneck.bias is None
    assert head.aux_in_feature == "res4" and head.aux_loss_weight == 0.4
    assert head.aux_head[0].in_channels == 16 and head.aux_head[0].out_channels == 256
    assert head.aux_head[2].out_channels == 7


def test_missing_features_are_clear_errors():
    cfg = head_cfg()
    cfg.MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT = 0.4
    cfg.MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE = "res6"
    with pytest.raises(ValueError, match=r"AUX.IN_FEATURE 'res6'.*backbone output"):
        build_sem_seg_head(cfg, SHAPES)
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "p6"]
    with pytest.raises(ValueError, match=r"IN_FEATURES.*p6"):
        build_sem_seg_head(cfg, SHAPES)


def test_swin_t_upernet_parameter_count():
    """Swin-T levels (96/192/384/768 channels), width 512, pool scales (1, 2, 3, 6), 150 classes,
    BN, aux head on res4 with 256 channels: mmseg's UperNet Swin-T has 59.94 M parameters with a
    27.521 M backbone, i.e. a 32.42 M head."""
    in_channels, width, scales, classes = [96, 192, 384, 768], 512, (1, 2, 3, 6), 150
    shapes = {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2**i) for i, c in enumerate(in_channels)}
    head = UPerNetHead(
        shapes,
        num_classes=classes,
        channels=width,
        pool_scales=scales,
        norm="BN",
        aux_input_shape={"res4": shapes["res4"]},
        aux_channels=256,
    )

    def conv_bn(cin, cout, k):  # bias-free k x k conv + BN (weight, bias)
        return cin * cout * k * k + 2 * cout

    def classifier(cin):  # 1x1 conv with bias
        return cin * classes + classes

    ppm = len(scales) * conv_bn(in_channels[-1], width, 1)
    bottleneck = conv_bn(in_channels[-1] + len(scales) * width, width, 3)
    laterals = sum(conv_bn(c, width, 1) for c in in_channels[:-1])
    fpn_convs = (len(in_channels) - 1) * conv_bn(width, width, 3)
    fpn_bottleneck = conv_bn(len(in_channels) * width, width, 3)
    main = ppm + bottleneck + laterals + fpn_convs + fpn_bottleneck + classifier(width)
    aux = conv_bn(384, 256, 3) + classifier(256)
    expected = main + aux
    assert (main, aux, expected) == (31_497_366, 923_798, 32_421_164)

    count = sum(p.numel() for p in head.parameters())
    assert count == expected
    assert abs(count - (59.94e6 - 27.521e6)) < 0.01e6
