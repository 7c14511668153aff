"""Instance and panoptic segmentation end to end through train_net.py on the built-in dataset:
a short Panoptic FPN training lifts mask AP and PQ far above the untrained model's, and the
Mask R-CNN config trains and is scored by COCOEvaluator."""
import pytest
import json
from pathlib import Path

import torch
from test_train_builtin import run_train_net

from project_config import load_config, load_train_net

pytestmark = pytest.mark.slow  # every test here trains

PANOPTIC = "configs/builtin/panoptic-segmentation/panoptic_fpn_mit_b0.yaml"
INSTANCE = "configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml"
# Measured on 2 CPU cores with the config's 400 iterations (README): mask AP 11.6, PQ 14.1;
# the untrained model: mask AP 0.0, PQ 0.3. A 250-iteration run reaches only 4.8 and 5.4.
MIN_MASK_AP_GAIN = 6.0
MIN_PQ_GAIN = 7.0


def final_metrics(output_dir: Path) -> dict:
    """The evaluation results that train_net.py logged after the last iteration."""
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line) for line in lines if "segm/AP" in line][-1]


def untrained_results(tmp_path: Path) -> dict:
    """Mask AP and PQ of the randomly initialised Panoptic FPN (same seed as training)."""
    train_net = load_train_net()
    cfg = load_config(PANOPTIC, "OUTPUT_DIR", str(tmp_path / "untrained"))
    torch.manual_seed(cfg.SEED)
    model = train_net.Trainer.build_model(cfg)
    return train_net.Trainer.test(cfg, model)


def test_panoptic_fpn_training_lifts_mask_ap_and_pq(tmp_path):
    before = untrained_results(tmp_path)
    run_train_net("OUTPUT_DIR", str(tmp_path / "trained"), config=PANOPTIC)
    after = final_metrics(tmp_path / "trained")
    assert after["iteration"] == 400
    gains = {
        "mask AP": (after["segm/AP"], before["segm"]["AP"], MIN_MASK_AP_GAIN),
        "PQ": (after["panoptic_seg/PQ"], before["panoptic_seg"]["PQ"], MIN_PQ_GAIN),
    }
    for metric, (trained, untrained, margin) in gains.items():
        assert trained >= untrained + margin, f"{metric}: {untrained:.2f} -> {trained:.2f}"
    assert after["sem_seg/mIoU"] > 25.0  # 4 classes (things + 3 textures)


def test_mask_rcnn_config_trains_and_is_scored_by_coco_evaluator(tmp_path):
    run_train_net("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "10", config=INSTANCE)
    metrics = final_metrics(tmp_path)
    assert {"bbox/AP", "segm/AP", "segm/AP50"} <= set(metrics)
    detections = json.loads((tmp_path / "inference" / "coco_instances_results.json").read_text())
    assert detections and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(
        detections[0]
    )
    assert {d["category_id"] for d in detections} <= {1, 2, 3, 4}  # the dataset's COCO ids
