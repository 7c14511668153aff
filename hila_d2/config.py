"""The project's config keys: ``add_hila_config(cfg)`` adds them to a detectron2 ``CfgNode``."""
from detectron2.config import CfgNode as CN

__all__ = ["add_hila_config"]


def add_hila_config(cfg: CN) -> CN:
    """Add every hila_d2 key, with its default, to ``cfg`` (in place; also returned)."""
    # ---- MiT (SegFormer's Mix Transformer) encoder: MODEL.BACKBONE.NAME "build_mit_backbone"
    cfg.MODEL.MIT = CN()
    # Variant "B0".."B5": sets embed dims and depths (hila_d2.modeling.backbone.mit.MIT_VARIANTS).
    cfg.MODEL.MIT.VARIANT = "B0"
    # Stage outputs to return, a subset of res2..res5 (strides 4, 8, 16, 32).
    cfg.MODEL.MIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Stochastic depth rate of the last block, linear from 0 over all blocks (SegFormer: 0.1).
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.1

    # ---- SegFormer All-MLP decode head: MODEL.SEM_SEG_HEAD.NAME "SegFormerHead"
    # (reuses detectron2's IN_FEATURES, NUM_CLASSES, IGNORE_VALUE, NORM, LOSS_WEIGHT)
    # Width of the per-level linear embeddings and of the fuse layer (256 for B0/B1, 768 for B2-B5).
    cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = 256
    # Dropout before the classifier (SegFormer: 0.1).
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1

    # ---- Sliding-window inference: META_ARCHITECTURE "SlidingWindowSemanticSegmentor"
    cfg.TEST.SLIDING_WINDOW = CN()
    # Window (height, width) in pixels of the resized test image (SegFormer Cityscapes: 1024).
    cfg.TEST.SLIDING_WINDOW.CROP_SIZE = (1024, 1024)
    # Step (height, width) between windows (SegFormer Cityscapes: 768); overlaps are averaged.
    cfg.TEST.SLIDING_WINDOW.STRIDE = (768, 768)
    # Windows run through the network together (memory vs. speed).
    cfg.TEST.SLIDING_WINDOW.WINDOWS_PER_BATCH = 1

    # ---- Semantic-segmentation training augmentation (mapper "segformer_semantic")
    # "segformer_semantic": the SegFormer recipe below; "" uses detectron2's DatasetMapper defaults.
    cfg.INPUT.DATASET_MAPPER_NAME = "segformer_semantic"
    # Base (long side, short side) that a random ratio scales, e.g. ADE20K (2048, 512).
    cfg.INPUT.RESIZE_BASE_SIZE = (2048, 512)
    # The ratio is drawn uniformly from this range; the image is resized to fit the scaled base.
    cfg.INPUT.RESIZE_RATIO_RANGE = (0.5, 2.0)
    # mmseg-style photometric distortion (brightness, contrast, saturation, hue) on training images.
    cfg.INPUT.PHOTOMETRIC_DISTORTION = True
    # Crops are detectron2's INPUT.CROP.{ENABLED,TYPE,SIZE}, retried (up to 10 times) while one
    # category covers more than this fraction of the crop (SegFormer: 0.75; 1.0 = no constraint).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0

    # ---- Optimiser and schedule (hila_d2.solver)
    # "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # AdamW betas.
    cfg.SOLVER.BETAS = (0.9, 0.999)
    # LR multiplier of every parameter outside the backbone (SegFormer recipe: 10.0).
    cfg.SOLVER.HEAD_LR_MULTIPLIER = 10.0
    # For SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR": lr = base * (1 - iter / MAX_ITER) ** POWER.
    cfg.SOLVER.POLY_LR_POWER = 1.0
    return cfg
