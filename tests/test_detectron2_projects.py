"""hila_d2's encoders inside the detectron2 projects that ship with detectron2, as their users run
them: Panoptic-DeepLab, DeepLabV3+ and PointRend (semantic), each over MiT, Swin and HAT-Net,
plain, with HILA S3 and with HILA S234.

For each combination: the config composes in either order of the two config functions, a
training step gives every trainable parameter a finite gradient (what DistributedDataParallel
with ``find_unused_parameters=False`` needs), and inference at an odd size returns full-size
outputs.
"""
from typing import Dict, List

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.projects.panoptic_deeplab import add_panoptic_deeplab_config
from detectron2.projects.panoptic_deeplab.target_generator import PanopticDeepLabTargetGenerator
from detectron2.projects.point_rend import add_pointrend_config
from test_config_coexistence import flatten

import hila_d2

NUM_CLASSES = 3  # 0: stuff; 1, 2: things
THING_IDS = [1, 2]
METADATA = "hila_d2_projects_test"
MetadataCatalog.get(METADATA).set(
    thing_dataset_id_to_contiguous_id={1: 1, 2: 2},
    stuff_dataset_id_to_contiguous_id={0: 0},
    thing_classes=["a", "b"],
    stuff_classes=["stuff", "a", "b"],
    label_divisor=1000,
    ignore_label=255,
)

# Small encoders: the structure of the real ones at a fraction of the cost.
ENCODERS = {
    "mit": ("mit", ["MODEL.MIT.VARIANT", "B0", "MODEL.MIT.DEPTHS", "[1, 2, 2, 2]"]),
    "swin": ("swin", ["MODEL.HILA_D2_SWIN.VARIANT", "T", "MODEL.HILA_D2_SWIN.WINDOW_SIZE", "4",
                      "MODEL.HILA.MLP_RATIO", "2.0", "MODEL.HILA.BOTTOM_MLP_RATIO", "2.0"]),
    "hatnet": ("hatnet", ["MODEL.HATNET.VARIANT", "T", "MODEL.HATNET.DIMS", "[48, 48, 96, 96]",
                          "MODEL.HATNET.DEPTHS", "[1, 2, 2, 2]"]),
}  # fmt: skip
OUT_FEATURES_KEY = {
    "mit": "MODEL.MIT.OUT_FEATURES",
    "swin": "MODEL.HILA_D2_SWIN.OUT_FEATURES",
    "hatnet": "MODEL.HATNET.OUT_FEATURES",
}
HILA = {"plain": "[]", "S3": "[3]", "S234": "[2, 3, 4]"}

COMMON = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.CROP.ENABLED", "False",
          "DATASETS.TRAIN", f"('{METADATA}',)", "DATASETS.TEST", f"('{METADATA}',)"]  # fmt: skip


def narrow_aspp_head(group: str, in_features: List[str]) -> List[str]:
    """Overrides that make a DeepLab-style head (ASPP on the last feature, projections of the
    others) in ``MODEL.<group>`` small, with BatchNorm instead of SyncBN."""
    return [
        f"MODEL.{group}.IN_FEATURES", str(in_features),
        f"MODEL.{group}.PROJECT_FEATURES", str(in_features[:-1]),
        f"MODEL.{group}.PROJECT_CHANNELS", str([16] * (len(in_features) - 1)),
        f"MODEL.{group}.ASPP_CHANNELS", "32", f"MODEL.{group}.CONVS_DIM", "32",
        f"MODEL.{group}.COMMON_STRIDE", "4", f"MODEL.{group}.NORM", "BN",
    ]  # fmt: skip


PROJECTS = {
    "panoptic_deeplab": (
        add_panoptic_deeplab_config,
        ["res2", "res3", "res5"],
        ["MODEL.META_ARCHITECTURE", "PanopticDeepLab",
         "MODEL.SEM_SEG_HEAD.NAME", "PanopticDeepLabSemSegHead",
         *narrow_aspp_head("SEM_SEG_HEAD", ["res2", "res3", "res5"]),
         "MODEL.SEM_SEG_HEAD.HEAD_CHANNELS", "16", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "255",
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES),
         *narrow_aspp_head("INS_EMBED_HEAD", ["res2", "res3", "res5"]),
         "MODEL.INS_EMBED_HEAD.HEAD_CHANNELS", "16",
         "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "16", "MODEL.PANOPTIC_DEEPLAB.TOP_K_INSTANCE", "10"],
    ),
    "deeplab_v3_plus": (
        add_deeplab_config,
        ["res2", "res5"],
        ["MODEL.META_ARCHITECTURE", "SemanticSegmentor",
         "MODEL.SEM_SEG_HEAD.NAME", "DeepLabV3PlusHead",
         *narrow_aspp_head("SEM_SEG_HEAD", ["res2", "res5"]),
         "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy",
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES)],
    ),
    "point_rend": (
        add_pointrend_config,
        None,  # an FPN over the encoder's res2..res5
        ["MODEL.META_ARCHITECTURE", "SemanticSegmentor",
         "MODEL.SEM_SEG_HEAD.NAME", "PointRendSemSegHead",
         "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
         "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "4",
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES), "MODEL.FPN.OUT_CHANNELS", "32",
         "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
         "MODEL.POINT_HEAD.NUM_CLASSES", str(NUM_CLASSES), "MODEL.POINT_HEAD.FC_DIM", "32",
         "MODEL.POINT_HEAD.TRAIN_NUM_POINTS", "64", "MODEL.POINT_HEAD.SUBDIVISION_STEPS", "2",
         "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", "128"],
    ),
}  # fmt: skip


def project_opts(project: str, encoder: str, hila: str) -> List[str]:
    family, encoder_opts = ENCODERS[encoder]
    _, out_features, project_specific = PROJECTS[project]
    backbone = f"build_{family}_backbone" if out_features else f"build_{family}_fpn_backbone"
    opts = ["MODEL.BACKBONE.NAME", backbone, *encoder_opts, "MODEL.HILA.STAGES", HILA[hila]]
    if out_features:  # the encoder returns what the heads read, nothing else
        opts += [OUT_FEATURES_KEY[family], str(out_features)]
    return COMMON + project_specific + opts


def project_cfg(project: str, encoder: str, hila: str, hila_d2_first: bool = False):
    cfg = get_cfg()
    add_project_config = PROJECTS[project][0]
    steps = [add_project_config, hila_d2.add_hila_config]
    for step in steps[::-1] if hila_d2_first else steps:
        step(cfg)
    cfg.merge_from_list(project_opts(project, encoder, hila))
    return cfg


def panoptic_sample(height: int, width: int, seed: int) -> Dict[str, torch.Tensor]:
    """An image with two thing instances on stuff, and Panoptic-DeepLab's own targets for it."""
    rng = np.random.default_rng(seed)
    panoptic = np.zeros((height, width), dtype=np.int64)  # segment id 0: the stuff
    segments = [{"id": 0, "category_id": 0, "iscrowd": 0}]
    for segment_id, category in ((1, 1), (2, 2)):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        panoptic[top : top + height // 3, left : left + width // 3] = segment_id
        segments.append({"id": segment_id, "category_id": category, "iscrowd": 0})
    targets = PanopticDeepLabTargetGenerator(255, THING_IDS, sigma=2)(panoptic, segments)
    image = torch.from_numpy(rng.uniform(0, 255, (3, height, width)).astype(np.float32))
    return {"image": image, **{k: v for k, v in targets.items() if k != "center_points"}}


def semantic_sample(height: int, width: int, seed: int) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(3, height, width, generator=generator) * 255,
        "sem_seg": torch.randint(0, NUM_CLASSES, (height, width), generator=generator),
    }


def training_batch(project: str) -> List[Dict[str, torch.Tensor]]:
    sample = panoptic_sample if project == "panoptic_deeplab" else semantic_sample
    return [sample(64, 64, seed) for seed in range(2)]


COMBINATIONS = [
    # Swin-T with HILA takes 1-2.5 s a combination: slow (the fast loop has plain Swin)
    pytest.param(project, encoder, hila, marks=pytest.mark.slow)
    if encoder == "swin" and hila != "plain"
    else (project, encoder, hila)
    for project in PROJECTS
    for encoder in ENCODERS
    for hila in HILA
]


@pytest.mark.parametrize("project,encoder,hila", COMBINATIONS)
def test_trains_and_infers_inside_the_project(project, encoder, hila):
    cfg = project_cfg(project, encoder, hila)
    assert flatten(cfg) == flatten(project_cfg(project, encoder, hila, hila_d2_first=True))
    hila_d2.validate_config(cfg)

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    losses = model(training_batch(project))
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_gradient = [n for n, p in trainable if p.grad is None]
    assert not no_gradient, f"parameters outside the loss: {no_gradient[:10]}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert any(n.startswith("backbone.") and p.grad.abs().sum() > 0 for n, p in trainable)
    if hila != "plain":
        hila_params = [p for n, p in trainable if ".hila." in f".{n}"]
        assert hila_params and all(p.grad.abs().sum() > 0 for p in hila_params[:1])

    model.eval()
    height, width = 67, 45
    with torch.no_grad():
        (output,) = model([{"image": torch.rand(3, height, width) * 255, "height": height, "width": width}])
    assert output["sem_seg"].shape[-2:] == (height, width)
    if project == "panoptic_deeplab":
        panoptic, _ = output["panoptic_seg"]
        assert panoptic.shape == (height, width)
    else:
        assert output["sem_seg"].shape == (NUM_CLASSES, height, width)
        assert torch.isfinite(output["sem_seg"]).all()
