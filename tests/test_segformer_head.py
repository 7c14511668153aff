"""SegFormer All-MLP head: shapes, fusion order, loss values, ignore label, errors."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head

from hila_d2.modeling.heads.segformer_head import SegFormerHead
from hila_d2.modeling.losses import semantic_segmentation_loss

from project_config import default_config

SHAPES = {
    "res2": ShapeSpec(channels=8, stride=4),
    "res3": ShapeSpec(channels=12, stride=8),
    "res4": ShapeSpec(channels=16, stride=16),
    "res5": ShapeSpec(channels=20, stride=32),
}


def features(batch=2, height=64, width=96):
    return {
        name: torch.randn(batch, spec.channels, height // spec.stride, width // spec.stride)
        for name, spec in SHAPES.items()
    }


def make_head(**kwargs):
    torch.manual_seed(0)
    args = dict(num_classes=5, embed_dim=16, dropout=0.1, norm="BN", ignore_value=255)
    args.update(kwargs)
    return SegFormerHead(SHAPES, **args)


def test_inference_logits_at_input_resolution():
    head = make_head().eval()
    logits, losses = head(features(), None)
    assert logits.shape == (2, 5, 64, 96) and losses == {}


def test_training_returns_the_cross_entropy_of_upsampled_logits():
    head = make_head(dropout=0.0).train()
    feats = features()
    targets = torch.randint(0, 5, (2, 64, 96))
    targets[:, :10] = 255
    _, losses = head(feats, targets)
    logits = head.layers(feats)  # train mode: the same batch statistics, no dropout
    up = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
    valid = targets != 255
    log_probs = up.log_softmax(dim=1)
    expected = -log_probs.gather(1, targets.clamp(max=4)[:, None])[:, 0][valid].mean()
    torch.testing.assert_close(losses["loss_sem_seg"], expected, atol=1e-5, rtol=1e-5)


def test_ignored_pixels_do_not_contribute():
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    targets = torch.full((1, 32, 32), 255, dtype=torch.long)
    targets[0, 5, 7] = 2
    loss = semantic_segmentation_loss(logits, targets, 255)
    up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(loss, -up.log_softmax(1)[0, 2, 5, 7])


def test_all_ignored_gives_zero_loss_with_gradient_path():
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    loss = semantic_segmentation_loss(logits, torch.full((1, 32, 32), 255), 255)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_out_of_range_label_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[7\].*NUM_CLASSES"):
        semantic_segmentation_loss(torch.randn(1, 3, 8, 8), torch.full((1, 32, 32), 7), 255)


def test_fuse_concatenates_coarsest_level_first():
    """Only res5 is non-zero after embedding, so the fused map uses the first E input channels of
    the fuse weight, as in SegFormer's (c4, c3, c2, c1) order that converted checkpoints rely on."""
    head = make_head(dropout=0.0).eval()
    feats = features(batch=1)
    with torch.no_grad():
        for embed in head.embeds[:3]:
            embed.weight.zero_()
            embed.bias.zero_()
        e4 = head.embeds[3](feats["res5"].flatten(2).transpose(1, 2)).transpose(1, 2)
        e4 = F.interpolate(e4.reshape(1, 16, 2, 3), size=(16, 24), mode="bilinear", align_corners=False)
        pre_norm = F.conv2d(e4, head.fuse.weight[:, :16])
        expected = head.predictor(F.relu(head.fuse.norm(pre_norm)))
        torch.testing.assert_close(head.layers(feats), expected, atol=1e-5, rtol=1e-5)


def test_from_config_and_missing_feature_error():
    cfg = default_config(
        **{
            "MODEL.SEM_SEG_HEAD.NAME": "SegFormerHead",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 7,
            "MODEL.SEM_SEG_HEAD.NORM": "BN",
        }
    )
    head = build_sem_seg_head(cfg, SHAPES)
    assert isinstance(head, SegFormerHead)
    assert head.predictor.out_channels == 7 and head.embeds[0].out_features == 256
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1
    assert isinstance(head.fuse.norm, torch.nn.BatchNorm2d)
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "p6"]
    with pytest.raises(ValueError, match=r"IN_FEATURES.*p6"):
        build_sem_seg_head(cfg, SHAPES)
