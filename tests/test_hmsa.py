"""Hierarchical multi-scale attention: the fusion against hand-computed values and the spec's
closed form, the model against the plain single-scale segmentor and the recursive N-scale
definition, attention forced to 0 and 1, training losses and gradients, flip TTA, odd sizes,
other heads and backbones, checkpoints from single-scale models, and errors naming the keys."""

import pytest
import torch
import torch.nn.functional as F
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from project_config import REPO, load_config
from torch import nn

import hila_d2
from hila_d2.modeling.heads.head_features import head_forward_features
from hila_d2.modeling.meta_arch.hmsa import fuse_hierarchically

CONFIG = "configs/builtin/semantic-segmentation/hmsa_segformer_mit_b0.yaml"
K = 7  # hila_shapes classes


def build(*opts, config=CONFIG, meta=None, seed=0):
    """The config's model on CPU (SegFormer dropout off, so train mode is deterministic)."""
    cfg = load_config(config, "MODEL.SEM_SEG_HEAD.DROPOUT", "0.0", *opts)
    if meta:
        cfg.MODEL.META_ARCHITECTURE = meta
    torch.manual_seed(seed)
    return build_model(cfg)


def plain_twin(model):
    """``SemanticSegmentor`` with the HMSA model's backbone and head weights."""
    plain = build(meta="SemanticSegmentor", seed=1)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("scale_attn.") for k in unexpected)
    return plain


def images(*sizes, seed=0):
    """Random 0-255 images (3, H, W) of the given sizes."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=generator) * 255 for h, w in sizes]


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def force_attention(monkeypatch, model, value):
    """Make the attention head output ``value`` everywhere (its input's spatial size)."""

    def constant(feats):
        return feats.new_full((feats.shape[0], 1, *feats.shape[-2:]), value)

    monkeypatch.setattr(model.scale_attn, "forward", constant)


# ---------------------------------------------------------------- fusion (pure function)


def test_three_scale_fusion_matches_a_hand_computed_example():
    """docs/design/hmsa.md §4.1 for S = {0.5, 1, 2}: F = U(A.5 P.5) + (1 - U(A.5)) [A1 P1 + (1 - A1)
    D(P2)].

    Maps are 1 class, 2 rows (1 at scale 0.5); every row is the same. By hand, with bilinear
    resizing (align_corners False): D of [0, 8, 0, 8, ...] averages pairs -> 4 everywhere;
    A1 P1 + (1 - A1) 4 = [0.5*2 + 2, 1 + 2, 0.25*4 + 3, 1 + 3] = [3, 3, 4, 4];
    U(A.5 P.5) = U([1, 1.5]) = [1, 1.125, 1.375, 1.5]; U(A.5) = [0.5, 0.4375, 0.3125, 0.25];
    F = [1 + 0.5*3, 1.125 + 0.5625*3, 1.375 + 0.6875*4, 1.5 + 0.75*4] = [2.5, 2.8125, 4.125, 4.5].
    The 2.0 attention is NaN: it must never be read.
    """
    p2 = torch.tensor([0.0, 8.0] * 4).expand(1, 1, 4, 8)
    a2 = torch.full((1, 1, 4, 8), float("nan"))
    p1 = torch.tensor([2.0, 2.0, 4.0, 4.0]).expand(1, 1, 2, 4)
    a1 = torch.tensor([0.5, 0.5, 0.25, 0.25]).expand(1, 1, 2, 4)
    p05 = torch.tensor([[[[2.0, 6.0]]]])
    a05 = torch.tensor([[[[0.5, 0.25]]]])
    fused = fuse_hierarchically(
        [
            (2.0, {"logits": p2, "attn": a2}),
            (1.0, {"logits": p1, "attn": a1}),
            (0.5, {"logits": p05, "attn": a05}),
        ]
    )
    expected = torch.tensor([2.5, 2.8125, 4.125, 4.5]).expand(1, 1, 2, 4)
    torch.testing.assert_close(fused["logits"], expected)


def test_two_scale_fusion_multiplies_before_upsampling():
    """docs/design/hmsa.md §3.1: F = R(A_lo P_lo) + (1 - R(A_lo)) P_hi, which differs from R(A_lo)
    R(P_lo)."""
    torch.manual_seed(0)
    p_lo, a_lo = torch.randn(2, 3, 5, 7), torch.rand(2, 1, 5, 7)
    p_hi = torch.randn(2, 3, 10, 14)
    fused = fuse_hierarchically([(1.0, {"logits": p_hi}), (0.5, {"logits": p_lo, "attn": a_lo})])
    expected = resize(a_lo * p_lo, (10, 14)) + (1 - resize(a_lo, (10, 14))) * p_hi
    torch.testing.assert_close(fused["logits"], expected)
    other_order = (
        resize(a_lo, (10, 14)) * resize(p_lo, (10, 14)) + (1 - resize(a_lo, (10, 14))) * p_hi
    )
    assert not torch.allclose(fused["logits"], other_order, atol=1e-3)


def test_constant_attention_gives_the_stick_breaking_weights():
    """docs/design/hmsa.md §4.1 closed form: with constant maps, scale t_i (ascending) weighs
    a_i * prod_{j<i}(1 - a_j), the highest prod_{j<n}(1 - a_j); the weights sum to 1."""
    torch.manual_seed(0)
    scales = [0.25, 0.5, 1.0, 2.0]
    sizes = {0.25: (3, 5), 0.5: (6, 10), 1.0: (12, 20), 2.0: (24, 40)}
    values = {s: torch.randn(2, 4, 1, 1) for s in scales}  # per image and class
    attn = {s: torch.rand(2, 1, 1, 1) for s in scales}
    outputs = [
        (
            s,
            {
                "logits": values[s].expand(-1, -1, *sizes[s]),
                "attn": attn[s].expand(-1, -1, *sizes[s]),
            },
        )
        for s in reversed(scales)
    ]
    fused = fuse_hierarchically(outputs)["logits"]
    weights, remaining = {}, torch.ones(2, 1, 1, 1)
    for s in scales[:-1]:
        weights[s] = attn[s] * remaining
        remaining = remaining * (1 - attn[s])
    weights[2.0] = remaining
    torch.testing.assert_close(sum(weights.values()), torch.ones(2, 1, 1, 1))
    expected = sum(weights[s] * values[s] for s in scales).expand(-1, -1, 12, 20)
    torch.testing.assert_close(fused, expected)


def test_fusion_rejects_scales_out_of_order():
    maps = {"logits": torch.zeros(1, 1, 4, 4), "attn": torch.zeros(1, 1, 4, 4)}
    with pytest.raises(ValueError, match="descending"):
        fuse_hierarchically([(0.5, maps), (1.0, maps)])


# ---------------------------------------------------------------- the model at inference


def test_single_scale_is_the_plain_segmentor():
    """TEST_SCALES (1.0,) (set on the model) gives SemanticSegmentor's output with the same
    weights, at an odd size with a different output size, without running the attention."""
    model = build().eval()
    plain = plain_twin(model).eval()
    calls = []
    model.scale_attn.register_forward_hook(lambda *args: calls.append(1))
    model.test_scales = (1.0,)
    inputs = [{"image": x, "height": 50, "width": 61} for x in images((97, 131), (64, 80))]
    with torch.no_grad():
        for ours, theirs in zip(model(inputs), plain(inputs)):
            assert ours["sem_seg"].shape == (K, 50, 61)
            torch.testing.assert_close(ours["sem_seg"], theirs["sem_seg"])
    assert not calls


def test_attention_zero_gives_the_one_scale_prediction(monkeypatch):
    """Scales (0.5, 1.0) with the 0.5 attention forced to 0 predict what the plain model does."""
    model = build().eval()
    plain = plain_twin(model).eval()
    force_attention(monkeypatch, model, 0.0)
    model.test_scales = (0.5, 1.0)
    inputs = [{"image": x} for x in images((128, 96))]
    with torch.no_grad():
        torch.testing.assert_close(model(inputs)[0]["sem_seg"], plain(inputs)[0]["sem_seg"])


def test_attention_one_gives_the_lowest_scale_and_zero_the_highest(monkeypatch):
    """docs/design/hmsa.md §10.1-2 with scales (0.5, 1, 2): attention 1 everywhere returns the 0.5
    logits upsampled to 1.0; attention 0 the 2.0 logits brought down to 1.0. Each scale's logits are
    the plain model's on the image resized to that scale, which at 0.5 (48 x 80) is padded to 64 x
    96 and cropped back."""
    model = build().eval()
    plain = plain_twin(model).eval()
    (image,) = images((96, 160))

    def plain_logits(scale):
        size = (int(96 * scale), int(160 * scale))
        with torch.no_grad():
            logits = plain([{"image": resize(image[None], size)[0]}])[0]["sem_seg"]
        return resize(logits[None], (96, 160))[0]

    with torch.no_grad():
        force_attention(monkeypatch, model, 1.0)
        lowest = model([{"image": image}])[0]["sem_seg"]
        force_attention(monkeypatch, model, 0.0)
        highest = model([{"image": image}])[0]["sem_seg"]
    torch.testing.assert_close(lowest, plain_logits(0.5), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(highest, plain_logits(2.0), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(lowest, highest, atol=1e-2)


def test_four_scales_at_odd_sizes_follow_the_recursive_definition():
    """Scales (0.25, 0.5, 1, 2), two images of odd sizes (padded batch 128 x 160): the output is
    F = U(A.25 P.25) + (1 - U(A.25)) [U(A.5 P.5) + (1 - U(A.5)) [A1 P1 + (1 - A1) D(P2)]] on the
    padded batch, U/D resizing to the 1.0 size, cropped to each image and resized to its output
    size. Each scale's maps are floor(s x padded size): 32 x 40 at 0.25 (run re-padded to 32 x 64).
    """
    model = build().eval()
    model.test_scales = (0.5, 2.0, 1.0, 0.25)  # any order
    raw = images((97, 131), (65, 33))
    inputs = [
        {"image": raw[0], "height": 97, "width": 131},
        {"image": raw[1], "height": 40, "width": 20},
    ]
    with torch.no_grad():
        outputs = model(inputs)
        batch = model._normalized_batch(raw).tensor
        assert batch.shape[-2:] == (128, 160)
        per_scale = {
            s: model.run_scale(batch, s, with_attention=True) for s in (0.25, 0.5, 1.0, 2.0)
        }
    assert per_scale[0.25]["logits"].shape[-2:] == (32, 40)
    P = {s: o["logits"] for s, o in per_scale.items()}
    A = {s: o["attn"] for s, o in per_scale.items()}
    assert all(((a > 0) & (a < 1)).all() for a in A.values())
    size = (128, 160)
    inner = A[1.0] * P[1.0] + (1 - A[1.0]) * resize(P[2.0], size)
    middle = resize(A[0.5] * P[0.5], size) + (1 - resize(A[0.5], size)) * inner
    fused = resize(A[0.25] * P[0.25], size) + (1 - resize(A[0.25], size)) * middle
    for i, ((h, w), item) in enumerate(zip([(97, 131), (65, 33)], inputs)):
        expected = sem_seg_postprocess(fused[i, :, :h, :w], (h, w), item["height"], item["width"])
        assert outputs[i]["sem_seg"].shape == (K, item["height"], item["width"])
        torch.testing.assert_close(outputs[i]["sem_seg"], expected, atol=1e-5, rtol=1e-5)


def test_rescale_floors_and_repads():
    model = build()
    batch = torch.zeros(2, 3, 65, 97)
    half = model.rescale(batch, 0.5)
    assert half.tensor.shape == (2, 3, 32, 64) and half.image_sizes == [(32, 48)] * 2
    larger = model.rescale(batch, 1.5)  # floor(97.5) = 97, floor(145.5) = 145
    assert larger.tensor.shape == (2, 3, 128, 160) and larger.image_sizes == [(97, 145)] * 2


def test_flip_averages_the_unflipped_logits_of_the_flipped_images():
    """TEST_FLIP: mean(F(x), flip(F(flip(x)))) per image, flipped within each image's own width
    (the images are padded to a wider batch)."""
    model = build().eval()
    raw = images((97, 131), (70, 90))
    with torch.no_grad():
        direct = model([{"image": x} for x in raw])
        flipped = model([{"image": x.flip(-1)} for x in raw])
        model.test_flip = True
        tta = model([{"image": x} for x in raw])
    for ours, a, b in zip(tta, direct, flipped):
        expected = (a["sem_seg"] + b["sem_seg"].flip(-1)) / 2
        torch.testing.assert_close(ours["sem_seg"], expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ours["sem_seg"], a["sem_seg"], atol=1e-3)


# ---------------------------------------------------------------- training


def two_scale_fusion(lo: dict, hi: dict, key: str, size) -> torch.Tensor:
    """docs/design/hmsa.md §3.1 by hand: U(a * P_lo) + (1 - U(a)) * P_hi at ``size``."""
    return resize(lo["attn"] * lo[key], size) + (1 - resize(lo["attn"], size)) * hi[key]


def test_training_losses_gradients_and_the_unused_high_scale_attention():
    """Two passes (0.5 then 1.0); the attention runs once, on the 0.5 features; the loss is the
    cross-entropy of the fused logits; per-scale losses are 0.05 x each scale's own loss (the 1.0
    one is the plain model's loss); every parameter, the attention head's included, gets a
    gradient. Zero-weight terms are absent."""
    model = build("MODEL.HMSA.SCALE_LOSS_WEIGHT", "0.05").train()
    plain = plain_twin(model).train()
    generator = torch.Generator().manual_seed(3)
    raw = images((64, 96), (64, 96))
    targets = [torch.randint(0, K, (64, 96), generator=generator) for _ in raw]
    targets[0][:8] = 255
    batch = [{"image": x, "sem_seg": t} for x, t in zip(raw, targets)]
    attn_inputs = []
    model.scale_attn.register_forward_hook(lambda m, inputs, out: attn_inputs.append(inputs[0]))
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_scale_lo", "loss_sem_seg_scale_hi"}
    (attn_in,) = attn_inputs
    assert attn_in.shape[-2:] == (8, 16)  # stride 4 on the half-scale 32 x 48, re-padded to 32 x 64

    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, no_grad

    with torch.no_grad():  # train mode, no dropout: the same batch statistics, the same logits
        torch.testing.assert_close(
            losses["loss_sem_seg_scale_hi"],
            0.05 * plain(batch)["loss_sem_seg"],
            atol=1e-5,
            rtol=1e-5,
        )
        stacked = model._normalized_batch(raw).tensor
        lo = model.run_scale(stacked, 0.5, with_attention=True)
        hi = model.run_scale(stacked, 1.0, with_attention=False)
        fused = two_scale_fusion(lo, hi, "logits", (64, 96))
        labels = torch.stack(targets)
        expected = F.cross_entropy(fused, labels, ignore_index=255)
        expected_lo = F.cross_entropy(resize(lo["logits"], (64, 96)), labels, ignore_index=255)
    torch.testing.assert_close(losses["loss_sem_seg"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        losses["loss_sem_seg_scale_lo"], 0.05 * expected_lo, atol=1e-5, rtol=1e-5
    )
    assert set(build().train()(batch)) == {"loss_sem_seg"}


def test_upernet_auxiliary_logits_are_fused_and_weighted():
    """A head with an auxiliary branch (UPerNet + FCN aux): its logits are fused with the same
    attention and weighted by MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT; not run at inference."""
    model = build(
        "MODEL.SEM_SEG_HEAD.NAME", "UPerNetHead", "MODEL.SEM_SEG_HEAD.UPERNET.CHANNELS", "32",
        "MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT", "0.4", "MODEL.SEM_SEG_HEAD.AUX.CHANNELS", "16",
    )  # fmt: skip
    assert model.scale_attn.convs[0].in_channels == 32
    raw = images((64, 64), (64, 64))  # batch 2: the PPM's 1x1 pool needs it for BatchNorm
    labels = torch.randint(0, K, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    losses = model.train()([{"image": x, "sem_seg": y} for x, y in zip(raw, labels)])
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    with torch.no_grad():  # train mode, no dropout: the same batch statistics, the same logits
        stacked = model._normalized_batch(raw).tensor
        lo = model.run_scale(stacked, 0.5, with_attention=True)
        hi = model.run_scale(stacked, 1.0, with_attention=False)
        aux = two_scale_fusion(lo, hi, "aux_logits", (64, 64))
        expected = 0.4 * F.cross_entropy(aux, labels)
    torch.testing.assert_close(losses["loss_sem_seg_aux"], expected, atol=1e-5, rtol=1e-5)
    calls = []
    model.sem_seg_head.aux_head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        assert model.eval()([{"image": raw[0]}])[0]["sem_seg"].shape == (K, 64, 64)
    assert not calls


# ---------------------------------------------------------------- other heads and backbones


@pytest.mark.slow  # over ~5 s on 2 CPU cores
def test_detectron2_semantic_fpn_by_changing_only_the_meta_architecture():
    """detectron2's own semantic FPN config (ResNet-50 FPN + SemSegFPNHead): the adapter gives
    the head's logits and its summed CONVS_DIM map; single scale equals SemanticSegmentor."""
    cfg = get_cfg()
    hila_d2.add_hila_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Misc/semantic_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "HierarchicalMultiScaleSegmentor"]
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    plain = build_model(cfg).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert model.scale_attn.convs[0].in_channels == cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
    (image,) = images((65, 97))
    with torch.no_grad():
        features = model.backbone(model._normalized_batch([image]).tensor)
        outputs = head_forward_features(model.sem_seg_head, features)
        torch.testing.assert_close(outputs["logits"], model.sem_seg_head.layers(features))
        assert outputs["attn_feats"].shape[1] == cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
        model.test_scales = (1.0,)
        torch.testing.assert_close(
            model([{"image": image}])[0]["sem_seg"], plain([{"image": image}])[0]["sem_seg"]
        )
        model.test_scales = (0.5, 1.0, 2.0)
        assert model([{"image": image}])[0]["sem_seg"].shape == (54, 65, 97)
    losses = model.train()([{"image": image, "sem_seg": torch.zeros(65, 97, dtype=torch.long)}])
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.any() for p in model.scale_attn.parameters())


@SEM_SEG_HEADS_REGISTRY.register()
class HMSATestLogitsOnlyHead(nn.Module):
    """A detectron2-style head with ``layers`` only (no penultimate features)."""

    def __init__(self, cfg, input_shape):
        super().__init__()
        self.ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        self.predictor = nn.Conv2d(
            input_shape["res2"].channels, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 1
        )

    def layers(self, features):
        return self.predictor(features["res2"])


def test_a_logits_only_head_reads_attention_from_the_named_backbone_feature():
    model = build(
        "MODEL.SEM_SEG_HEAD.NAME", "HMSATestLogitsOnlyHead", "MODEL.HMSA.ATTN_IN_FEATURE", "res5"
    )
    assert model.scale_attn.convs[0].in_channels == model.backbone.output_shape()["res5"].channels
    attn_inputs = []
    model.scale_attn.register_forward_hook(lambda m, inputs, out: attn_inputs.append(inputs[0]))
    (image,) = images((64, 64))
    with torch.no_grad():
        assert model.eval()([{"image": image}])[0]["sem_seg"].shape == (K, 64, 64)
        half = model.rescale(model._normalized_batch([image]).tensor, 0.5).tensor
        torch.testing.assert_close(attn_inputs[-1], model.backbone(half)["res5"])
    assert len(attn_inputs) == 2  # scales 1.0 and 0.5; never 2.0, the highest


# ---------------------------------------------------------------- checkpoints and errors


def test_loads_a_single_scale_checkpoint_with_another_class_count(tmp_path):
    """A SegFormer checkpoint (19 Cityscapes classes) initialises the HMSA model's backbone and
    head; the missing attention head and the mismatched classifier keep their initialisation."""
    source = build(
        config="configs/cityscapes/semantic-segmentation/segformer_mit_b0_bs8_160k.yaml", seed=5
    )
    DetectionCheckpointer(source, save_dir=str(tmp_path)).save("single_scale")
    model = build()
    attn_before = {k: v.clone() for k, v in model.scale_attn.state_dict().items()}
    predictor_before = model.sem_seg_head.predictor.weight.clone()
    DetectionCheckpointer(model).load(str(tmp_path / "single_scale.pth"))
    theirs = source.state_dict()
    for name, value in model.state_dict().items():
        if name.startswith("scale_attn."):
            torch.testing.assert_close(value, attn_before[name[len("scale_attn.") :]])
        elif name.startswith("sem_seg_head.predictor."):
            assert value.shape[0] == K
        else:
            torch.testing.assert_close(value, theirs[name], msg=name)
    torch.testing.assert_close(model.sem_seg_head.predictor.weight, predictor_before)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("TEST_SCALES", "(0.5, 2.0)", "must contain 1.0"),
        ("TEST_SCALES", "()", "positive, distinct"),
        ("TEST_SCALES", "(1.0, 1.0)", "positive, distinct"),
        ("TEST_SCALES", "(-0.5, 1.0)", "positive, distinct"),
        ("TRAIN_SCALES", "(0.5, 0.75)", "must contain 1.0"),
        ("TRAIN_SCALES", "(0.5, 1.0, 2.0)", "exactly 2 scales"),
        ("TRAIN_SCALES", "(1.0,)", "exactly 2 scales"),
        ("ATTN_NUM_CONVS", "0", "at least 1"),
        ("ATTN_DROPOUT", "1.0", r"in \[0, 1\)"),
        ("ATTN_IN_FEATURE", "res9", "not a backbone output"),
    ],
)
def test_invalid_settings_name_their_key(key, value, message):
    with pytest.raises(ValueError, match=rf"MODEL\.HMSA\.{key} .*{message}"):
        build(f"MODEL.HMSA.{key}", value)


def test_test_scales_set_on_the_model_are_checked_and_too_small_scales_named():
    model = build().eval()
    with pytest.raises(ValueError, match=r"MODEL\.HMSA\.TEST_SCALES .*must contain 1\.0"):
        model.test_scales = (0.5, 2.0)
    model.test_scales = (0.01, 1.0)
    with pytest.raises(ValueError, match=r"Scale 0\.01 shrinks the 64x64 input.*TEST_SCALES"):
        model([{"image": torch.zeros(3, 64, 64)}])


def test_a_head_without_features_asks_for_attn_in_feature():
    with pytest.raises(
        ValueError, match=r"HMSATestLogitsOnlyHead.*set MODEL\.HMSA\.ATTN_IN_FEATURE"
    ):
        build("MODEL.SEM_SEG_HEAD.NAME", "HMSATestLogitsOnlyHead")


# ---------------------------------------------------------------- configs

CONFIG_BASES = {  # HMSA config -> the single-scale config it wraps
    "configs/cityscapes/semantic-segmentation/hmsa/hmsa_segformer_mit_b1_bs8_160k.yaml":
        "configs/cityscapes/semantic-segmentation/segformer_mit_b1_bs8_160k.yaml",
    "configs/cityscapes/semantic-segmentation/hmsa/hmsa_segformer_mit_b2_bs8_160k.yaml":
        "configs/cityscapes/semantic-segmentation/segformer_mit_b2_bs8_160k.yaml",
    "configs/cityscapes/semantic-segmentation/hmsa/hmsa_hila_mit_b1_s234_160k.yaml":
        "configs/cityscapes/semantic-segmentation/hila/hila_mit_b1_s234_160k.yaml",
    "configs/cityscapes/semantic-segmentation/hmsa/"
    "hmsa_hila_mit_b2_s234_320k_nohilapretraining.yaml":
        "configs/cityscapes/semantic-segmentation/hila/"
        "hila_mit_b2_s234_320k_nohilapretraining.yaml",
    CONFIG: "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml",
    "configs/builtin/semantic-segmentation/hmsa_hila_mit_b0_s3.yaml":
        "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml",
}  # fmt: skip


def test_every_hmsa_config_is_listed():
    found = {
        str(path.relative_to(REPO))
        for pattern in ("configs/cityscapes/semantic-segmentation/hmsa/hmsa_*.yaml",
                        "configs/builtin/semantic-segmentation/hmsa_*.yaml")  # fmt: skip
        for path in REPO.glob(pattern)
    }
    assert found == set(CONFIG_BASES)


@pytest.mark.parametrize("config", sorted(CONFIG_BASES))
def test_config_wraps_its_single_scale_model(config):
    """The same backbone, head and solver as the config it wraps, plus the attention head on
    the head's features; HMSA's scales; Cityscapes: 1024x1024 crops, whole-image evaluation at
    1024x2048, the official per-scale loss weight."""
    cfg = load_config(config)
    base_cfg = load_config(CONFIG_BASES[config])
    torch.manual_seed(0)
    model = build_model(cfg)
    base = build_model(base_cfg)
    assert type(model).__name__ == "HierarchicalMultiScaleSegmentor"
    assert model.train_scales == (0.5, 1.0) and model.test_scales == (0.5, 1.0, 2.0)
    shapes = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("scale_attn.")}
    assert shapes == {k: v.shape for k, v in base.state_dict().items()}
    assert model.scale_attn.convs[0].in_channels == cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM
    assert cfg.MODEL.HILA == base_cfg.MODEL.HILA
    if "cityscapes" in config:
        assert cfg.SOLVER == base_cfg.SOLVER and cfg.INPUT == base_cfg.INPUT
        assert tuple(cfg.INPUT.CROP.SIZE) == (1024, 1024) and cfg.INPUT.MIN_SIZE_TEST == 1024
        assert cfg.MODEL.HMSA.SCALE_LOSS_WEIGHT == 0.05 and cfg.MODEL.HMSA.ATTN_CHANNELS == 256
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19
    else:  # the built-in recipe adds random rescaling, which HMSA relies on, and iterations
        assert tuple(cfg.INPUT.RESIZE_RATIO_RANGE) == (0.5, 2.0)
        assert cfg.SOLVER.MAX_ITER == 2 * base_cfg.SOLVER.MAX_ITER
        base_cfg.SOLVER.MAX_ITER = cfg.SOLVER.MAX_ITER
        assert cfg.SOLVER == base_cfg.SOLVER
