"""train_net.py under faults: a run killed with SIGKILL resumes from its last complete
checkpoint to the same final iteration with every checkpoint loadable."""
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_train_builtin import CONFIG

from project_config import REPO

pytestmark = pytest.mark.slow  # every test here trains

RUN = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "5", "SOLVER.MAX_ITER", "40",
       "SOLVER.CHECKPOINT_PERIOD", "10"]  # fmt: skip


def checkpoint_iteration(path: Path) -> int:
    return torch.load(path, weights_only=True)["iteration"]


def test_sigkill_then_resume_reaches_the_same_final_iteration(train_net, tmp_path):
    proc = subprocess.Popen(
        train_net.command(CONFIG, *RUN, output_dir=tmp_path),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=train_net.environment(),
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

    resumed = train_net(CONFIG, *RUN, output_dir=tmp_path, flags=["--resume"])
    assert f"Starting training from iteration {start}" in resumed.log
    assert checkpoint_iteration(tmp_path / "model_final.pth") == 39
    # every checkpoint on disk loads (a file cut short by the kill was rewritten on resume)
    for path in sorted(tmp_path.glob("model_*.pth")):
        state = torch.load(path, weights_only=True)
        assert "model" in state and state["iteration"] in (9, 19, 29, 39), path.name
    assert resumed.final_metrics["sem_seg/mIoU"] > 0
