"""hila_d2: hierarchical attention encoders, heads and meta-architectures for detectron2.

``import hila_d2`` registers every backbone, head, meta-architecture and built-in dataset with
detectron2's registries, and the ``hf://`` / ``timm://`` weight names with its ``PathManager``; ``hila_d2.add_hila_config(cfg)`` adds the project's config keys (each
concept's part is an ``add_*_config`` of ``hila_d2.config``; ``hila_d2.load_config`` merges a file
over them); ``hila_d2.validate_config(cfg)`` checks a merged config before anything is built or
loaded.
"""
from . import checkpoint  # noqa: F401  (registers hf:// and timm:// on detectron2's PathManager)
from . import data  # noqa: F401  (registers datasets)
from . import evaluation  # noqa: F401  (BoundaryFScoreEvaluator)
from . import modeling  # noqa: F401  (registers backbones, heads, meta-architectures)
from .config import add_hila_config, load_config
from .validation import validate_config

__all__ = ["add_hila_config", "load_config", "validate_config"]
__version__ = "0.1.0"
