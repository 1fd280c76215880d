"""A training process killed with SIGKILL resumes with --resume from its last checkpoint."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import CONFIGS, TINY, run

pytestmark = pytest.mark.slow


def test_sigkill_mid_training_then_resume(tmp_path):
    args = ["--config-file", CONFIGS[0], *TINY, "SOLVER.MAX_ITER", "14", "OUTPUT_DIR", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "projects/train_net.py", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    tag = tmp_path / "last_checkpoint"
    deadline = time.time() + 300
    while not (tag.exists() and tag.read_text() == "model_0000003.pth"):  # the second checkpoint
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    last = tag.read_text()  # the kill may have come after a later checkpoint
    last_iteration = torch.load(tmp_path / last, weights_only=True)["iteration"]
    assert not list(tmp_path.glob("model_final.pth"))

    log = run("projects/train_net.py", "--resume", *args)
    assert f"Loading from {tmp_path / last}" in log
    assert f"Starting training from iteration {last_iteration + 1}" in log
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 13
    assert "copypaste: Task: segm" in log
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    # SOLVER.CHECKPOINTS_TO_KEEP 2 (the default), counting those from before the kill; the final
    # checkpoint is the last periodic one under a second name
    periodic = sorted(f for f in os.listdir(tmp_path) if f.startswith("model_0"))
    assert periodic == ["model_0000011.pth", "model_0000013.pth"]
    assert os.path.samefile(tmp_path / "model_final.pth", tmp_path / "model_0000013.pth")
