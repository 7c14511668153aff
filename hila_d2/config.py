"""The project's config keys, one function per concept.

Each ``add_*_config(cfg)`` of ``CONFIG_PARTS`` adds the keys of one concept (an encoder, HILA, the
decode heads, HMSA, ...) to a detectron2 ``CfgNode``, and only those that ``cfg`` lacks: a key
that detectron2 or another project's config function (DeepLab's, Panoptic-DeepLab's, PointRend's,
Mask2Former's) already defined keeps its value, in whichever order the functions run.
``add_hila_config(cfg)`` runs every part; it is the one function that callers need (the models
read keys of several parts, e.g. every encoder reads ``MODEL.HILA``). The keys hila_d2 shares
with those projects are ``SHARED_KEYS``; the project's YAML files set each of them explicitly, so
they mean the same in any process. ``load_config`` merges a YAML file and overrides over
detectron2's defaults and these keys.
"""
import copy
from typing import Callable, Dict, Sequence, Tuple

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = [
    "CONFIG_PARTS",
    "MOVED_KEYS",
    "SHARED_KEYS",
    "add_boundary_fscore_config",
    "add_datasets_config",
    "add_decode_head_config",
    "add_hatnet_config",
    "add_timm_config",
    "add_hila_attention_config",
    "add_hila_config",
    "add_hmsa_config",
    "add_input_config",
    "add_mit_config",
    "add_sliding_window_config",
    "add_solver_config",
    "add_swin_config",
    "add_weights_config",
    "hila_defaults",
    "load_config",
    "load_single_process_config",
]

# Config groups that hila_d2 moved, old -> new. A config that still sets a key of an old group
# fails with an error naming the new key. ``MODEL.SWIN`` belongs to Mask2Former (its Swin
# hyper-parameters); hila_d2's Swin selects a variant, so its keys live in a group of their own.
MOVED_KEYS: Dict[str, str] = {"MODEL.SWIN": "MODEL.HILA_D2_SWIN"}
# Keys of the old groups that no other project defines: yacs names the new key for these in
# command-line overrides too (a moved key that Mask2Former also defines must stay settable).
_MOVED_ONLY_KEYS = ("MODEL.SWIN.VARIANT",)

# Keys that hila_d2 defines and other detectron2 projects define too, with each one's default.
# Another project's value wins (hila_d2 never overwrites a key); every hila_d2 YAML sets these.
SHARED_KEYS: Dict[str, Dict[str, object]] = {
    "INPUT.DATASET_MAPPER_NAME": {"hila_d2": "", "Mask2Former": "mask_former_semantic"},
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": {
        "hila_d2": 1.0, "DeepLab": 1.0, "Panoptic-DeepLab": 1.0, "PointRend": 1.0,
        "Mask2Former": 1.0,
    },
    "SOLVER.OPTIMIZER": {"hila_d2": "SGD", "Panoptic-DeepLab": "ADAM", "Mask2Former": "ADAMW"},
    "SOLVER.POLY_LR_POWER": {"hila_d2": 1.0, "DeepLab": 0.9, "Panoptic-DeepLab": 0.9},
}  # fmt: skip


def load_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """detectron2's defaults with hila_d2's keys, then ``config_file``, then ``opts`` (``KEY
    VALUE`` pairs, as on a command line), frozen."""
    cfg = add_hila_config(get_cfg())
    cfg.merge_from_file(config_file)
    for key in list(opts)[0::2]:
        _check_not_moved(cfg, key)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def load_single_process_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """``load_config``, with BatchNorm in the semantic-segmentation head where the config asks for
    SyncBN (which needs a process group): for one-process tools such as benchmarks and audits."""
    cfg = load_config(config_file, opts)
    if cfg.MODEL.SEM_SEG_HEAD.NORM == "SyncBN":
        cfg = load_config(config_file, [*opts, "MODEL.SEM_SEG_HEAD.NORM", "BN"])
    return cfg


def _moved_to(key: str) -> str:
    """The new name of ``key`` if it lies in a group of ``MOVED_KEYS``, else ""."""
    for old, new in MOVED_KEYS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return ""


def _check_not_moved(cfg: CN, key: str) -> None:
    """KeyError naming the new key when ``key`` was moved and ``cfg`` has no key of that name
    (it may: Mask2Former's ``MODEL.SWIN.WINDOW_SIZE``)."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            new = _moved_to(key)
            if new:
                raise KeyError(
                    f"Key {key} was moved to {new} by hila_d2; please update your config"
                )
            return
        node = node[part]


def _add_missing(cfg: CN, group: str, keys: CN) -> CN:
    """Add to the dotted ``group`` of ``cfg`` (created where missing) every key of ``keys`` that
    it lacks, recursing into subgroups; ``cfg``. ValueError where a group is already a value."""
    node = cfg
    for depth, part in enumerate(group.split(".")):
        if part not in node:
            setattr(node, part, CN())
        node = node[part]
        if not isinstance(node, CN):
            name = ".".join(group.split(".")[: depth + 1])
            raise ValueError(
                f"{name} is already a value ({node!r}), set by detectron2 or another project's "
                f"config function; hila_d2 needs it to be a config group"
            )
    for key, value in keys.items():
        if key not in node:
            setattr(node, key, copy.deepcopy(value))
        elif isinstance(value, CN):
            _add_missing(cfg, f"{group}.{key}", value)
    return cfg


def add_mit_config(cfg: CN) -> CN:
    """``MODEL.MIT``: the MiT (SegFormer's Mix Transformer) encoder, MODEL.BACKBONE.NAME
    "build_mit_backbone"."""
    mit = CN()
    # Variant "B0".."B5": sets embed dims and depths (hila_d2.modeling.backbone.mit.MIT_VARIANTS).
    mit.VARIANT = "B0"
    # Stage outputs to return, a subset of res2..res5 (strides 4, 8, 16, 32).
    mit.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Stochastic depth rate of the last block, linear from 0 over all blocks (SegFormer: 0.1).
    mit.DROP_PATH_RATE = 0.1
    # Blocks per stage, overriding the variant's; [] keeps them (HILA's "B2" uses [2, 2, 6, 2]).
    mit.DEPTHS = []
    return _add_missing(cfg, "MODEL.MIT", mit)


def add_swin_config(cfg: CN) -> CN:
    """``MODEL.HILA_D2_SWIN``: the Swin Transformer encoder, MODEL.BACKBONE.NAME
    "build_swin_backbone". Setting a key of ``MOVED_KEYS`` afterwards (from a file or a command
    line) raises a KeyError that names the new key."""
    swin = CN()
    # Variant "T", "S", "B" or "L": sets embed dim, depths and heads
    # (hila_d2.modeling.backbone.swin.SWIN_VARIANTS).
    swin.VARIANT = "T"
    # Attention window (tokens per side); 7 for the ImageNet-224 checkpoints, 12 for the 384 ones.
    swin.WINDOW_SIZE = 7
    # Stochastic depth rate of the last block, linear from 0 over all blocks (Swin-T seg: 0.3).
    swin.DROP_PATH_RATE = 0.3
    # Stage outputs to return, a subset of res2..res5 (strides 4, 8, 16, 32).
    swin.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    _add_missing(cfg, "MODEL.HILA_D2_SWIN", swin)
    for old in (*MOVED_KEYS, *_MOVED_ONLY_KEYS):
        if not cfg.key_is_renamed(old):
            new = _moved_to(old)
            cfg.register_renamed_key(old, new, message=f"hila_d2 moved {old} to {new}.")
    return cfg


def add_hatnet_config(cfg: CN) -> CN:
    """``MODEL.HATNET``: the HAT-Net encoder (H-MHSA), MODEL.BACKBONE.NAME
    "build_hatnet_backbone"."""
    hatnet = CN()
    # Variant "T", "S", "M" or "L": sets the per-stage values below that are left empty
    # (hila_d2.modeling.backbone.hatnet.HATNET_VARIANTS).
    hatnet.VARIANT = "T"
    # Per-stage overrides of the variant ([] keeps the variant's): widths, blocks, inverted
    # residual expansions and depthwise kernel sizes, and the channels per attention head.
    hatnet.DIMS = []
    hatnet.DEPTHS = []
    hatnet.EXPANSIONS = []
    hatnet.KERNEL_SIZES = []
    hatnet.HEAD_DIM = 0  # 0 keeps the variant's (48 for T, 64 otherwise)
    # Local attention window G and global key pooling ratio r per stage (G = 1: plain MHSA).
    hatnet.GRID_SIZES = [8, 7, 7, 1]
    hatnet.DS_RATIOS = [8, 4, 2, 1]
    # Stochastic depth rate of the last block, linear from 0 over all blocks (PVT recipe: 0.1).
    hatnet.DROP_PATH_RATE = 0.1
    # Channel dropout after the attention projection and inside the inverted residuals.
    hatnet.DROP_RATE = 0.0
    # Stage outputs to return, a subset of res2..res5 (strides 4, 8, 16, 32).
    hatnet.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # -1: train everything; 0: freeze the stem; k: the stem and stages 1..k with their
    # downsampling layers (no gradients, kept in eval mode).
    hatnet.FROZEN_STAGES = -1
    # Maps not divisible by G are zero-padded per window after the qkv projection. True: padded
    # keys are masked out of the softmax; False: they take part as zero keys and values.
    # Identical either way when every map is divisible by G (inputs that are multiples of 224).
    hatnet.MASK_PADDED_KEYS = True
    # True: the global keys pool r x r windows in ceil mode, a partial border window averaging
    # its valid pixels; False: the official floor mode, which drops border rows/columns.
    hatnet.POOL_CEIL_MODE = True
    # Run the attention in float32 also under autocast (softmax over ~1k keys at detection sizes).
    hatnet.ATTENTION_FP32 = False
    return _add_missing(cfg, "MODEL.HATNET", hatnet)


def add_timm_config(cfg: CN) -> CN:
    """``MODEL.TIMM``: any timm encoder with feature_info, MODEL.BACKBONE.NAME
    "build_timm_backbone" or "build_timm_fpn_backbone" (hila_d2.modeling.backbone.timm)."""
    timm = CN()
    # The timm model name, e.g. "convnext_atto", "pvt_v2_b0", "swinv2_cr_tiny_ns_224".
    timm.NAME = ""
    # Outputs to return, named by stride: res1..res5 for strides 2..32, as the model has them.
    timm.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Stochastic depth rate passed to timm.create_model; 0 keeps the model's default.
    timm.DROP_PATH_RATE = 0.0
    # 0 trains every stage; k >= 1 freezes the stem and the stages up to res<k> (detectron2's
    # meaning: 1 the stem, 2 the stem and res2, ...).
    timm.FREEZE_AT = 0
    # More timm.create_model keyword arguments, e.g. {img_size: [512, 512]} for models with a
    # fixed input size (Swin, MaxViT, EfficientFormerV2) or {dynamic_img_size: True} (Swin).
    timm.KWARGS = CN(new_allowed=True)
    return _add_missing(cfg, "MODEL.TIMM", timm)


def add_hila_attention_config(cfg: CN) -> CN:
    """``MODEL.HILA``: hierarchical inter-level attention (``hila_d2.modeling.hila``), read by
    the MiT, Swin, HAT-Net and timm encoders."""
    hila = CN()
    # Upper stage (2..4) of each inter-level pair: [3] is the paper's S3 (stages 2 and 3),
    # [2, 3, 4] its S234. [] switches HILA off: the encoder is then exactly the plain encoder.
    hila.STAGES = []
    # Entry t-1 is the stride s of the pair whose upper stage is t: Bottom-Up runs before upper
    # blocks j with j % s == 0, Top-Down after blocks j < N-1 with (j-1) % s == 0, so a stage of
    # N blocks gets ceil(N/s) Bottom-Up and about (N-1)/s Top-Down iterations.
    hila.STRIDES = [1, 1, 1, 1]
    # Hidden ratio of the Mix-FFNs inside the HILA blocks (MiT configs 4, Swin 2).
    hila.MLP_RATIO = 4.0
    # MLP ratio of the extra lower-level self-attention block (4 for MiT; Swin: 2 as built by the
    # official config, 4 when it is initialised from the lower stage's last block).
    hila.BOTTOM_MLP_RATIO = 4.0
    # Heads of the inter-level attention (1 in every paper config).
    hila.NUM_HEADS = 1
    # (w0, w1) of the HILA FFN step x <- w0 * x + w1 * FFN(x); the paper configs use (0.5, 0.5).
    hila.INFO_WEIGHTS = (0.5, 0.5)
    # True: the official semantics, for converted checkpoints (Bottom-Up scale from the upper
    # width, zero padding children attended to, Swin's repeated lower norm). False: the clean
    # variant (padding masked, scale from the attention width, lower norm applied once).
    hila.PARITY_MODE = True
    # "No HILA pretraining": when MODEL.WEIGHTS lacks a pair's extra lower-level block, copy it
    # from the last block of the lower stage after loading (in place, so the optimiser trains it).
    hila.INIT_BOTTOM_FROM_LOWER_STAGE = False
    # Training memory of the HILA steps. False: each step keeps little and recomputes the cheap
    # rest in the backward pass (the attention cores and Mix-FFNs by themselves, Swin's and
    # HAT-Net's lower-level blocks under selective checkpointing; memory follows the FLOPs).
    # True: full activation checkpointing, every step keeps only its inputs and recomputes all
    # (less memory again, about one more forward of the HILA steps per training step).
    hila.CHECKPOINT = False
    return _add_missing(cfg, "MODEL.HILA", hila)


def add_decode_head_config(cfg: CN) -> CN:
    """``MODEL.SEM_SEG_HEAD``'s keys of the semantic decode heads: the SegFormer All-MLP head
    (NAME "SegFormerHead") and UperNet (NAME "UPerNetHead"), which both read DROPOUT; they reuse
    detectron2's IN_FEATURES, NUM_CLASSES, IGNORE_VALUE, NORM and LOSS_WEIGHT."""
    head = CN()
    # SegFormer: width of the per-level linear embeddings and of the fuse layer (256 for B0/B1,
    # 768 for B2-B5).
    head.EMBED_DIM = 256
    # Both heads: dropout before the classifier (SegFormer: 0.1).
    head.DROPOUT = 0.1
    # UperNet
    head.UPERNET = CN()
    # Width of the PPM, lateral, FPN and fuse convolutions (mmseg: 512).
    head.UPERNET.CHANNELS = 512
    # Output sizes of the pyramid pooling module on the coarsest level.
    head.UPERNET.POOL_SCALES = (1, 2, 3, 6)
    # Auxiliary FCN head (training only): one 3x3 conv + norm + ReLU, dropout, 1x1 classifier.
    head.AUX = CN()
    # Its loss weight; 0 builds no auxiliary head (Swin/HILA recipe: 0.4).
    head.AUX.LOSS_WEIGHT = 0.0
    # The feature it reads (Swin/HILA recipe: stage 3, "res4").
    head.AUX.IN_FEATURE = "res4"
    # Width of its conv (mmseg: 256).
    head.AUX.CHANNELS = 256
    return _add_missing(cfg, "MODEL.SEM_SEG_HEAD", head)


def add_sliding_window_config(cfg: CN) -> CN:
    """``TEST.SLIDING_WINDOW``: sliding-window inference, META_ARCHITECTURE
    "SlidingWindowSemanticSegmentor"."""
    window = CN()
    # Window (height, width) in pixels of the resized test image (SegFormer Cityscapes: 1024).
    window.CROP_SIZE = (1024, 1024)
    # Step (height, width) between windows (SegFormer Cityscapes: 768); overlaps are averaged.
    window.STRIDE = (768, 768)
    # Windows run through the network together (memory vs. speed).
    window.WINDOWS_PER_BATCH = 1
    return _add_missing(cfg, "TEST.SLIDING_WINDOW", window)


def add_hmsa_config(cfg: CN) -> CN:
    """``MODEL.HMSA``: hierarchical multi-scale attention (Tao et al., 2020), META_ARCHITECTURE
    "HierarchicalMultiScaleSegmentor" around any backbone + semantic head."""
    hmsa = CN()
    # Training scales: exactly two, one of them 1.0 (the crop as given, where the loss is taken);
    # the lower one's attention weighs its logits against the 1.0 logits (paper: (0.5, 1.0)).
    hmsa.TRAIN_SCALES = (0.5, 1.0)
    # Inference scales, chained hierarchically from the highest down; any number, must contain
    # 1.0 (the output resolution). (1.0,) is the plain single-scale model. Cityscapes:
    # (0.5, 1.0, 2.0); Mapillary: (0.25, 0.5, 1.0, 2.0).
    hmsa.TEST_SCALES = (0.5, 1.0, 2.0)
    # Also run the horizontally flipped images and average the fused logits.
    hmsa.TEST_FLIP = False
    # Attention head: width and number of its 3x3 conv + norm (MODEL.SEM_SEG_HEAD.NORM) + ReLU
    # layers, dropout before its 1x1 conv (official: 256, 2, 0.0; 0.5 when dropout is on).
    hmsa.ATTN_CHANNELS = 256
    hmsa.ATTN_NUM_CONVS = 2
    hmsa.ATTN_DROPOUT = 0.0
    # "": the attention reads the head's penultimate features (SegFormerHead, UPerNetHead and
    # detectron2's SemSegFPNHead provide them); else the backbone feature of this name, needed
    # for heads that provide only logits.
    hmsa.ATTN_IN_FEATURE = ""
    # Weight of the cross-entropy of each training scale's own (unfused) logits, the official
    # "supervised multi-scale loss" (Cityscapes recipes: 0.05); 0 adds no such loss.
    hmsa.SCALE_LOSS_WEIGHT = 0.0
    return _add_missing(cfg, "MODEL.HMSA", hmsa)


def add_boundary_fscore_config(cfg: CN) -> CN:
    """``TEST.BOUNDARY_FSCORE``: the boundary F-score
    (``hila_d2.evaluation.BoundaryFScoreEvaluator``), next to SemSegEvaluator."""
    fscore = CN()
    # Also evaluate the per-class boundary F-score of semantic predictions.
    fscore.ENABLED = False
    # Match tolerance in pixels; 0 = ceil(0.00088 * image diagonal) (3 px at 1024x2048), the
    # HILA paper's Cityscapes rule; ADE20K uses a fixed 3.
    fscore.TOLERANCE = 0
    return _add_missing(cfg, "TEST.BOUNDARY_FSCORE", fscore)


def add_input_config(cfg: CN) -> CN:
    """``INPUT``'s keys of the training mappers (``hila_d2.data.mappers``)."""
    inputs = CN()
    inputs.CROP = CN()
    # "" (default): detectron2's DatasetMapper, as stock detectron2 configs expect;
    # "segformer_semantic": the SegFormer semantic recipe configured below (Base-SegFormer.yaml);
    # "detr_crop": detectron2's DatasetMapper whose resize is, with probability
    # INPUT.DETR_CROP.PROB, preceded by a resize to INPUT.DETR_CROP.MIN_SIZES and a random crop
    # INPUT.CROP.{TYPE,SIZE} (the multi-scale + crop recipe of Swin's 3x detection configs).
    inputs.DATASET_MAPPER_NAME = ""
    inputs.DETR_CROP = CN()
    inputs.DETR_CROP.PROB = 0.5
    # Shorter sides (one chosen at random) of the resize before the crop.
    inputs.DETR_CROP.MIN_SIZES = (400, 500, 600)
    # "segformer_semantic": base (long side, short side) that a random ratio scales,
    # e.g. ADE20K (2048, 512).
    inputs.RESIZE_BASE_SIZE = (2048, 512)
    # The ratio is drawn uniformly from this range; the image is resized to fit the scaled base.
    inputs.RESIZE_RATIO_RANGE = (0.5, 2.0)
    # mmseg-style photometric distortion (brightness, contrast, saturation, hue) on training images.
    inputs.PHOTOMETRIC_DISTORTION = True
    # Crops are detectron2's INPUT.CROP.{ENABLED,TYPE,SIZE}, retried (up to 10 times) while one
    # category covers more than this fraction of the crop (SegFormer: 0.75; 1.0 = no constraint).
    inputs.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    return _add_missing(cfg, "INPUT", inputs)


def add_weights_config(cfg: CN) -> CN:
    """``MODEL.WEIGHTS_OPTIONAL_KEYS``: loading MODEL.WEIGHTS
    (``hila_d2.checkpoint.loading.ValidatingCheckpointer``)."""
    model = CN()
    # A key of the model that the checkpoint lacks, a checkpoint key the model lacks and a tensor
    # of another shape are errors, except, when a training run starts from MODEL.WEIGHTS, for
    # model keys matching these patterns (fnmatch, * = anything): modules that initialisation
    # weights lack or shape differently, which keep their initialisation. The defaults: decode
    # and detection heads (new, or for another class count), HMSA's scale attention, FPN layers,
    # HILA pairs over plain-encoder weights and the stage norms ImageNet Swin files lack.
    # --resume and --eval-only ignore them: every key must match.
    model.WEIGHTS_OPTIONAL_KEYS = [
        "sem_seg_head.*",
        "proposal_generator.*",
        "roi_heads.*",
        "scale_attn.*",
        "backbone.fpn_*",
        "backbone.hila.*",
        "backbone.bottom_up.hila.*",
        "backbone.norm[0-3].*",
        "backbone.bottom_up.norm[0-3].*",
    ]
    return _add_missing(cfg, "MODEL", model)


def add_solver_config(cfg: CN) -> CN:
    """``SOLVER``'s keys of the optimiser and schedule (``hila_d2.solver``)."""
    solver = CN()
    # The defaults are detectron2's (SGD, one LR), so stock detectron2 configs train as they do
    # with detectron2's own trainer; the project's Base-*.yaml set their recipes.
    # "SGD" (SOLVER.MOMENTUM, SOLVER.NESTEROV) or "ADAMW" (SOLVER.BETAS).
    solver.OPTIMIZER = "SGD"
    # AdamW betas.
    solver.BETAS = (0.9, 0.999)
    # LR multiplier of every parameter outside the backbone (SegFormer recipe: 10.0).
    solver.HEAD_LR_MULTIPLIER = 1.0
    # For SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR": lr = base * (1 - iter / MAX_ITER) ** POWER.
    solver.POLY_LR_POWER = 1.0
    # Iterations over which the HILA pairs fade in (hila_d2.hooks.HILAWarmup): each step's change
    # is scaled by iter / HILA_WARMUP_ITERS, so the encoder starts as the plain one. 0: off.
    solver.HILA_WARMUP_ITERS = 0
    return _add_missing(cfg, "SOLVER", solver)


def add_datasets_config(cfg: CN) -> CN:
    """``DATASETS.SEM_SEG_FOLDERS`` and ``DATASETS.COCO_JSONS``: one's own datasets, registered
    (and their files checked) by train_net.py right after the config is loaded
    (``hila_d2.data.custom_config``); detectron2's DATASETS.TRAIN / TEST then name them."""
    datasets = CN()
    folders = CN()
    # (name, image_dir, label_dir) per split: images (jpg/jpeg/png/bmp/tif) and label PNGs of the
    # same relative paths and base names, each pixel a class id or IGNORE_LABEL
    # (hila_d2.data.register_sem_seg_folder). Paths are relative to the working directory.
    folders.SPLITS = ()
    # The class names, in the order of the label ids (id 0 first); the model's
    # MODEL.SEM_SEG_HEAD.NUM_CLASSES must be their number (checked, never changed).
    folders.CLASSES = ()
    # The label value of unlabelled pixels; MODEL.SEM_SEG_HEAD.IGNORE_VALUE must equal it.
    folders.IGNORE_LABEL = 255
    datasets.SEM_SEG_FOLDERS = folders
    coco = CN()
    # (name, json_file, image_root) per split: COCO-format instances JSONs (CVAT, Label Studio,
    # labelme converters) with their images (hila_d2.data.register_coco_json); the categories
    # become the dataset's thing_classes.
    coco.SPLITS = ()
    datasets.COCO_JSONS = coco
    return _add_missing(cfg, "DATASETS", datasets)


# Every part of hila_d2's config, in the order their keys appear in a config.
CONFIG_PARTS: Tuple[Callable[[CN], CN], ...] = (
    add_mit_config,
    add_swin_config,
    add_hatnet_config,
    add_timm_config,
    add_hila_attention_config,
    add_decode_head_config,
    add_sliding_window_config,
    add_hmsa_config,
    add_boundary_fscore_config,
    add_input_config,
    add_weights_config,
    add_solver_config,
    add_datasets_config,
)


def add_hila_config(cfg: CN) -> CN:
    """Add every hila_d2 key that ``cfg`` lacks, with its default (in place; also returned): each
    of ``CONFIG_PARTS``.

    Existing keys are never changed, so this composes in any order with detectron2's project
    config functions and Mask2Former's. Setting a key of ``MOVED_KEYS`` afterwards (from a file
    or a command line) raises a KeyError that names the new key.
    """
    for add_part in CONFIG_PARTS:
        add_part(cfg)
    return cfg


def hila_defaults() -> CN:
    """A tree of hila_d2's keys only (MODEL, INPUT, SOLVER, TEST, DATASETS), with their defaults."""
    return add_hila_config(CN())
