"""HMSA end to end through train_net.py on the built-in dataset: a short two-scale training run,
scored by SemSegEvaluator at the config's test scales (0.5, 1.0, 2.0), clearly beats the same
model untrained."""

import pytest

pytestmark = pytest.mark.slow  # every test here trains

CONFIG = "configs/builtin/semantic-segmentation/hmsa_segformer_mit_b0.yaml"
# 60 iterations (batch 8) at native scale with a higher LR than the config's 1000-iteration
# recipe, to learn fast. Measured on 2 CPU cores (1 thread): 2.6 mIoU untrained,
# 9.0 after this run (training is deterministic here), 62 s for both runs.
SHORT_RUN = ["SOLVER.MAX_ITER", "60", "SOLVER.BASE_LR", "0.002", "SOLVER.WARMUP_ITERS", "10",
             "INPUT.RESIZE_RATIO_RANGE", "(1.0, 1.0)"]  # fmt: skip
MIN_GAIN = 3.0  # about half the measured gain


def test_short_training_beats_the_untrained_model(train_net):
    before = train_net(CONFIG, flags=["--eval-only"]).final_metrics["sem_seg/mIoU"]
    trained = train_net(CONFIG, *SHORT_RUN)
    after = trained.final_metrics["sem_seg/mIoU"]
    assert after >= before + MIN_GAIN, f"mIoU {before:.2f} untrained, {after:.2f} trained"
    trained.assert_loss_fell()
