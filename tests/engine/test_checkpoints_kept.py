"""Training keeps at most SOLVER.CHECKPOINTS_TO_KEEP periodic checkpoints, and model_final.pth is a
second name of the last periodic checkpoint when both hold the same state, not a second copy."""
import os
from types import SimpleNamespace

import torch
from torch import nn

from instseg.checkpoint import Checkpointer
from instseg.engine import KeepingCheckpointer


def _train(folder, start_iter, max_iter, period=2, keep=2):
    """Run the hook as the trainer would, from `start_iter` to `max_iter`; returns the model."""
    model = nn.Linear(2, 3)
    hook = KeepingCheckpointer(Checkpointer(model, str(folder)), period, keep)
    hook.trainer = SimpleNamespace(start_iter=start_iter, max_iter=max_iter)
    hook.before_train()
    for iteration in range(start_iter, max_iter):
        with torch.no_grad():
            model.weight.fill_(iteration)
        hook.step(iteration)
    return model


def _files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".pth"))


def test_only_the_last_periodic_checkpoints_are_kept_and_final_is_a_link(tmp_path):
    _train(tmp_path, 0, 10)
    assert _files(tmp_path) == ["model_0000007.pth", "model_0000009.pth", "model_final.pth"]
    assert os.path.samefile(tmp_path / "model_final.pth", tmp_path / "model_0000009.pth")
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 9 and final["model"]["weight"].eq(9).all()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    os.remove(tmp_path / "model_0000009.pth")  # each name can go without the other
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 9


def test_final_is_written_when_the_last_iteration_is_not_periodic(tmp_path):
    _train(tmp_path, 0, 9)
    assert _files(tmp_path) == ["model_0000005.pth", "model_0000007.pth", "model_final.pth"]
    assert not os.path.samefile(tmp_path / "model_final.pth", tmp_path / "model_0000007.pth")
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 8


def test_resumed_run_counts_its_earlier_checkpoints_and_zero_keeps_all(tmp_path):
    _train(tmp_path, 0, 6)  # killed after iteration 5: 3 and 5 kept, final of that attempt removed
    os.remove(tmp_path / "model_final.pth")
    _train(tmp_path, 6, 12)
    assert _files(tmp_path) == ["model_0000009.pth", "model_0000011.pth", "model_final.pth"]
    kept_all = tmp_path / "all"
    kept_all.mkdir()
    _train(kept_all, 0, 6, keep=0)
    assert _files(kept_all) == ["model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth"]


def test_a_fresh_run_leaves_older_runs_checkpoints_alone(tmp_path):
    _train(tmp_path, 0, 20)  # an older, longer run in the same folder
    _train(tmp_path, 0, 6)
    assert _files(tmp_path) == ["model_0000003.pth", "model_0000005.pth", "model_0000017.pth", "model_0000019.pth", "model_final.pth"]
