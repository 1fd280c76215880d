"""Checkpoints: loading never runs code from the file, saving is atomic, a NaN loss stops training
without touching the last good checkpoint."""
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.utils.events import get_event_storage
from helpers import CONFIGS, TINY
from torch import nn

from instseg.checkpoint import Checkpointer, UnsafeCheckpointError
from instseg.engine import Predictor, Trainer, build_config


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_model_zoo_pkl_of_numpy_arrays_loads(tmp_path):
    weight = np.arange(6, dtype=np.float32).reshape(3, 2)
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"weight": weight, "bias": np.ones(3, np.float32)}, "__author__": "test"}, f)
    model = nn.Linear(2, 3)
    Checkpointer(model).load(str(path))
    assert torch.equal(model.weight.detach(), torch.from_numpy(weight))
    assert torch.equal(model.bias.detach(), torch.ones(3))


def _pickle(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.mark.parametrize("suffix,write", [(".pkl", _pickle), (".pth", torch.save)])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, suffix, write):
    marker = tmp_path / "code_ran"
    path = tmp_path / f"evil{suffix}"
    write({"model": {"weight": RunsCode(marker)}, "__author__": "x"}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"(?s)evil\{suffix}.*system"):  # names what it refused
        Checkpointer(nn.Linear(2, 3)).load(str(path))
    assert not marker.exists()


def test_predictor_refuses_code_in_weights(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pkl"
    _pickle({"model": RunsCode(marker), "__author__": "x"}, path)
    cfg = build_config(CONFIGS[0], ["MODEL.WEIGHTS", str(path), "MODEL.DEVICE", "cpu"])
    with pytest.raises(UnsafeCheckpointError):
        Predictor(cfg)
    assert not marker.exists()


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(2, 3)
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    saved = model.weight.detach().clone()

    def killed_while_writing(data, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # stands for the process dying mid-write

    monkeypatch.setattr(torch, "save", killed_while_writing)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000003")
    monkeypatch.undo()
    assert not (tmp_path / "model_0000003.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    resumed = nn.Linear(2, 3)
    Checkpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(resumed.weight.detach(), saved)


class NaNLossFrom(nn.Module):
    """Wraps a model; from iteration `start` on its losses (and so its gradients) are NaN."""

    def __init__(self, model, start):
        super().__init__()
        self.model, self.start = model, start

    def forward(self, data):
        losses = self.model(data)
        if get_event_storage().iter >= self.start:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    cfg = build_config(CONFIGS[0], TINY + ["SOLVER.MAX_ITER", "8", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.model = NaNLossFrom(trainer.model, start=3)  # checkpoints at iterations 1, 3, ...
    with pytest.raises(FloatingPointError, match="NaN at iteration=3"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists() and not (tmp_path / "model_final.pth").exists()
    state = torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    assert state["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # the optimizer never stepped on the NaN gradients: the weights in memory are still finite too
    assert all(torch.isfinite(p).all() for p in trainer.model.model.parameters())
