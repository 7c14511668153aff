"""Boundary F-score: the fast (OpenCV) metric against a slow pure-Python reference, hand-made
cases, and BoundaryFScoreEvaluator end to end on a tiny registered dataset."""

import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hila_d2.evaluation import (
    BoundaryFScoreEvaluator,
    boundary_fscore_per_class,
    boundary_tolerance,
    mask_boundary,
    mask_boundary_fscore,
    summarize_boundary_fscore,
)

IGNORE = 255


# ---- slow, independent reference --------------------------------------------------------------


def ref_boundary(mask):
    """Mask pixels with an in-image 8-neighbour outside the mask, by explicit checks."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and not mask[yy, xx]:
                        out[y, x] = True
    return out


def ref_matched(boundary, other, d):
    """Number of ``boundary`` pixels within Euclidean distance ``d`` of an ``other`` pixel."""
    other_points = np.argwhere(other)
    matched = 0
    for point in np.argwhere(boundary):
        if ((other_points - point) ** 2).sum(axis=1).min() <= d * d:
            matched += 1
    return matched


def ref_fscore(pred_mask, gt_mask, d):
    bp, bg = ref_boundary(pred_mask), ref_boundary(gt_mask)
    n_pred, n_gt = int(bp.sum()), int(bg.sum())
    if n_pred == 0 and n_gt == 0:
        return math.nan
    if n_pred == 0 or n_gt == 0:
        return 0.0
    precision = ref_matched(bp, bg, d) / n_pred
    recall = ref_matched(bg, bp, d) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def ref_per_class(pred, gt, num_classes, d, ignore_label=IGNORE):
    valid = gt != ignore_label
    return np.array(
        [ref_fscore((pred == c) & valid, (gt == c) & valid, d) for c in range(num_classes)]
    )


# ---- random label maps ------------------------------------------------------------------------


def random_label_map(rng, h, w, num_classes, num_seeds=10):
    """(h, w) int64 Voronoi map of random seeds with random classes."""
    ys, xs = rng.integers(0, h, num_seeds), rng.integers(0, w, num_seeds)
    labels = rng.integers(0, num_classes, num_seeds)
    yy, xx = np.mgrid[:h, :w]
    nearest = np.argmin((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2, axis=-1)
    return labels[nearest]


def random_pair(rng, h, w, num_classes):
    """(pred, gt): gt with an ignored rectangle; pred = gt shifted, with random rectangles and
    isolated pixels of random classes, random under the ignored rectangle."""
    gt = random_label_map(rng, h, w, num_classes)
    pred = np.roll(gt, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    for _ in range(3):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        pred[y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = rng.integers(num_classes)
    dots = rng.random((h, w)) < 0.01
    pred[dots] = rng.integers(0, num_classes, dots.sum())
    y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
    gt[y : y + 8, x : x + 12] = IGNORE
    pred[y : y + 8, x : x + 12] = rng.integers(0, num_classes, (8, min(12, w - x)))
    return pred, gt


# ---- functional API ---------------------------------------------------------------------------


@pytest.mark.parametrize("tolerance, d", [(0, 1), (2, 2), (3, 3)])
def test_matches_the_slow_reference_on_random_maps(tolerance, d):
    rng = np.random.default_rng(tolerance)
    num_classes = 5
    fast_sum, fast_count = np.zeros(num_classes), np.zeros(num_classes, np.int64)
    ref_sum, ref_count = np.zeros(num_classes), np.zeros(num_classes, np.int64)
    for _ in range(4):
        pred, gt = random_pair(rng, 36, 52, num_classes)  # diagonal 63 px: tolerance 0 -> 1 px
        fast = boundary_fscore_per_class(pred, gt, num_classes, tolerance, IGNORE)
        ref = ref_per_class(pred, gt, num_classes, d)
        np.testing.assert_array_equal(fast, ref)
        fast_sum += np.nan_to_num(fast)
        fast_count += ~np.isnan(fast)
        ref_sum += np.nan_to_num(ref)
        ref_count += ~np.isnan(ref)
    np.testing.assert_array_equal(fast_sum, ref_sum)
    np.testing.assert_array_equal(fast_count, ref_count)
    assert 0 < fast_sum.sum() < fast_count.sum()  # neither trivially perfect nor all zero


def test_boundary_matches_the_reference_and_ignores_the_image_border():
    rng = np.random.default_rng(0)
    mask = random_label_map(rng, 30, 40, 2) == 1
    np.testing.assert_array_equal(mask_boundary(mask), ref_boundary(mask))
    left_half = np.zeros((10, 12), bool)
    left_half[:, :6] = True
    expected = np.zeros_like(left_half)
    expected[:, 5] = True  # only the edge facing the right half
    np.testing.assert_array_equal(mask_boundary(left_half), expected)
    assert not mask_boundary(np.ones((5, 7), bool)).any()


def test_tolerance_rule():
    assert boundary_tolerance(1024, 2048) == 3
    assert boundary_tolerance(512, 512) == 1
    assert boundary_tolerance(1024, 2048, tolerance=5) == 5
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        boundary_tolerance(10, 10, tolerance=-1)


def test_identical_maps_score_one_and_absent_classes_are_undefined():
    rng = np.random.default_rng(1)
    gt = random_label_map(rng, 32, 32, 4)  # classes 0..3 only
    scores = boundary_fscore_per_class(gt.copy(), gt, num_classes=6)
    present = np.isin(np.arange(6), np.unique(gt))
    np.testing.assert_array_equal(scores[present], 1.0)
    assert np.isnan(scores[~present]).all()


def test_square_shifted_within_tolerance_is_perfect():
    d = 2
    gt = np.zeros((40, 40), bool)
    gt[10:20, 10:20] = True
    for shift in ((0, d), (d, 0), (0, -d)):
        assert mask_boundary_fscore(np.roll(gt, shift, axis=(0, 1)), gt, tolerance=d) == 1.0


def test_thin_bar_shifted_beyond_tolerance():
    d = 2
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:13] = True  # 20 x 3 bar: boundary = 2 columns of 20 + 2 middle end pixels
    pred = np.roll(gt, d + 2, axis=1)
    # only pred's left column lies within d of gt's right column (and vice versa): 20 of 42
    score = mask_boundary_fscore(pred, gt, tolerance=d)
    assert score == pytest.approx(20 / 42)
    assert score == ref_fscore(pred, gt, d)


def test_one_empty_boundary_scores_zero():
    gt = np.zeros((20, 20), np.int64)
    gt[5:10, 5:10] = 1
    pred = np.zeros_like(gt)  # class 1 missed; class 0 covers the image, so has no boundary
    scores = boundary_fscore_per_class(pred, gt, num_classes=3)
    np.testing.assert_array_equal(scores[:2], [0.0, 0.0])
    assert np.isnan(scores[2])


def test_ignored_pixels_count_for_no_class():
    gt = np.zeros((20, 24), np.int64)
    gt[:, 12:] = 1
    gt[4:10, 4:10] = IGNORE
    pred = gt.copy()
    pred[4:10, 4:10] = 2  # class 2 is predicted only where the ground truth is ignored
    scores = boundary_fscore_per_class(pred, gt, num_classes=3, ignore_label=IGNORE)
    np.testing.assert_array_equal(scores[:2], [1.0, 1.0])
    assert np.isnan(scores[2])
    # without an ignore label the same prediction is wrong for class 2 (gt has no class 2)
    assert boundary_fscore_per_class(pred, gt, num_classes=3, ignore_label=None)[2] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs from ground-truth shape"):
        boundary_fscore_per_class(np.zeros((4, 5), int), np.zeros((5, 4), int), num_classes=2)


def test_summary_in_percent_over_defined_classes():
    res = summarize_boundary_fscore(np.array([1.5, 0.0, 0.0]), np.array([2, 1, 0]), list("abc"))
    assert res["BF-a"] == 75.0 and res["BF-b"] == 0.0 and math.isnan(res["BF-c"])
    assert res["mBF"] == 37.5


# ---- evaluator --------------------------------------------------------------------------------

CLASSES = ["road", "car", "sky", "tree", "never"]  # "never" appears in no map


@pytest.fixture
def tiny_dataset(tmp_path):
    """A dataset of 3 ground-truth PNGs (and matching predictions) in the catalogs."""
    rng = np.random.default_rng(7)
    name = "boundary_fscore_test_tiny"
    records, preds, gts = [], [], []
    for i in range(3):
        pred, gt = random_pair(rng, 30 + 2 * i, 44, len(CLASSES) - 1)
        gt_file = tmp_path / f"gt_{i}.png"
        Image.fromarray(gt.astype(np.uint8)).save(gt_file)
        records.append(
            {
                "file_name": str(tmp_path / f"image_{i}.png"),
                "sem_seg_file_name": str(gt_file),
                "height": gt.shape[0],
                "width": gt.shape[1],
            }
        )
        preds.append(pred)
        gts.append(gt)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=IGNORE)
    yield name, records, preds, gts
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def scores_output(pred, num_classes):
    """{"sem_seg": (C, H, W) scores} whose argmax is ``pred``."""
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(pred), num_classes).permute(2, 0, 1)
    return {"sem_seg": one_hot.float() + 0.5 * torch.rand(one_hot.shape)}


def test_evaluator_matches_the_functional_api(tiny_dataset, tmp_path):
    name, records, preds, gts = tiny_dataset
    evaluator = BoundaryFScoreEvaluator(name, output_dir=str(tmp_path / "out"), tolerance=2)
    evaluator.reset()
    evaluator.process(records[:2], [scores_output(p, len(CLASSES)) for p in preds[:2]])
    evaluator.process(records[2:], [scores_output(preds[2], len(CLASSES))])
    results = evaluator.evaluate()

    per_image = np.stack(
        [boundary_fscore_per_class(p, g, len(CLASSES), 2, IGNORE) for p, g in zip(preds, gts)]
    )
    expected = summarize_boundary_fscore(
        np.nansum(per_image, axis=0), (~np.isnan(per_image)).sum(axis=0), CLASSES
    )
    res = results["boundary_fscore"]
    assert list(res) == ["mBF"] + [f"BF-{c}" for c in CLASSES]
    assert res == pytest.approx(expected, nan_ok=True)
    assert math.isnan(res["BF-never"])
    assert res["mBF"] == pytest.approx(np.mean([res[f"BF-{c}"] for c in CLASSES[:-1]]))
    assert 0 < res["mBF"] < 100

    with open(tmp_path / "out" / "boundary_fscore.json") as f:
        saved = json.load(f)
    assert saved["BF-never"] is None
    assert saved["mBF"] == pytest.approx(res["mBF"])


def test_evaluator_rejects_predictions_of_another_size(tiny_dataset):
    name, records, preds, _ = tiny_dataset
    evaluator = BoundaryFScoreEvaluator(name, distributed=False)
    evaluator.reset()
    with pytest.raises(ValueError, match="has shape"):
        evaluator.process(records[:1], [scores_output(preds[0][:, :-1], len(CLASSES))])


def test_train_net_adds_the_evaluator_when_enabled(tiny_dataset, tmp_path):
    """TEST.BOUNDARY_FSCORE.ENABLED puts BoundaryFScoreEvaluator next to SemSegEvaluator."""
    from detectron2.evaluation import DatasetEvaluators, SemSegEvaluator
    from project_config import load_config, load_train_net

    name = tiny_dataset[0]
    MetadataCatalog.get(name).set(evaluator_type="sem_seg")
    train_net = load_train_net()
    config = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
    plain = train_net.Trainer.build_evaluator(load_config(config), name, str(tmp_path))
    assert isinstance(plain, SemSegEvaluator)
    cfg = load_config(config, "TEST.BOUNDARY_FSCORE.ENABLED", "True",
                      "TEST.BOUNDARY_FSCORE.TOLERANCE", "2")
    both = train_net.Trainer.build_evaluator(cfg, name, str(tmp_path))
    assert isinstance(both, DatasetEvaluators)
    kinds = [type(e) for e in both._evaluators]
    assert kinds == [SemSegEvaluator, BoundaryFScoreEvaluator]
    assert both._evaluators[1]._tolerance == 2
