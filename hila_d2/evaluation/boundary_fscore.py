"""Per-class boundary F-score of semantic segmentation (the HILA paper's metric, DAVIS style).

For one image and one class ``c``:

* Masks: ``G_c = (gt == c)`` and ``P_c = (pred == c)``, both restricted to the valid pixels
  ``gt != ignore_label``: at ignored pixels the class is absent from both masks, whatever
  the prediction says there.
* Boundary of a binary mask: the mask pixels with at least one 8-neighbour (3x3 square)
  outside the mask, i.e. ``mask AND NOT erode(mask, 3x3)``. Pixels beyond the image frame
  count as inside the mask, so the image border creates no boundary (a mask covering the
  whole image has none).
* Tolerance ``d`` px: ``tolerance`` if it is > 0, else ``ceil(0.00088 * sqrt(H^2 + W^2))``
  (3 px at 1024x2048, 1 px at 512x512).
* A boundary pixel is matched when a pixel of the other boundary lies within Euclidean
  distance ``d`` (dilation by the disk ``x^2 + y^2 <= d^2``, as skimage's ``disk(d)``).
  Precision ``P = |B_pred matched| / |B_pred|``, recall ``R = |B_gt matched| / |B_gt|``,
  ``F = 2PR / (P + R)`` (0 if ``P + R == 0``).
* Defined-ness: if both boundaries are empty the class is undefined for the image (NaN, not
  counted); if exactly one is empty, ``F = 0``.

Over a dataset, a class's score is the mean of its F over the images where it is defined,
and ``mBF`` is the mean over the classes defined in at least one image, both in percent.
"""

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = [
    "BoundaryFScoreEvaluator",
    "boundary_fscore_per_class",
    "boundary_tolerance",
    "mask_boundary",
    "mask_boundary_fscore",
    "summarize_boundary_fscore",
]

# Tolerance as a fraction of the image diagonal when none is given (HILA, Cityscapes).
TOLERANCE_DIAGONAL_RATIO = 0.00088

_SQUARE_3X3 = np.ones((3, 3), np.uint8)


def boundary_tolerance(height: int, width: int, tolerance: int = 0) -> int:
    """Match tolerance in pixels: ``tolerance`` if > 0, else
    ``ceil(0.00088 * sqrt(height^2 + width^2))``."""
    if tolerance < 0:
        raise ValueError(f"Boundary F-score tolerance must be >= 0 pixels, got {tolerance}.")
    if tolerance > 0:
        return int(tolerance)
    return math.ceil(TOLERANCE_DIAGONAL_RATIO * math.hypot(height, width))


def _disk(radius: int) -> np.ndarray:
    """uint8 (2r+1, 2r+1) kernel of the pixels at Euclidean distance <= ``radius`` from its
    centre (OpenCV's MORPH_ELLIPSE is not this disk, e.g. for radius 3)."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary of a (H, W) binary mask as a bool (H, W) array: the mask pixels with an
    8-neighbour outside the mask; the image border creates no boundary."""
    if mask.ndim != 2:
        raise ValueError(f"mask_boundary expects a (H, W) mask, got shape {mask.shape}.")
    mask = mask.astype(np.uint8)
    # cv2.erode's default border value is the maximum: pixels beyond the frame count as mask
    return mask.astype(bool) & ~cv2.erode(mask, _SQUARE_3X3).astype(bool)


def _fscore_of_boundaries(pred_boundary: np.ndarray, gt_boundary: np.ndarray, radius: int) -> float:
    """F-score of two bool (H, W) boundaries matched within ``radius`` px; NaN if both are
    empty, 0 if exactly one is."""
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_pred == 0 and n_gt == 0:
        return math.nan
    if n_pred == 0 or n_gt == 0:
        return 0.0
    disk = _disk(radius)
    gt_zone = cv2.dilate(gt_boundary.astype(np.uint8), disk).astype(bool)
    pred_zone = cv2.dilate(pred_boundary.astype(np.uint8), disk).astype(bool)
    precision = np.count_nonzero(pred_boundary & gt_zone) / n_pred
    recall = np.count_nonzero(gt_boundary & pred_zone) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _check_shapes(pred: np.ndarray, gt: np.ndarray):
    if pred.shape != gt.shape:
        raise ValueError(
            f"Prediction shape {tuple(pred.shape)} differs from ground-truth shape "
            f"{tuple(gt.shape)}; predictions must be at the ground truth's resolution."
        )
    if gt.ndim != 2:
        raise ValueError(f"Expected (H, W) maps, got shape {tuple(gt.shape)}.")


def mask_boundary_fscore(pred_mask: np.ndarray, gt_mask: np.ndarray, tolerance: int = 0) -> float:
    """Boundary F-score in [0, 1] of two binary (H, W) masks (NaN when neither has a
    boundary); ``tolerance`` as in :func:`boundary_tolerance`."""
    _check_shapes(pred_mask, gt_mask)
    radius = boundary_tolerance(*gt_mask.shape, tolerance)
    return _fscore_of_boundaries(mask_boundary(pred_mask), mask_boundary(gt_mask), radius)


def boundary_fscore_per_class(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    tolerance: int = 0,
    ignore_label: Optional[int] = 255,
) -> np.ndarray:
    """Boundary F-score in [0, 1] of each class of one image.

    Args:
        pred, gt: (H, W) integer label maps (contiguous ids ``0..num_classes-1``).
        tolerance: match tolerance in px, 0 for the diagonal rule of :func:`boundary_tolerance`.
        ignore_label: ground-truth value of the pixels left out of both masks (None: none).

    Returns:
        (num_classes,) float64, NaN for the classes undefined in this image.
    """
    _check_shapes(pred, gt)
    radius = boundary_tolerance(*gt.shape, tolerance)
    valid = np.ones(gt.shape, bool) if ignore_label is None else gt != ignore_label
    scores = np.full(num_classes, np.nan)
    for c in range(num_classes):
        gt_mask = (gt == c) & valid
        pred_mask = (pred == c) & valid
        if gt_mask.any() or pred_mask.any():
            scores[c] = _fscore_of_boundaries(
                mask_boundary(pred_mask), mask_boundary(gt_mask), radius
            )
    return scores


def summarize_boundary_fscore(
    fscore_sum: np.ndarray, count: np.ndarray, class_names: Sequence[str]
) -> Dict[str, float]:
    """Percent scores from per-class (C,) sums of F and (C,) counts of images where the class
    is defined: ``{"mBF": ..., "BF-<name>": ...}``; NaN for classes never defined (and for
    ``mBF`` when no class is)."""
    if not len(fscore_sum) == len(count) == len(class_names):
        raise ValueError(
            f"Got {len(fscore_sum)} sums, {len(count)} counts and {len(class_names)} class names."
        )
    defined = count > 0
    per_class = np.full(len(count), np.nan)
    per_class[defined] = 100 * fscore_sum[defined] / count[defined]
    res = {"mBF": float(per_class[defined].mean()) if defined.any() else math.nan}
    for name, score in zip(class_names, per_class):
        res[f"BF-{name}"] = float(score)
    return res


class BoundaryFScoreEvaluator(DatasetEvaluator):
    """Per-class boundary F-score of semantic predictions (see the module docstring).

    Reads ground truth like detectron2's ``SemSegEvaluator``: the dataset record's
    ``sem_seg_file_name`` (found by ``file_name``), holding contiguous ids; predictions are
    ``output["sem_seg"].argmax(dim=0)`` at the ground truth's resolution. Keeps only per-class
    sums and counts. ``evaluate()`` returns ``{"boundary_fscore": {"mBF", "BF-<name>"...}}``
    on the main process (None elsewhere) and writes ``boundary_fscore.json`` (NaN as null)
    to ``output_dir`` if given.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        tolerance: int = 0,
        ignore_label: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: registered dataset with ``sem_seg_file_name`` records and
                ``stuff_classes`` metadata.
            distributed: gather the sums of all processes in ``evaluate()``.
            output_dir: where to write ``boundary_fscore.json``.
            tolerance: match tolerance in px, 0 for ``ceil(0.00088 * diagonal)`` per image.
            ignore_label: defaults to the metadata's ``ignore_label``, else 255.
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        if tolerance < 0:
            raise ValueError(f"Boundary F-score tolerance must be >= 0 pixels, got {tolerance}.")
        self._tolerance = tolerance
        self._input_file_to_gt_file = {
            record["file_name"]: record["sem_seg_file_name"]
            for record in DatasetCatalog.get(dataset_name)
        }
        meta = MetadataCatalog.get(dataset_name)
        self._class_names = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = (
            ignore_label if ignore_label is not None else meta.get("ignore_label", 255)
        )

    def reset(self):
        self._fscore_sum = np.zeros(self._num_classes, np.float64)
        self._count = np.zeros(self._num_classes, np.int64)

    def process(self, inputs, outputs):
        """
        Args:
            inputs: list of dicts with ``file_name``.
            outputs: list of dicts with ``sem_seg``, a (C, H, W) tensor of class scores.
        """
        for input, output in zip(inputs, outputs):
            pred = output["sem_seg"].argmax(dim=0).cpu().numpy()
            gt_file = self._input_file_to_gt_file[input["file_name"]]
            gt = load_image_into_numpy_array(gt_file, dtype=np.int64)
            if pred.shape != gt.shape:
                raise ValueError(
                    f"Prediction for {input['file_name']} has shape {tuple(pred.shape)} but its "
                    f"ground truth {gt_file} has shape {tuple(gt.shape)}."
                )
            scores = boundary_fscore_per_class(
                pred, gt, self._num_classes, self._tolerance, self._ignore_label
            )
            defined = ~np.isnan(scores)
            self._fscore_sum[defined] += scores[defined]
            self._count += defined

    def evaluate(self):
        """``{"boundary_fscore": {"mBF": ..., "BF-<name>": ...}}`` in percent, on the main
        process; None on the others."""
        fscore_sum, count = self._fscore_sum, self._count
        if self._distributed:
            comm.synchronize()
            gathered = comm.all_gather((fscore_sum, count))
            if not comm.is_main_process():
                return None
            fscore_sum = sum(s for s, _ in gathered)
            count = sum(n for _, n in gathered)
        if not count.any():
            self._logger.warning(
                f"Boundary F-score of {self._dataset_name}: no class was defined in any image."
            )
        res = summarize_boundary_fscore(fscore_sum, count, self._class_names)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "boundary_fscore.json")
            with PathManager.open(path, "w") as f:
                json.dump({k: None if math.isnan(v) else v for k, v in res.items()}, f, indent=2)
        results = OrderedDict(boundary_fscore=res)
        self._logger.info(results)
        return results
