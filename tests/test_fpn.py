"""FPN builders over MiT, Swin and HAT-Net, plain and with HILA, under detectron2's own (model zoo) Mask
R-CNN, Panoptic FPN and semantic FPN configs with only the backbone keys changed: pyramid
shapes, the encoder inside the pyramid, a clear error for missing features, and a training step
and inference at an odd input size returning detectron2's output structures."""
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import FPN, build_backbone, build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import hila_d2
from hila_d2.modeling import build_hatnet_backbone, build_mit_backbone, build_swin_backbone

MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
PANOPTIC_FPN = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
SEMANTIC_FPN = "Misc/semantic_R_50_FPN_1x.yaml"

# the only keys changed in detectron2's configs: the backbone and its encoder
ENCODERS = {
    "mit": ["MODEL.BACKBONE.NAME", "build_mit_fpn_backbone", "MODEL.MIT.VARIANT", "B0"],
    "mit_hila": ["MODEL.BACKBONE.NAME", "build_mit_fpn_backbone", "MODEL.MIT.VARIANT", "B0",
                 "MODEL.HILA.STAGES", "[2, 3, 4]"],
    "swin": ["MODEL.BACKBONE.NAME", "build_swin_fpn_backbone", "MODEL.HILA_D2_SWIN.VARIANT", "T"],
    "swin_hila": ["MODEL.BACKBONE.NAME", "build_swin_fpn_backbone", "MODEL.HILA_D2_SWIN.VARIANT", "T",
                  "MODEL.HILA.STAGES", "[2, 3, 4]", "MODEL.HILA.STRIDES", "[1, 1, 2, 1]"],
    "hatnet": ["MODEL.BACKBONE.NAME", "build_hatnet_fpn_backbone", "MODEL.HATNET.VARIANT", "T"],
    "hatnet_hila": ["MODEL.BACKBONE.NAME", "build_hatnet_fpn_backbone", "MODEL.HATNET.VARIANT", "T",
                    "MODEL.HILA.STAGES", "[2, 3, 4]"],
}
BARE_BUILDERS = {"mit": build_mit_backbone, "swin": build_swin_backbone, "hatnet": build_hatnet_backbone}
H, W = 333, 500  # odd on purpose: padded to 352 x 512 by the model's size_divisibility
NUM_THINGS, NUM_STUFF = 80, 54


def stock_cfg(zoo_config: str, encoder: str, *opts: str):
    """detectron2's model zoo config with the backbone swapped for a hila_d2 encoder, on CPU."""
    cfg = get_cfg()
    hila_d2.add_hila_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(zoo_config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *ENCODERS[encoder], *opts])
    return cfg


@pytest.mark.parametrize(
    "encoder",
    [  # with HILA, Swin and HAT-Net take 3-5 s: slow
        pytest.param(name, marks=pytest.mark.slow) if name in ("swin_hila", "hatnet_hila") else name
        for name in ENCODERS
    ],
)
def test_pyramid_levels_and_the_encoder_inside(encoder):
    cfg = stock_cfg(MASK_RCNN, encoder)
    torch.manual_seed(0)
    fpn = build_backbone(cfg).eval()
    assert isinstance(fpn, FPN)
    shapes = fpn.output_shape()
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
    assert all(s.channels == 256 for s in shapes.values())
    assert fpn.size_divisibility == 32
    # HILA pairs 1-2, 2-3, 3-4 live in the encoder when configured
    assert len(fpn.bottom_up.hila) == (3 if encoder.endswith("_hila") else 0)

    x = torch.randn(1, 3, 352, 512)
    with torch.no_grad():
        features = fpn(x)
    for name, stride in zip(shapes, [4, 8, 16, 32, 64]):
        # p6 max-pools p5 (11 x 16) with stride 2: ceil
        assert tuple(features[name].shape) == (1, 256, -(-352 // stride), 512 // stride)
        assert torch.isfinite(features[name]).all()

    # the pyramid's encoder is exactly the bare encoder of the same config
    bare = BARE_BUILDERS[encoder.split("_")[0]](cfg, ShapeSpec(channels=3)).eval()
    bare.load_state_dict(fpn.bottom_up.state_dict())
    with torch.no_grad():
        expected, actual = bare(x), fpn.bottom_up(x)
    assert list(actual) == ["res2", "res3", "res4", "res5"]
    for name in actual:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "encoder, key",
    [("mit", "MODEL.MIT.OUT_FEATURES"), ("swin", "MODEL.HILA_D2_SWIN.OUT_FEATURES"),
     ("hatnet", "MODEL.HATNET.OUT_FEATURES")],
)  # fmt: skip
def test_missing_encoder_features_name_both_keys(encoder, key):
    cfg = stock_cfg(MASK_RCNN, encoder, key, "['res3', 'res4', 'res5']")
    with pytest.raises(ValueError, match=rf"MODEL\.FPN\.IN_FEATURES.*{key}.*res2"):
        build_backbone(cfg)


def training_input(with_sem_seg: bool) -> dict:
    """One 333x500 image with two instances (and a stuff map for Panoptic FPN)."""
    torch.manual_seed(1)
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 20:150, 10:100] = True
    masks[1, 100:300, 200:330] = True
    instances = Instances((H, W))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 20, 100, 150], [200, 100, 330, 300]]))
    instances.gt_classes = torch.tensor([3, 17])
    instances.gt_masks = BitMasks(masks)
    record = {"image": torch.randint(0, 256, (3, H, W)).float(), "instances": instances}
    if with_sem_seg:
        record["sem_seg"] = torch.randint(0, NUM_STUFF, (H, W))
    return record


def check_instances(instances: Instances) -> None:
    """detectron2's inference ``Instances`` at the requested size, with sane values."""
    assert instances.image_size == (H, W)
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(instances.get_fields())
    assert len(instances) > 0
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= W).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= H).all()
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()
    assert ((instances.pred_classes >= 0) & (instances.pred_classes < NUM_THINGS)).all()
    assert instances.pred_masks.dtype == torch.bool
    assert tuple(instances.pred_masks.shape) == (len(instances), H, W)


# untrained scores are ~1/81: keep every detection and every segment so outputs are non-empty
KEEP_ALL = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20"]
KEEP_ALL_PANOPTIC = KEEP_ALL + [
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0",
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", "0",
]


# HAT-Net's pyramid is checked above; its training step here runs with HILA, which covers it.
# Panoptic FPN adds an encoder-independent semantic branch to the same FPN: MiT and MiT + HILA.
# Over ~5 s on 2 CPU cores, and so slow: every case but Mask R-CNN on plain MiT.
TRAINING_CASES = [
    (config, name) if (config, name) == (MASK_RCNN, "mit")
    else pytest.param(config, name, marks=pytest.mark.slow)
    for config in (MASK_RCNN, PANOPTIC_FPN)
    for name in ENCODERS
    if name != "hatnet" and (config == MASK_RCNN or name in ("mit", "mit_hila"))
]


@pytest.mark.parametrize("zoo_config,encoder", TRAINING_CASES)
def test_training_step_and_inference_at_an_odd_size(zoo_config, encoder):
    panoptic = zoo_config == PANOPTIC_FPN
    # no drop path: with one image it zeroes whole residual branches, and their gradients
    no_drop_path = ["MODEL.MIT.DROP_PATH_RATE", "0.0", "MODEL.HILA_D2_SWIN.DROP_PATH_RATE", "0.0",
                    "MODEL.HATNET.DROP_PATH_RATE", "0.0"]
    cfg = stock_cfg(zoo_config, encoder, *no_drop_path, *(KEEP_ALL_PANOPTIC if panoptic else KEEP_ALL))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model([training_input(with_sem_seg=panoptic)])
    expected = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert set(losses) == expected | ({"loss_sem_seg"} if panoptic else set())
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    sum(losses.values()).backward()
    encoder_grads = [p.grad for p in model.backbone.bottom_up.parameters() if p.requires_grad]
    assert all(g is not None for g in encoder_grads[:4])  # the patch embedding
    if encoder.endswith("_hila"):
        for pair in model.backbone.bottom_up.hila.values():
            trainable = [p for p in pair.parameters() if p.requires_grad]  # not HAT-Net's proj_norm
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)

    model.eval()
    image = training_input(with_sem_seg=False)["image"]
    with torch.no_grad():
        (output,) = model([{"image": image, "height": H, "width": W}])
    check_instances(output["instances"])
    if panoptic:
        assert tuple(output["sem_seg"].shape) == (NUM_STUFF, H, W)
        panoptic_seg, segments_info = output["panoptic_seg"]
        assert tuple(panoptic_seg.shape) == (H, W) and panoptic_seg.dtype == torch.int32
        ids = {s["id"] for s in segments_info}
        assert ids and set(panoptic_seg.unique().tolist()) <= ids | {0}
        for segment in segments_info:
            area = (panoptic_seg == segment["id"]).sum()
            assert area > 0 and area == segment.get("area", area)  # stuff segments state it
            limit = NUM_THINGS if segment["isthing"] else NUM_STUFF
            assert 0 <= segment["category_id"] < limit
    else:
        assert set(output) == {"instances"}


@pytest.mark.parametrize(
    "encoder", ["mit_hila", pytest.param("swin", marks=pytest.mark.slow), "hatnet"]
)
def test_semantic_fpn_at_an_odd_size(encoder):
    """detectron2's SemanticSegmentor + SemSegFPNHead (its semantic FPN config)."""
    cfg = stock_cfg(SEMANTIC_FPN, encoder)
    torch.manual_seed(0)
    model = build_model(cfg)
    record = training_input(with_sem_seg=True)
    with EventStorage():
        losses = model([record])
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": record["image"], "height": H, "width": W}])
    assert tuple(output["sem_seg"].shape) == (NUM_STUFF, H, W)
