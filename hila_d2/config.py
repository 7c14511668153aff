"""The project's config keys.

``add_hila_config(cfg)`` adds them to a detectron2 ``CfgNode``, and only those that ``cfg`` lacks:
a key that detectron2 or another project's config function (DeepLab's, Panoptic-DeepLab's,
PointRend's, Mask2Former's) already defined keeps its value, in whichever order the functions
run. The keys hila_d2 shares with those projects are ``SHARED_KEYS``; the project's YAML files
set each of them explicitly, so they mean the same in any process. ``load_config`` merges a YAML
file and overrides over detectron2's defaults and these keys.
"""
import copy
from typing import Dict, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["MOVED_KEYS", "SHARED_KEYS", "add_hila_config", "hila_defaults", "load_config"]

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
                raise KeyError(f"Key {key} was moved to {new} by hila_d2; please update your config")
            return
        node = node[part]


def add_hila_config(cfg: CN) -> CN:
    """Add every hila_d2 key that ``cfg`` lacks, with its default (in place; also returned).

    Existing keys are never changed, so this composes in any order with detectron2's project
    config functions and Mask2Former's. Setting a key of ``MOVED_KEYS`` afterwards (from a file
    or a command line) raises a KeyError that names the new key.
    """
    _add_missing(cfg, hila_defaults(), [])
    for old in (*MOVED_KEYS, *_MOVED_ONLY_KEYS):
        if not cfg.key_is_renamed(old):
            new = _moved_to(old)
            cfg.register_renamed_key(old, new, message=f"hila_d2 moved {old} to {new}.")
    return cfg


def _add_missing(target: CN, defaults: CN, path: list) -> None:
    """Copy into ``target`` every key of ``defaults`` that it lacks, recursing into subtrees."""
    for key, value in defaults.items():
        name = ".".join(path + [key])
        if key not in target:
            setattr(target, key, copy.deepcopy(value))
        elif isinstance(value, CN):
            if not isinstance(target[key], CN):
                raise ValueError(
                    f"{name} is already a value ({target[key]!r}), set by detectron2 or another "
                    f"project's config function; hila_d2 needs it to be a config group"
                )
            _add_missing(target[key], value, path + [key])


def hila_defaults() -> CN:
    """A tree of hila_d2's keys only (MODEL, INPUT, SOLVER, TEST), with their defaults."""
    defaults = CN()
    defaults.MODEL = CN()
    defaults.MODEL.SEM_SEG_HEAD = CN()
    defaults.INPUT = CN()
    defaults.INPUT.CROP = CN()
    defaults.SOLVER = CN()
    defaults.TEST = CN()
    # ---- MiT (SegFormer's Mix Transformer) encoder: MODEL.BACKBONE.NAME "build_mit_backbone"
    defaults.MODEL.MIT = CN()
    # Variant "B0".."B5": sets embed dims and depths (hila_d2.modeling.backbone.mit.MIT_VARIANTS).
    defaults.MODEL.MIT.VARIANT = "B0"
    # Stage outputs to return, a subset of res2..res5 (strides 4, 8, 16, 32).
    defaults.MODEL.MIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Stochastic depth rate of the last block, linear from 0 over all blocks (SegFormer: 0.1).
    defaults.MODEL.MIT.DROP_PATH_RATE = 0.1
    # Blocks per stage, overriding the variant's; [] keeps them (HILA's "B2" uses [2, 2, 6, 2]).
    defaults.MODEL.MIT.DEPTHS = []

    # ---- Swin Transformer encoder: MODEL.BACKBONE.NAME "build_swin_backbone"
    defaults.MODEL.HILA_D2_SWIN = CN()
    # Variant "T", "S", "B" or "L": sets embed dim, depths and heads
    # (hila_d2.modeling.backbone.swin.SWIN_VARIANTS).
    defaults.MODEL.HILA_D2_SWIN.VARIANT = "T"
    # Attention window (tokens per side); 7 for the ImageNet-224 checkpoints, 12 for the 384 ones.
    defaults.MODEL.HILA_D2_SWIN.WINDOW_SIZE = 7
    # Stochastic depth rate of the last block, linear from 0 over all blocks (Swin-T seg: 0.3).
    defaults.MODEL.HILA_D2_SWIN.DROP_PATH_RATE = 0.3
    # Stage outputs to return, a subset of res2..res5 (strides 4, 8, 16, 32).
    defaults.MODEL.HILA_D2_SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # ---- HAT-Net encoder (H-MHSA): MODEL.BACKBONE.NAME "build_hatnet_backbone"
    defaults.MODEL.HATNET = CN()
    # Variant "T", "S", "M" or "L": sets the per-stage values below that are left empty
    # (hila_d2.modeling.backbone.hatnet.HATNET_VARIANTS).
    defaults.MODEL.HATNET.VARIANT = "T"
    # Per-stage overrides of the variant ([] keeps the variant's): widths, blocks, inverted
    # residual expansions and depthwise kernel sizes, and the channels per attention head.
    defaults.MODEL.HATNET.DIMS = []
    defaults.MODEL.HATNET.DEPTHS = []
    defaults.MODEL.HATNET.EXPANSIONS = []
    defaults.MODEL.HATNET.KERNEL_SIZES = []
    defaults.MODEL.HATNET.HEAD_DIM = 0  # 0 keeps the variant's (48 for T, 64 otherwise)
    # Local attention window G and global key pooling ratio r per stage (G = 1: plain MHSA).
    defaults.MODEL.HATNET.GRID_SIZES = [8, 7, 7, 1]
    defaults.MODEL.HATNET.DS_RATIOS = [8, 4, 2, 1]
    # Stochastic depth rate of the last block, linear from 0 over all blocks (PVT recipe: 0.1).
    defaults.MODEL.HATNET.DROP_PATH_RATE = 0.1
    # Channel dropout after the attention projection and inside the inverted residuals.
    defaults.MODEL.HATNET.DROP_RATE = 0.0
    # Stage outputs to return, a subset of res2..res5 (strides 4, 8, 16, 32).
    defaults.MODEL.HATNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # -1: train everything; 0: freeze the stem; k: the stem and stages 1..k with their
    # downsampling layers (no gradients, kept in eval mode).
    defaults.MODEL.HATNET.FROZEN_STAGES = -1
    # Maps not divisible by G are zero-padded per window after the qkv projection. True: padded
    # keys are masked out of the softmax; False: they take part as zero keys and values.
    # Identical either way when every map is divisible by G (inputs that are multiples of 224).
    defaults.MODEL.HATNET.MASK_PADDED_KEYS = True
    # True: the global keys pool r x r windows in ceil mode, a partial border window averaging
    # its valid pixels; False: the official floor mode, which drops border rows/columns.
    defaults.MODEL.HATNET.POOL_CEIL_MODE = True
    # Run the attention in float32 also under autocast (softmax over ~1k keys at detection sizes).
    defaults.MODEL.HATNET.ATTENTION_FP32 = False

    # ---- HILA, hierarchical inter-level attention (hila_d2.modeling.hila), for MiT, Swin and
    # HAT-Net
    defaults.MODEL.HILA = CN()
    # Upper stage (2..4) of each inter-level pair: [3] is the paper's S3 (stages 2 and 3),
    # [2, 3, 4] its S234. [] switches HILA off: the encoder is then exactly the plain encoder.
    defaults.MODEL.HILA.STAGES = []
    # Entry t-1 is the stride s of the pair whose upper stage is t: Bottom-Up runs before upper
    # blocks j with j % s == 0, Top-Down after blocks j < N-1 with (j-1) % s == 0, so a stage of
    # N blocks gets ceil(N/s) Bottom-Up and about (N-1)/s Top-Down iterations.
    defaults.MODEL.HILA.STRIDES = [1, 1, 1, 1]
    # Hidden ratio of the Mix-FFNs inside the HILA blocks (MiT configs 4, Swin 2).
    defaults.MODEL.HILA.MLP_RATIO = 4.0
    # MLP ratio of the extra lower-level self-attention block (4 for MiT; Swin: 2 as built by the
    # official config, 4 when it is initialised from the lower stage's last block).
    defaults.MODEL.HILA.BOTTOM_MLP_RATIO = 4.0
    # Heads of the inter-level attention (1 in every paper config).
    defaults.MODEL.HILA.NUM_HEADS = 1
    # (w0, w1) of the HILA FFN step x <- w0 * x + w1 * FFN(x); the paper configs use (0.5, 0.5).
    defaults.MODEL.HILA.INFO_WEIGHTS = (0.5, 0.5)
    # True: the official semantics, for converted checkpoints (Bottom-Up scale from the upper
    # width, zero padding children attended to, Swin's repeated lower norm). False: the clean
    # variant (padding masked, scale from the attention width, lower norm applied once).
    defaults.MODEL.HILA.PARITY_MODE = True
    # "No HILA pretraining": when MODEL.WEIGHTS lacks a pair's extra lower-level block, copy it
    # from the last block of the lower stage after loading (in place, so the optimiser trains it).
    defaults.MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE = False
    # Training memory of the HILA steps. False: each step keeps the results of its matmuls and
    # attention kernels and recomputes the cheap rest in the backward pass (memory follows the
    # FLOPs). True: full activation checkpointing, it keeps only its inputs and recomputes all
    # (less memory again, about one more forward of the HILA steps per training step).
    defaults.MODEL.HILA.CHECKPOINT = False

    # ---- SegFormer All-MLP decode head: MODEL.SEM_SEG_HEAD.NAME "SegFormerHead"
    # (reuses detectron2's IN_FEATURES, NUM_CLASSES, IGNORE_VALUE, NORM, LOSS_WEIGHT)
    # Width of the per-level linear embeddings and of the fuse layer (256 for B0/B1, 768 for B2-B5).
    defaults.MODEL.SEM_SEG_HEAD.EMBED_DIM = 256
    # Dropout before the classifier (SegFormer: 0.1).
    defaults.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1

    # ---- UperNet decode head: MODEL.SEM_SEG_HEAD.NAME "UPerNetHead" (also uses DROPOUT, NORM)
    defaults.MODEL.SEM_SEG_HEAD.UPERNET = CN()
    # Width of the PPM, lateral, FPN and fuse convolutions (mmseg: 512).
    defaults.MODEL.SEM_SEG_HEAD.UPERNET.CHANNELS = 512
    # Output sizes of the pyramid pooling module on the coarsest level.
    defaults.MODEL.SEM_SEG_HEAD.UPERNET.POOL_SCALES = (1, 2, 3, 6)
    # Auxiliary FCN head (training only): one 3x3 conv + norm + ReLU, dropout, 1x1 classifier.
    defaults.MODEL.SEM_SEG_HEAD.AUX = CN()
    # Its loss weight; 0 builds no auxiliary head (Swin/HILA recipe: 0.4).
    defaults.MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT = 0.0
    # The feature it reads (Swin/HILA recipe: stage 3, "res4").
    defaults.MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE = "res4"
    # Width of its conv (mmseg: 256).
    defaults.MODEL.SEM_SEG_HEAD.AUX.CHANNELS = 256

    # ---- Sliding-window inference: META_ARCHITECTURE "SlidingWindowSemanticSegmentor"
    defaults.TEST.SLIDING_WINDOW = CN()
    # Window (height, width) in pixels of the resized test image (SegFormer Cityscapes: 1024).
    defaults.TEST.SLIDING_WINDOW.CROP_SIZE = (1024, 1024)
    # Step (height, width) between windows (SegFormer Cityscapes: 768); overlaps are averaged.
    defaults.TEST.SLIDING_WINDOW.STRIDE = (768, 768)
    # Windows run through the network together (memory vs. speed).
    defaults.TEST.SLIDING_WINDOW.WINDOWS_PER_BATCH = 1

    # ---- HMSA, hierarchical multi-scale attention (Tao et al., 2020):
    # META_ARCHITECTURE "HierarchicalMultiScaleSegmentor" around any backbone + semantic head
    defaults.MODEL.HMSA = CN()
    # Training scales: exactly two, one of them 1.0 (the crop as given, where the loss is taken);
    # the lower one's attention weighs its logits against the 1.0 logits (paper: (0.5, 1.0)).
    defaults.MODEL.HMSA.TRAIN_SCALES = (0.5, 1.0)
    # Inference scales, chained hierarchically from the highest down; any number, must contain
    # 1.0 (the output resolution). (1.0,) is the plain single-scale model. Cityscapes:
    # (0.5, 1.0, 2.0); Mapillary: (0.25, 0.5, 1.0, 2.0).
    defaults.MODEL.HMSA.TEST_SCALES = (0.5, 1.0, 2.0)
    # Also run the horizontally flipped images and average the fused logits.
    defaults.MODEL.HMSA.TEST_FLIP = False
    # Attention head: width and number of its 3x3 conv + norm (MODEL.SEM_SEG_HEAD.NORM) + ReLU
    # layers, dropout before its 1x1 conv (official: 256, 2, 0.0; 0.5 when dropout is on).
    defaults.MODEL.HMSA.ATTN_CHANNELS = 256
    defaults.MODEL.HMSA.ATTN_NUM_CONVS = 2
    defaults.MODEL.HMSA.ATTN_DROPOUT = 0.0
    # "": the attention reads the head's penultimate features (SegFormerHead, UPerNetHead and
    # detectron2's SemSegFPNHead provide them); else the backbone feature of this name, needed
    # for heads that provide only logits.
    defaults.MODEL.HMSA.ATTN_IN_FEATURE = ""
    # Weight of the cross-entropy of each training scale's own (unfused) logits, the official
    # "supervised multi-scale loss" (Cityscapes recipes: 0.05); 0 adds no such loss.
    defaults.MODEL.HMSA.SCALE_LOSS_WEIGHT = 0.0

    # ---- Boundary F-score (hila_d2.evaluation.BoundaryFScoreEvaluator), next to SemSegEvaluator
    defaults.TEST.BOUNDARY_FSCORE = CN()
    # Also evaluate the per-class boundary F-score of semantic predictions.
    defaults.TEST.BOUNDARY_FSCORE.ENABLED = False
    # Match tolerance in pixels; 0 = ceil(0.00088 * image diagonal) (3 px at 1024x2048), the
    # HILA paper's Cityscapes rule; ADE20K uses a fixed 3.
    defaults.TEST.BOUNDARY_FSCORE.TOLERANCE = 0

    # ---- Training mapper (hila_d2.data.mappers)
    # "" (default): detectron2's DatasetMapper, as stock detectron2 configs expect;
    # "segformer_semantic": the SegFormer semantic recipe configured below (Base-SegFormer.yaml);
    # "detr_crop": detectron2's DatasetMapper whose resize is, with probability
    # INPUT.DETR_CROP.PROB, preceded by a resize to INPUT.DETR_CROP.MIN_SIZES and a random crop
    # INPUT.CROP.{TYPE,SIZE} (the multi-scale + crop recipe of Swin's 3x detection configs).
    defaults.INPUT.DATASET_MAPPER_NAME = ""
    defaults.INPUT.DETR_CROP = CN()
    defaults.INPUT.DETR_CROP.PROB = 0.5
    # Shorter sides (one chosen at random) of the resize before the crop.
    defaults.INPUT.DETR_CROP.MIN_SIZES = (400, 500, 600)
    # "segformer_semantic": base (long side, short side) that a random ratio scales,
    # e.g. ADE20K (2048, 512).
    defaults.INPUT.RESIZE_BASE_SIZE = (2048, 512)
    # The ratio is drawn uniformly from this range; the image is resized to fit the scaled base.
    defaults.INPUT.RESIZE_RATIO_RANGE = (0.5, 2.0)
    # mmseg-style photometric distortion (brightness, contrast, saturation, hue) on training images.
    defaults.INPUT.PHOTOMETRIC_DISTORTION = True
    # Crops are detectron2's INPUT.CROP.{ENABLED,TYPE,SIZE}, retried (up to 10 times) while one
    # category covers more than this fraction of the crop (SegFormer: 0.75; 1.0 = no constraint).
    defaults.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0

    # ---- Loading MODEL.WEIGHTS (hila_d2.checkpoint.loading.ValidatingCheckpointer)
    # A key of the model that the checkpoint lacks, a checkpoint key the model lacks and a tensor
    # of another shape are errors, except, when a training run starts from MODEL.WEIGHTS, for
    # model keys matching these patterns (fnmatch, * = anything): modules that initialisation
    # weights lack or shape differently, which keep their initialisation. The defaults: decode
    # and detection heads (new, or for another class count), HMSA's scale attention, FPN layers,
    # HILA pairs over plain-encoder weights and the stage norms ImageNet Swin files lack.
    # --resume and --eval-only ignore them: every key must match.
    defaults.MODEL.WEIGHTS_OPTIONAL_KEYS = [
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

    # ---- Optimiser and schedule (hila_d2.solver)
    # The defaults are detectron2's (SGD, one LR), so stock detectron2 configs train as they do
    # with detectron2's own trainer; the project's Base-*.yaml set their recipes.
    # "SGD" (SOLVER.MOMENTUM, SOLVER.NESTEROV) or "ADAMW" (SOLVER.BETAS).
    defaults.SOLVER.OPTIMIZER = "SGD"
    # AdamW betas.
    defaults.SOLVER.BETAS = (0.9, 0.999)
    # LR multiplier of every parameter outside the backbone (SegFormer recipe: 10.0).
    defaults.SOLVER.HEAD_LR_MULTIPLIER = 1.0
    # For SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR": lr = base * (1 - iter / MAX_ITER) ** POWER.
    defaults.SOLVER.POLY_LR_POWER = 1.0
    return defaults
