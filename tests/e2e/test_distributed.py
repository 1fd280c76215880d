"""Two-process data-parallel training on CPU (gloo), started as detectron2 users do
(train_net.py --num-gpus 2) and by torchrun.

DDP starts both replicas from rank 0's weights; the trainer checks at the end that both still hold
identical weights, which holds only if both processes stepped on the same, averaged, gradients.
"""
import os

import pytest
import torch
from helpers import CONFIGS, TINY, run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("launcher", ["num-gpus", "torchrun"])
def test_two_processes_train_one_model_and_evaluate_together(tmp_path, launcher):
    args = ["projects/train_net.py", "--config-file", CONFIGS[0], *TINY, "OUTPUT_DIR", str(tmp_path)]
    if launcher == "num-gpus":
        log = run(args[0], "--num-gpus", "2", *args[1:])
    else:
        log = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args)
    assert "World size: 2" in log
    assert "model weights are identical on all 2 processes" in log
    initial = torch.load(tmp_path / "model_0000001.pth", weights_only=True)["model"]
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert any(not torch.equal(initial[k], final[k]) for k in final)  # it trained
    assert sorted(f for f in os.listdir(tmp_path) if ".pth" in f) == [
        "model_0000001.pth", "model_0000003.pth", "model_final.pth"  # written once, by rank 0
    ]
    # each process ran inference on half of the 50 validation images; rank 0 gathered all of them
    assert "Start inference on 25 batches" in log
    predictions = torch.load(tmp_path / "inference" / "shapes_val" / "instances_predictions.pth", weights_only=True)
    assert sorted(p["image_id"] for p in predictions) == list(range(1, 51))
