"""train_net.py on two CPU processes (DistributedDataParallel over gloo, through detectron2's
launch): both ranks train and rank 0 evaluates; HILA S234 trains under detectron2's default
``find_unused_parameters=False``.

Before the encoders built only what produces their requested outputs, the pair of stages 3-4
normalised the stage-3 tokens for a res4 output that a res2/res3/res5 head never reads; its
``bottom_norm`` got no gradient and DDP stopped at the second iteration ("Expected to have
finished reduction in the prior iteration").
"""
import pytest
import torch

pytestmark = pytest.mark.slow  # every test here trains

SEMANTIC = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
PANOPTIC = "configs/builtin/panoptic-segmentation/hila_panoptic_fpn_mit_b0_s3.yaml"
SHORT = ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.CHECKPOINT_PERIOD", "1000", "MODEL.HILA.STAGES", "[2, 3, 4]"]  # fmt: skip
RES235 = "['res2', 'res3', 'res5']"


def assert_two_ranks_trained(run) -> None:
    """Rank 1 joined a world of 2, and the final checkpoint is of the third iteration: DDP got
    past the second."""
    rank1_log = (run.output_dir / "log.txt.rank1").read_text()
    assert "Rank of current process: 1. World size: 2" in rank1_log
    checkpoint = torch.load(run.output_dir / "model_final.pth", weights_only=True)
    assert checkpoint["iteration"] == 2


def test_s234_under_a_res2_res3_res5_head(train_net):
    """The semantic run evaluates too: the 2-process check of train_net.py."""
    opts = ("MODEL.MIT.OUT_FEATURES", RES235, "MODEL.SEM_SEG_HEAD.IN_FEATURES", RES235)
    run = train_net(SEMANTIC, *SHORT, *opts, processes=2)
    assert "World size: 2" in (run.output_dir / "log.txt").read_text()
    assert_two_ranks_trained(run)
    assert run.final_metrics["sem_seg/mIoU"] > 0  # rank 0 evaluated


def test_s234_under_panoptic_fpn(train_net):
    assert_two_ranks_trained(train_net(PANOPTIC, *SHORT, "DATASETS.TEST", "()", processes=2))
