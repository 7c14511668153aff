"""hila_d2's config keys next to other detectron2 projects' in one CfgNode, in either order.

DeepLab's, Panoptic-DeepLab's and PointRend's config functions are imported from the installed
detectron2. Mask2Former is not installable here, so ``add_maskformer2_keys`` writes the key set
that its ``add_maskformer2_config`` defines (Mask2Former's mask2former/config.py, as released),
the way that function does: plain assignments, with ``MODEL.MASK_FORMER`` and ``MODEL.SWIN``
replaced by new groups.
"""
from pathlib import Path
from typing import Callable, Dict

import pytest
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.projects.panoptic_deeplab import add_panoptic_deeplab_config
from detectron2.projects.point_rend import add_pointrend_config

import hila_d2
from hila_d2.config import (
    CONFIG_PARTS,
    MOVED_KEYS,
    SHARED_KEYS,
    add_boundary_fscore_config,
    add_datasets_config,
    add_decode_head_config,
    add_hatnet_config,
    add_hila_attention_config,
    add_hmsa_config,
    add_input_config,
    add_mit_config,
    add_sliding_window_config,
    add_solver_config,
    add_swin_config,
    add_timm_config,
    add_weights_config,
    hila_defaults,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))


def _leaf_configs():
    """The shipped YAMLs that no other one names in its ``_BASE_``: the ones users run (the
    others are bases and fragments that set part of a config)."""
    bases = set()
    for path in CONFIGS:
        base = yaml.safe_load((REPO / path).read_text()).get("_BASE_", [])
        for name in [base] if isinstance(base, str) else base:
            bases.add(str((REPO / path).parent.joinpath(name).resolve().relative_to(REPO)))
    return [path for path in CONFIGS if path not in bases]


LEAF_CONFIGS = _leaf_configs()

# Mask2Former's add_maskformer2_config: every key it defines and its default.
MASKFORMER2_KEYS = {
    "INPUT.DATASET_MAPPER_NAME": "mask_former_semantic",
    "INPUT.COLOR_AUG_SSD": False,
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,
    "INPUT.SIZE_DIVISIBILITY": -1,
    "SOLVER.WEIGHT_DECAY_EMBED": 0.0,
    "SOLVER.OPTIMIZER": "ADAMW",
    "SOLVER.BACKBONE_MULTIPLIER": 0.1,
    "MODEL.MASK_FORMER.DEEP_SUPERVISION": True,
    "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": 0.1,
    "MODEL.MASK_FORMER.CLASS_WEIGHT": 1.0,
    "MODEL.MASK_FORMER.DICE_WEIGHT": 1.0,
    "MODEL.MASK_FORMER.MASK_WEIGHT": 20.0,
    "MODEL.MASK_FORMER.NHEADS": 8,
    "MODEL.MASK_FORMER.DROPOUT": 0.1,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
    "MODEL.MASK_FORMER.ENC_LAYERS": 0,
    "MODEL.MASK_FORMER.DEC_LAYERS": 6,
    "MODEL.MASK_FORMER.PRE_NORM": False,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res5",
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True,
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": False,
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": False,
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.0,
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.0,
    "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 0,
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
    "MODEL.SWIN.PRETRAIN_IMG_SIZE": 224,
    "MODEL.SWIN.PATCH_SIZE": 4,
    "MODEL.SWIN.EMBED_DIM": 96,
    "MODEL.SWIN.DEPTHS": [2, 2, 6, 2],
    "MODEL.SWIN.NUM_HEADS": [3, 6, 12, 24],
    "MODEL.SWIN.WINDOW_SIZE": 7,
    "MODEL.SWIN.MLP_RATIO": 4.0,
    "MODEL.SWIN.QKV_BIAS": True,
    "MODEL.SWIN.QK_SCALE": None,
    "MODEL.SWIN.DROP_RATE": 0.0,
    "MODEL.SWIN.ATTN_DROP_RATE": 0.0,
    "MODEL.SWIN.DROP_PATH_RATE": 0.3,
    "MODEL.SWIN.APE": False,
    "MODEL.SWIN.PATCH_NORM": True,
    "MODEL.SWIN.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.SWIN.USE_CHECKPOINT": False,
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
    "INPUT.IMAGE_SIZE": 1024,
    "INPUT.MIN_SCALE": 0.1,
    "INPUT.MAX_SCALE": 2.0,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": 8,
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 112 * 112,
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": 3.0,
    "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": 0.75,
}
_MASKFORMER2_GROUPS = ("MODEL.MASK_FORMER", "MODEL.MASK_FORMER.TEST", "MODEL.SWIN")


def add_maskformer2_keys(cfg: CN) -> None:
    """What Mask2Former's ``add_maskformer2_config(cfg)`` does to ``cfg``."""
    for group in _MASKFORMER2_GROUPS:
        parent, name = group.rsplit(".", 1)
        setattr(_node(cfg, parent), name, CN())
    for key, value in MASKFORMER2_KEYS.items():
        parent, name = key.rsplit(".", 1)
        setattr(_node(cfg, parent), name, value)


def add_maskformer2_train_net_config(cfg: CN) -> None:
    """Mask2Former's train_net.py setup: DeepLab's keys, then its own."""
    add_deeplab_config(cfg)
    add_maskformer2_keys(cfg)


OTHER_PROJECTS: Dict[str, Callable[[CN], None]] = {
    "DeepLab": add_deeplab_config,
    "Panoptic-DeepLab": add_panoptic_deeplab_config,
    "PointRend": add_pointrend_config,
    "Mask2Former": add_maskformer2_keys,
    "Mask2Former train_net": add_maskformer2_train_net_config,
}
ORDERS = ("theirs first", "hila_d2 first")


def _node(cfg: CN, dotted: str) -> CN:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def flatten(node: CN, prefix: str = "") -> Dict[str, object]:
    """{"A.B.C": value} for every leaf of ``node``."""
    leaves = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, CN):
            leaves.update(flatten(value, name + "."))
        else:
            leaves[name] = value
    return leaves


def composed(project: str, order: str) -> CN:
    cfg = get_cfg()
    steps = [OTHER_PROJECTS[project], hila_d2.add_hila_config]
    for step in steps if order == "theirs first" else steps[::-1]:
        step(cfg)
    return cfg


def alone(add: Callable[[CN], None]) -> CN:
    cfg = get_cfg()
    add(cfg)
    return cfg


def project_keys(project: str) -> Dict[str, object]:
    """The keys that a project's config function adds or changes, with its values."""
    base = flatten(get_cfg())
    return {k: v for k, v in flatten(alone(OTHER_PROJECTS[project])).items() if base.get(k, k) != v}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("project", sorted(OTHER_PROJECTS))
def test_composition_keeps_every_key_of_both_projects(project, order):
    cfg = flatten(composed(project, order))
    theirs = project_keys(project)
    assert {k: cfg[k] for k in theirs} == theirs  # their keys and values survive
    ours = flatten(hila_defaults())
    for key, value in ours.items():
        if key in theirs:  # a shared key: theirs wins, and SHARED_KEYS says so
            owners = SHARED_KEYS.get(key, {})
            assert theirs[key] in [v for owner, v in owners.items() if owner != "hila_d2"], key
        else:
            assert cfg[key] == value, key


def test_add_hila_config_changes_no_existing_key():
    cfg = get_cfg()
    for add in OTHER_PROJECTS.values():
        add(cfg)
    before = flatten(cfg)
    after = flatten(hila_d2.add_hila_config(cfg))
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before)  # it did add its own keys
    assert flatten(hila_d2.add_hila_config(cfg)) == after  # and a second call is a no-op


def test_shared_keys_lists_every_key_hila_d2_shares_with_a_tested_project():
    ours = flatten(hila_defaults())
    for project in ("DeepLab", "Panoptic-DeepLab", "PointRend", "Mask2Former"):
        theirs = {k: v for k, v in flatten(alone(OTHER_PROJECTS[project])).items()}
        shared = {k for k in ours if k in theirs and k not in flatten(get_cfg())}
        documented = {k for k, owners in SHARED_KEYS.items() if project in owners}
        assert shared == documented, project
        assert {k: SHARED_KEYS[k][project] for k in shared} == {k: theirs[k] for k in shared}
    assert all(SHARED_KEYS[k]["hila_d2"] == ours[k] for k in SHARED_KEYS)


def _reference_configs():
    """Every shipped leaf YAML merged over detectron2 + hila_d2 keys alone, flattened."""
    references = {}
    for path in LEAF_CONFIGS:
        cfg = hila_d2.add_hila_config(get_cfg())
        cfg.merge_from_file(str(REPO / path))
        references[path] = flatten(cfg)
    return references


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("project", sorted(OTHER_PROJECTS))
def test_every_shipped_config_means_the_same_next_to_another_project(project, order):
    """A hila_d2 leaf YAML sets every shared key it relies on, so no other project's default leaks
    into it: each key of the hila_d2-only config has the same value in the composed one."""
    for path, reference in _reference_configs().items():
        cfg = composed(project, order)
        cfg.merge_from_file(str(REPO / path))
        merged = flatten(cfg)
        changed = {k: (v, merged[k]) for k, v in reference.items() if merged[k] != v}
        assert not changed, f"{path}: {changed}"
    assert len(LEAF_CONFIGS) > 40  # the leaves were found


def test_mask2former_swin_config_merges_next_to_hila_d2():
    """The keys of Mask2Former's Swin YAMLs (which hila_d2 used to delete) merge, in both orders,
    and hila_d2's Swin keys live in their own group."""
    for order in ORDERS:
        cfg = composed("Mask2Former train_net", order)
        cfg.merge_from_list(
            ["MODEL.SWIN.EMBED_DIM", 128, "MODEL.SWIN.WINDOW_SIZE", 12,
             "MODEL.HILA_D2_SWIN.VARIANT", "B", "MODEL.HILA_D2_SWIN.WINDOW_SIZE", 7]
        )  # fmt: skip
        assert cfg.MODEL.SWIN.EMBED_DIM == 128 and cfg.MODEL.SWIN.WINDOW_SIZE == 12
        assert cfg.MODEL.HILA_D2_SWIN.VARIANT == "B" and cfg.MODEL.HILA_D2_SWIN.WINDOW_SIZE == 7
        assert cfg.INPUT.DATASET_MAPPER_NAME == "mask_former_semantic"
        assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.POLY_LR_POWER == 0.9


@pytest.mark.parametrize("with_mask2former", [False, True])
def test_a_moved_key_fails_naming_its_new_key(tmp_path, with_mask2former):
    old_file = tmp_path / "old_swin.yaml"
    old_file.write_text("MODEL:\n  SWIN:\n    VARIANT: S\n    WINDOW_SIZE: 12\n")
    cfg = composed("Mask2Former", "theirs first") if with_mask2former else alone(
        hila_d2.add_hila_config
    )
    with pytest.raises(KeyError, match=r"MODEL\.SWIN(\.VARIANT)? .*MODEL\.HILA_D2_SWIN"):
        cfg.clone().merge_from_file(str(old_file))
    with pytest.raises(KeyError, match=r"MODEL\.SWIN\.VARIANT .*MODEL\.HILA_D2_SWIN\.VARIANT"):
        cfg.clone().merge_from_list(["MODEL.SWIN.VARIANT", "S"])
    assert MOVED_KEYS == {"MODEL.SWIN": "MODEL.HILA_D2_SWIN"}


def test_load_config_names_the_new_key_of_a_moved_override():
    config = "configs/ade20k/semantic-segmentation/swin/upernet_swin_t_160k.yaml"
    with pytest.raises(KeyError, match=r"MODEL\.SWIN\.WINDOW_SIZE .*MODEL\.HILA_D2_SWIN\.WINDOW_SIZE"):
        hila_d2.load_config(str(REPO / config), ["MODEL.SWIN.WINDOW_SIZE", "12"])
    cfg = hila_d2.load_config(str(REPO / config), ["MODEL.HILA_D2_SWIN.WINDOW_SIZE", "12"])
    assert cfg.MODEL.HILA_D2_SWIN.WINDOW_SIZE == 12


def test_a_key_another_project_made_a_value_is_a_clear_error():
    cfg = get_cfg()
    cfg.MODEL.HILA = "something else"
    with pytest.raises(ValueError, match=r"MODEL\.HILA is already a value"):
        hila_d2.add_hila_config(cfg)


# Each part of hila_d2's config and the keys it owns: prefixes of the dotted keys (a whole group
# where the prefix ends in ".").
PART_KEYS = {
    add_mit_config: ("MODEL.MIT.",),
    add_swin_config: ("MODEL.HILA_D2_SWIN.",),
    add_hatnet_config: ("MODEL.HATNET.",),
    add_timm_config: ("MODEL.TIMM.",),
    add_hila_attention_config: ("MODEL.HILA.",),
    add_decode_head_config: (
        "MODEL.SEM_SEG_HEAD.EMBED_DIM", "MODEL.SEM_SEG_HEAD.DROPOUT",
        "MODEL.SEM_SEG_HEAD.UPERNET.", "MODEL.SEM_SEG_HEAD.AUX.",
    ),
    add_sliding_window_config: ("TEST.SLIDING_WINDOW.",),
    add_hmsa_config: ("MODEL.HMSA.",),
    add_boundary_fscore_config: ("TEST.BOUNDARY_FSCORE.",),
    add_input_config: (
        "INPUT.DATASET_MAPPER_NAME", "INPUT.DETR_CROP.", "INPUT.RESIZE_BASE_SIZE",
        "INPUT.RESIZE_RATIO_RANGE", "INPUT.PHOTOMETRIC_DISTORTION",
        "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA",
    ),
    add_weights_config: ("MODEL.WEIGHTS_OPTIONAL_KEYS",),
    add_solver_config: (
        "SOLVER.OPTIMIZER", "SOLVER.BETAS", "SOLVER.HEAD_LR_MULTIPLIER", "SOLVER.POLY_LR_POWER",
        "SOLVER.HILA_WARMUP_ITERS",
    ),
    add_datasets_config: ("DATASETS.SEM_SEG_FOLDERS.", "DATASETS.COCO_JSONS."),
}  # fmt: skip
PARTS = list(PART_KEYS)


def added_keys(add: Callable[[CN], CN]) -> Dict[str, object]:
    """The keys that ``add`` adds to detectron2's defaults, with their values."""
    base = flatten(get_cfg())
    return {k: v for k, v in flatten(alone(add)).items() if k not in base}


def _owned(key: str, prefixes) -> bool:
    return any(key.startswith(p) if p.endswith(".") else key == p for p in prefixes)


@pytest.mark.parametrize("add", PARTS, ids=[add.__name__ for add in PARTS])
def test_each_part_alone_adds_exactly_its_keys(add):
    base = flatten(get_cfg())
    cfg = flatten(alone(add))
    assert {k: cfg[k] for k in base} == base  # detectron2's keys keep their values
    added = added_keys(add)
    assert added and all(_owned(key, PART_KEYS[add]) for key in added), sorted(added)
    # each listed key or group is there: the part adds all of its keys
    assert all(any(_owned(key, [p]) for key in added) for p in PART_KEYS[add])


def test_the_parts_are_add_hila_config():
    assert set(CONFIG_PARTS) == set(PARTS) and len(CONFIG_PARTS) == len(PARTS)
    mit_only = alone(add_mit_config)
    assert "MIT" in mit_only.MODEL and "HILA" not in mit_only.MODEL
    whole = flatten(alone(hila_d2.add_hila_config))
    for parts in (CONFIG_PARTS, CONFIG_PARTS[::-1]):
        cfg = get_cfg()
        for add in parts:
            add(cfg)
        assert flatten(cfg) == whole
    # the parts' keys are disjoint and together all of hila_d2's
    owned = [set(added_keys(add)) for add in PARTS]
    assert sum(map(len, owned)) == len(set().union(*owned))
    assert set().union(*owned) == set(whole) - set(flatten(get_cfg()))


@pytest.mark.parametrize("add", PARTS, ids=[add.__name__ for add in PARTS])
def test_a_part_changes_no_value_already_there(add):
    for project, add_theirs in OTHER_PROJECTS.items():
        cfg = alone(add_theirs)
        before = flatten(cfg)
        add(cfg)
        after = flatten(cfg)
        assert {k: after[k] for k in before} == before, project
        assert flatten(add(cfg)) == after, project  # a second call is a no-op


def test_a_part_alone_raises_the_errors_of_add_hila_config():
    with pytest.raises(KeyError, match=r"MODEL\.SWIN\.VARIANT .*MODEL\.HILA_D2_SWIN\.VARIANT"):
        alone(add_swin_config).merge_from_list(["MODEL.SWIN.VARIANT", "S"])
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.AUX = 0.4
    with pytest.raises(ValueError, match=r"MODEL\.SEM_SEG_HEAD\.AUX is already a value \(0\.4\)"):
        add_decode_head_config(cfg)
