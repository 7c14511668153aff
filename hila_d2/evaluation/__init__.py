"""Evaluation of hila_d2 models: the per-class boundary F-score of semantic segmentation."""

from .boundary_fscore import (
    BoundaryFScoreEvaluator,
    boundary_fscore_per_class,
    boundary_tolerance,
    mask_boundary,
    mask_boundary_fscore,
    summarize_boundary_fscore,
)

__all__ = [
    "BoundaryFScoreEvaluator",
    "boundary_fscore_per_class",
    "boundary_tolerance",
    "mask_boundary",
    "mask_boundary_fscore",
    "summarize_boundary_fscore",
]
