"""train_net.py under faults and in parallel: a run killed with SIGKILL resumes from its last
complete checkpoint to the same final iteration with every checkpoint loadable, and a 2-process
CPU run (gloo) through detectron2's launch trains and evaluates."""
import pytest
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from test_train_builtin import CONFIG, REPO, run_train_net, saved_miou

pytestmark = pytest.mark.slow  # every test here trains

FAST = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "5"]


def checkpoint_iteration(path: Path) -> int:
    return torch.load(path, weights_only=True)["iteration"]


def test_sigkill_then_resume_reaches_the_same_final_iteration(tmp_path):
    args = ["SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "train_net.py", "--config-file", CONFIG, *FAST, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 300
    try:  # kill it hard as soon as its second periodic checkpoint appears
        while not (tmp_path / "model_0000019.pth").exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "model_final.pth").exists()
    last = (tmp_path / "last_checkpoint").read_text().strip()
    start = checkpoint_iteration(tmp_path / last) + 1  # the checkpoint it names is complete

    log = run_train_net("--resume", *FAST, *args).stdout
    log += (tmp_path / "log.txt").read_text()
    assert f"Starting training from iteration {start}" in log
    assert checkpoint_iteration(tmp_path / "model_final.pth") == 39
    # every checkpoint on disk loads (a file cut short by the kill was rewritten on resume)
    for path in sorted(tmp_path.glob("model_*.pth")):
        state = torch.load(path, weights_only=True)
        assert "model" in state and state["iteration"] in (9, 19, 29, 39), path.name
    assert saved_miou(tmp_path) > 0


def test_two_cpu_processes_over_gloo(tmp_path):
    """``--num-gpus 2`` on CPU: two ranks train (DistributedDataParallel over gloo) and rank 0
    evaluates."""
    # --dist-url auto: a free port (detectron2's default port is fixed per user, so two runs at
    # once, e.g. two checkouts' test suites, would collide)
    run_train_net(
        "--num-gpus", "2", "--dist-url", "auto", "SOLVER.MAX_ITER", "10", *FAST,
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    assert "World size: 2" in (tmp_path / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (tmp_path / "log.txt.rank1").read_text()
    assert checkpoint_iteration(tmp_path / "model_final.pth") == 9
    assert saved_miou(tmp_path) > 0
