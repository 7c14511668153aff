"""``validate_config(cfg)``: every model key of a config checked before anything heavy runs.

detectron2 reads most keys while it builds the model, and some only in the first forward pass: a
head that asks for a feature the backbone does not produce fails with a bare ``KeyError`` deep in
the RPN, or, for ``SemSegFPNHead``, not until training starts. ``validate_config`` builds the
model on the meta device (no memory, no data, no weights; about 0.2 s), so every build-time check
of hila_d2's backbones, heads and meta-architectures runs, and before that checks the registry
names and the features each detectron2 head reads. Each problem is a ``ValueError`` that names
the key, its value and the allowed values. ``train_net.py`` and the tools call it right after
the config is merged, before any data is loaded.
"""
from typing import Dict, Iterable, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    GeneralizedRCNN,
    PanopticFPN,
    RetinaNet,
    SemanticSegmentor,
    build_backbone,
)
from detectron2.modeling.backbone import FPN
from detectron2.utils.registry import Registry
from torch import nn

from .data.custom_config import check_dataset_keys
from .hooks import build_hila_warmup
from .modeling.backbone.pyramid import PyramidBackbone
from .modeling.meta_arch.hmsa import HierarchicalMultiScaleSegmentor

__all__ = ["validate_config"]


def _registered(registry: Registry, key: str, name: str) -> None:
    """ValueError unless ``name`` (the value of config ``key``) is registered in ``registry``."""
    if name not in registry:
        allowed = sorted(entry for entry, _ in registry)
        raise ValueError(
            f"{key} is {name!r}, which is not registered in detectron2's {registry._name} "
            f"registry; choose one of {allowed} (import the module that registers yours first)"
        )


def _features_exist(key: str, features: Iterable[str], outputs: Dict[str, ShapeSpec], backbone: str) -> None:
    """ValueError unless every entry of ``features`` (config ``key``) is a backbone output."""
    absent = [name for name in features if name not in outputs]
    if absent:
        raise ValueError(
            f"{key} is {list(features)}, but the backbone {backbone} outputs no {absent}; "
            f"choose from its outputs {sorted(outputs)} (they follow the backbone's "
            "OUT_FEATURES and MODEL.FPN.* keys)"
        )


def _consumed_features(cfg: CfgNode, meta_arch: type) -> Dict[str, Sequence[str]]:
    """Config key -> backbone features that the heads of ``meta_arch`` read; {} for a
    meta-architecture whose heads are not known here."""
    consumed = {}
    if issubclass(meta_arch, (SemanticSegmentor, PanopticFPN)):
        consumed["MODEL.SEM_SEG_HEAD.IN_FEATURES"] = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
        if cfg.MODEL.SEM_SEG_HEAD.NAME == "PointRendSemSegHead":  # detectron2's PointRend
            consumed["MODEL.POINT_HEAD.IN_FEATURES"] = cfg.MODEL.POINT_HEAD.IN_FEATURES
        if cfg.MODEL.SEM_SEG_HEAD.NAME == "UPerNetHead" and cfg.MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT:
            consumed["MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE"] = [cfg.MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE]
    if issubclass(meta_arch, HierarchicalMultiScaleSegmentor) and cfg.MODEL.HMSA.ATTN_IN_FEATURE:
        consumed["MODEL.HMSA.ATTN_IN_FEATURE"] = [cfg.MODEL.HMSA.ATTN_IN_FEATURE]
    if cfg.MODEL.META_ARCHITECTURE == "PanopticDeepLab":  # detectron2's Panoptic-DeepLab
        consumed["MODEL.SEM_SEG_HEAD.IN_FEATURES"] = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
        consumed["MODEL.INS_EMBED_HEAD.IN_FEATURES"] = cfg.MODEL.INS_EMBED_HEAD.IN_FEATURES
    if issubclass(meta_arch, GeneralizedRCNN):
        if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RPN":
            consumed["MODEL.RPN.IN_FEATURES"] = cfg.MODEL.RPN.IN_FEATURES
        consumed["MODEL.ROI_HEADS.IN_FEATURES"] = cfg.MODEL.ROI_HEADS.IN_FEATURES
    if issubclass(meta_arch, RetinaNet):
        consumed["MODEL.RETINANET.IN_FEATURES"] = cfg.MODEL.RETINANET.IN_FEATURES
    return consumed


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _every_output_is_read(cfg: CfgNode, backbone: nn.Module, consumed: Dict[str, Sequence[str]]) -> None:
    """ValueError when a hila_d2 encoder returns features that nothing reads (the heads, or
    the FPN over it) and building it without them drops parameters: those would get no
    gradient, and DistributedDataParallel (find_unused_parameters=False) stops training."""
    encoder = backbone.bottom_up if isinstance(backbone, FPN) else backbone
    if not isinstance(encoder, PyramidBackbone) or not consumed:
        return
    if isinstance(backbone, FPN):
        readers = {"MODEL.FPN.IN_FEATURES": cfg.MODEL.FPN.IN_FEATURES}
    else:
        readers = consumed
    read = {name for features in readers.values() for name in features}
    unread = [name for name in encoder.output_shape() if name not in read]
    if not unread:
        return
    key = f"{encoder.config_group}.OUT_FEATURES"
    needed = [name for name in encoder.output_shape() if name in read]
    lean = cfg.clone()
    lean.defrost()
    lean.merge_from_list([key, needed])
    if _parameter_count(build_backbone(lean)) < _parameter_count(backbone):
        raise ValueError(
            f"{key} returns {unread}, which nothing reads ({', '.join(sorted(readers))}): the "
            "parameters that only produce them would get no gradient, and distributed training "
            f"(DistributedDataParallel) stops at its second iteration; set {key} to {needed}"
        )


def validate_config(cfg: CfgNode) -> None:
    """Raise a ValueError naming the key, its value and the allowed values for the first model
    key of ``cfg`` that cannot build a working model; return None when the model builds.

    Checks, in order: the registry names (meta-architecture, backbone, heads), the dataset keys
    ``DATASETS.SEM_SEG_FOLDERS`` / ``COCO_JSONS`` and, for a semantic model, its
    MODEL.SEM_SEG_HEAD.NUM_CLASSES and IGNORE_VALUE against the folders' CLASSES and
    IGNORE_LABEL (``hila_d2.data.custom_config.check_dataset_keys``, a ``DatasetError``, which is
    a ValueError; no file is read), the backbone's own keys (variant, HILA stages, ...), that
    every head reads features the backbone outputs, that a hila_d2 encoder returns no feature whose parameters nothing would train (for the
    meta-architectures whose heads are known), and then every other check made while the model
    is built (e.g. MODEL.HMSA scale lists), and last SOLVER.HILA_WARMUP_ITERS
    (``hila_d2.hooks.build_hila_warmup``). Nothing is allocated and the random number generators
    are left untouched.
    """
    model = cfg.MODEL
    _registered(META_ARCH_REGISTRY, "MODEL.META_ARCHITECTURE", model.META_ARCHITECTURE)
    _registered(BACKBONE_REGISTRY, "MODEL.BACKBONE.NAME", model.BACKBONE.NAME)
    meta_arch = META_ARCH_REGISTRY.get(model.META_ARCHITECTURE)
    if issubclass(meta_arch, (SemanticSegmentor, PanopticFPN)):
        _registered(SEM_SEG_HEADS_REGISTRY, "MODEL.SEM_SEG_HEAD.NAME", model.SEM_SEG_HEAD.NAME)
    if issubclass(meta_arch, GeneralizedRCNN):
        _registered(
            PROPOSAL_GENERATOR_REGISTRY,
            "MODEL.PROPOSAL_GENERATOR.NAME",
            model.PROPOSAL_GENERATOR.NAME,
        )
        _registered(ROI_HEADS_REGISTRY, "MODEL.ROI_HEADS.NAME", model.ROI_HEADS.NAME)
    check_dataset_keys(cfg)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        backbone = build_backbone(cfg)
        outputs = backbone.output_shape()
        consumed = _consumed_features(cfg, meta_arch)
        for key, features in consumed.items():
            _features_exist(key, features, outputs, model.BACKBONE.NAME)
        _every_output_is_read(cfg, backbone, consumed)
        meta_arch(cfg)
    build_hila_warmup(cfg)
