"""timm encoders (``build_timm_backbone``, ``build_timm_fpn_backbone``) inside the detection and
segmentation models, with HILA where the family takes it: one training step of Mask R-CNN (the
built-in config) per family, of Panoptic-DeepLab (detectron2's project) and of SegFormer, each
giving every trainable parameter a finite gradient (what DistributedDataParallel with
``find_unused_parameters=False`` needs), and two iterations of train_net.py on two CPU processes
with HILA S3 to show it.

ConvNeXt and PVTv2 hold their blocks in ``stages[i].blocks`` and take HILA; EfficientNet's stages
are bare ``Sequential``s (``blocks[i]``), so it runs plain and refuses HILA with a clear error.
"""
import math
from typing import Dict, List

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.projects.panoptic_deeplab import add_panoptic_deeplab_config
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from test_detectron2_projects import COMMON, PROJECTS, panoptic_sample

import hila_d2
from hila_d2.modeling.backbone.timm import TimmBackbone, TimmEncoderError
from project_config import default_config, load_config

MASK_RCNN = "configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml"
SEGFORMER = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"

# (timm model, MODEL.HILA.STAGES): HILA S3 (the pair of stages 2-3) where the family takes it
FAMILIES = [("convnext_atto", "[3]"), ("pvt_v2_b0", "[3]"), ("efficientnet_b0", "[]")]

# Odd sizes on purpose: the models pad them to a multiple of 32 (the encoder's deepest stride).
# The short side is INPUT.MIN_SIZE_TRAIN's 97, one image landscape and one portrait (padded to
# 128 x 160 and 128 x 128, the batch to 128 x 160).
MIN_SIZE = 97
SIZES = [(MIN_SIZE, 131), (115, MIN_SIZE)]
# Narrower heads than the built-in config's (FPN 128, mask head 128, box head 256): the encoder
# is what these tests are about, and the heads' backward dominated the step.
NARROW_RCNN_HEADS = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
                     "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
                     "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]  # fmt: skip


def timm_opts(backbone: str, name: str, hila: str) -> List[str]:
    return ["MODEL.BACKBONE.NAME", backbone, "MODEL.TIMM.NAME", name, "MODEL.HILA.STAGES", hila,
            "MODEL.WEIGHTS", ""]  # fmt: skip


def encoder_of(model) -> TimmBackbone:
    backbone = model.backbone
    encoder = getattr(backbone, "bottom_up", backbone)  # under an FPN, or the backbone itself
    assert isinstance(encoder, TimmBackbone)
    return encoder


def check_training_step(model, losses: Dict[str, torch.Tensor], hila: str) -> None:
    """The losses are finite; after their backward every trainable parameter has a finite
    gradient; no encoder parameter was frozen (nothing of these encoders is outside the outputs
    these models read, so the check covers all of it); HILA's pairs are there and learn."""
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_gradient = [n for n, p in trainable if p.grad is None]
    assert not no_gradient, f"{len(no_gradient)} parameters outside the loss: {no_gradient[:10]}"
    not_finite = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"non-finite gradients: {not_finite[:10]}"

    encoder = encoder_of(model)
    frozen = [n for n, p in encoder.named_parameters() if not p.requires_grad]
    assert not frozen, f"encoder parameters frozen: {frozen[:10]}"
    assert any(p.grad.abs().sum() > 0 for p in encoder.encoder.parameters())
    if hila == "[]":
        assert len(encoder.hila) == 0
    else:
        assert sorted(encoder.hila) == ["23"]
        hila_params = list(encoder.hila.parameters())
        assert hila_params and all(p.requires_grad for p in hila_params)
        assert sum(p.grad.abs().sum() for p in hila_params) > 0


# ----------------------------------------------------------------------------- Mask R-CNN


def instance_record(height: int, width: int, seed: int) -> dict:
    """An image with two instances (boxes and bitmasks) of the dataset's 4 classes."""
    generator = torch.Generator().manual_seed(seed)
    boxes = [[5, 8, width // 2, height // 2], [width // 3, height // 3, width - 4, height - 6]]
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.gt_classes = torch.tensor([seed % 4, 3])
    instances.gt_masks = BitMasks(masks)
    image = torch.rand(3, height, width, generator=generator) * 255
    return {"image": image, "instances": instances}


# With HILA a case takes ~10 s of CPU time (5-7 s on 2 cores): building the encoder runs its
# probe passes (the layouts, the unused parameters) on 128 x 192 zeros. Slow: every case but
# EfficientNet's; HILA on a timm encoder stays in the fast loop through SegFormer below.
@pytest.mark.parametrize(
    "name,hila", [f if f[1] == "[]" else pytest.param(*f, marks=pytest.mark.slow) for f in FAMILIES]
)
def test_mask_rcnn_training_step(name, hila):
    cfg = load_config(MASK_RCNN, *timm_opts("build_timm_fpn_backbone", name, hila),
                      "INPUT.MIN_SIZE_TRAIN", f"({MIN_SIZE},)", *NARROW_RCNN_HEADS)  # fmt: skip
    hila_d2.validate_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert [s.stride for s in model.backbone.output_shape().values()] == [4, 8, 16, 32, 64]
    batch = [instance_record(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    check_training_step(model, losses, hila)


def test_efficientnet_refuses_hila():
    cfg = default_config()
    cfg.merge_from_list(timm_opts("build_timm_backbone", "efficientnet_b0", "[3]"))
    with pytest.raises(TimmEncoderError, match=r"efficientnet_b0.*cannot take HILA.*blocks"):
        build_backbone(cfg)


# ----------------------------------------------------------------------- Panoptic-DeepLab


def panoptic_deeplab_cfg(name: str, hila: str):
    """test_detectron2_projects' small Panoptic-DeepLab over the bare timm encoder, which returns
    only the res2, res3 and res5 its heads read."""
    cfg = get_cfg()
    add_panoptic_deeplab_config(cfg)
    hila_d2.add_hila_config(cfg)
    _, out_features, project_opts = PROJECTS["panoptic_deeplab"]
    cfg.merge_from_list([*COMMON, *project_opts, *timm_opts("build_timm_backbone", name, hila),
                         "MODEL.TIMM.OUT_FEATURES", str(out_features)])  # fmt: skip
    return cfg


@pytest.mark.slow  # ~10 s of CPU time, as the Mask R-CNN cases with HILA
def test_panoptic_deeplab_training_step():
    cfg = panoptic_deeplab_cfg("convnext_atto", "[3]")
    hila_d2.validate_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert list(model.backbone.output_shape()) == ["res2", "res3", "res5"]
    batch = [panoptic_sample(67, 45, seed) for seed in range(2)]  # padded to 96 x 64
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_center", "loss_offset"}
    check_training_step(model, losses, "[3]")


# ------------------------------------------------------------------------------- SegFormer


def segformer_cfg(name: str, hila: str):
    """The built-in SegFormer config over a timm encoder (MODEL.TIMM.DROP_PATH_RATE 0: the
    model's default, none for these), without the head's dropout."""
    return load_config(SEGFORMER, *timm_opts("build_timm_backbone", name, hila),
                       "MODEL.SEM_SEG_HEAD.DROPOUT", "0.0")  # fmt: skip


def test_segformer_training_step():
    cfg = segformer_cfg("pvt_v2_b0", "[3]")
    hila_d2.validate_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    generator = torch.Generator().manual_seed(0)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    batch = []
    for height, width in SIZES:
        labels = torch.randint(0, num_classes, (height, width), generator=generator)
        labels[:4] = 255  # ignored rows
        image = torch.rand(3, height, width, generator=generator) * 255
        batch.append({"image": image, "sem_seg": labels})
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg"}
    check_training_step(model, losses, "[3]")


# ------------------------------------------------------------------------------------ DDP


@pytest.mark.slow  # trains on two processes
def test_hila_s3_trains_under_ddp_without_unused_parameters(train_net):
    """train_net.py with two CPU ranks (gloo) and detectron2's ``find_unused_parameters=False``:
    DistributedDataParallel reports a parameter without gradient at the second iteration, so two
    iterations show that every trainable parameter of ConvNeXt + HILA S3 takes part."""
    opts = [*timm_opts("build_timm_backbone", "convnext_atto", "[3]"),
            "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "INPUT.CROP.SIZE", "(64, 64)",
            "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
    run = train_net(SEGFORMER, *opts, processes=2)
    assert "World size: 2" in (run.output_dir / "log.txt").read_text()
    rank1_log = (run.output_dir / "log.txt.rank1").read_text()
    assert "Rank of current process: 1. World size: 2" in rank1_log
    checkpoint = torch.load(run.output_dir / "model_final.pth", weights_only=True)
    assert checkpoint["iteration"] == 1  # the second iteration (0-based) finished
    assert any(key.startswith("backbone.hila.23.") for key in checkpoint["model"])
    losses = run.losses()
    assert losses and all(math.isfinite(loss) for loss in losses.values()), losses
