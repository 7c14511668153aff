"""hila_d2: hierarchical attention encoders, heads and meta-architectures for detectron2.

``import hila_d2`` registers every backbone, head, meta-architecture and built-in dataset with
detectron2's registries; ``hila_d2.add_hila_config(cfg)`` adds the project's config keys.
"""
from . import data  # noqa: F401  (registers datasets)
from . import evaluation  # noqa: F401  (BoundaryFScoreEvaluator)
from . import modeling  # noqa: F401  (registers backbones, heads, meta-architectures)
from .config import add_hila_config

__all__ = ["add_hila_config"]
__version__ = "0.1.0"
