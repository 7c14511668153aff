"""Evaluation of hila_d2 models: the per-class boundary F-score of semantic segmentation."""

from .boundary_fscore import *  # noqa: F401,F403  (the names listed in its __all__)
from .boundary_fscore import __all__  # noqa: F401
