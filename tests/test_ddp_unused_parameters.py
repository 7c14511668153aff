"""HILA S234 under DistributedDataParallel with detectron2's default
``find_unused_parameters=False``: two CPU processes (gloo) through train_net.py.

Before the encoders built only what produces their requested outputs, the pair of stages 3-4
normalised the stage-3 tokens for a res4 output that a res2/res3/res5 head never reads; its
``bottom_norm`` got no gradient and DDP stopped at the second iteration ("Expected to have
finished reduction in the prior iteration").
"""
from pathlib import Path

import pytest
import torch
from test_train_builtin import run_train_net

SEMANTIC = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
PANOPTIC = "configs/builtin/panoptic-segmentation/hila_panoptic_fpn_mit_b0_s3.yaml"
SHORT = ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.TEST", "()", "MODEL.HILA.STAGES", "[2, 3, 4]"]  # fmt: skip
RES235 = "['res2', 'res3', 'res5']"


def two_process_run(config: str, output_dir: Path, *opts: str) -> str:
    """Train 3 iterations on 2 CPU ranks (on a free port: ``--dist-url auto``); return rank 0's
    log."""
    run_train_net(
        "--num-gpus", "2", "--dist-url", "auto", *SHORT, *opts, "OUTPUT_DIR", str(output_dir),
        config=config,
    )  # fmt: skip
    log = (output_dir / "log.txt").read_text()
    assert "World size: 2" in (output_dir / "log.txt.rank1").read_text()
    assert torch.load(output_dir / "model_final.pth", weights_only=True)["iteration"] == 2
    return log


@pytest.mark.slow
def test_s234_under_a_res2_res3_res5_head(tmp_path):
    log = two_process_run(
        SEMANTIC, tmp_path,
        "MODEL.MIT.OUT_FEATURES", RES235, "MODEL.SEM_SEG_HEAD.IN_FEATURES", RES235,
    )  # fmt: skip
    assert "iter: 2" in log or "Overall training speed" in log


@pytest.mark.slow
def test_s234_under_panoptic_fpn(tmp_path):
    log = two_process_run(PANOPTIC, tmp_path)
    assert "Overall training speed" in log
