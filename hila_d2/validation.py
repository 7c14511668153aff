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
from detectron2.utils.registry import Registry

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
    """Config key -> backbone features that the heads of ``meta_arch`` read."""
    consumed = {}
    if issubclass(meta_arch, (SemanticSegmentor, PanopticFPN)):
        consumed["MODEL.SEM_SEG_HEAD.IN_FEATURES"] = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
    if issubclass(meta_arch, GeneralizedRCNN):
        if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RPN":
            consumed["MODEL.RPN.IN_FEATURES"] = cfg.MODEL.RPN.IN_FEATURES
        consumed["MODEL.ROI_HEADS.IN_FEATURES"] = cfg.MODEL.ROI_HEADS.IN_FEATURES
    if issubclass(meta_arch, RetinaNet):
        consumed["MODEL.RETINANET.IN_FEATURES"] = cfg.MODEL.RETINANET.IN_FEATURES
    return consumed


def validate_config(cfg: CfgNode) -> None:
    """Raise a ValueError naming the key, its value and the allowed values for the first model
    key of ``cfg`` that cannot build a working model; return None when the model builds.

    Checks, in order: the registry names (meta-architecture, backbone, heads), the backbone's own
    keys (variant, HILA stages, ...), that every head reads features the backbone outputs, and
    then every other check made while the model is built (e.g. MODEL.HMSA scale lists). Nothing
    is allocated and the random number generators are left untouched.
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
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        outputs = build_backbone(cfg).output_shape()
        for key, features in _consumed_features(cfg, meta_arch).items():
            _features_exist(key, features, outputs, model.BACKBONE.NAME)
        meta_arch(cfg)
