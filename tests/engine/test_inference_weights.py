"""Evaluation and prediction run only a fully loaded model, unless TEST.ALLOW_RANDOM_WEIGHTS; every
checkpoint of a training run holds its class names, which Predictor labels by (issue 26, points 3, 4)."""
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model
from helpers import CONFIGS, RANDOM_WEIGHTS, TINY

from instseg.checkpoint import Checkpointer, IncompleteWeightsError
from instseg.data.shapes import CLASSES
from instseg.engine import Predictor, Trainer, build_config

NO_DATA = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
FIVE = ["a", "b", "c", "d", "e"]


def test_empty_weights_are_refused_unless_allowed():
    with pytest.raises(IncompleteWeightsError, match=r"MODEL.WEIGHTS is empty: .*randomly initialised.*TEST.ALLOW_RANDOM_WEIGHTS True"):
        Predictor(build_config(CONFIGS[0], ["MODEL.DEVICE", "cpu"]))
    assert Predictor(build_config(CONFIGS[0], ["MODEL.DEVICE", "cpu", *RANDOM_WEIGHTS])).model is not None


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.split("/")[1])
def test_checkpoint_of_another_class_count_is_refused_with_its_count(config, tmp_path):
    source = build_model(build_config(config, NO_DATA + ["MODEL.ROI_HEADS.NUM_CLASSES", "5"]))
    Checkpointer(source, str(tmp_path)).save("five_classes", metadata={"thing_classes": FIVE})
    (tmp_path / "config.yaml").write_text("MODEL: {}\n")  # as beside a run's checkpoints
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "five_classes.pth")]
    message = (
        r"five_classes\.pth does not fit the model: \d+ of the model's parameters would keep their random "
        r"initialisation \(\d+ of another shape: .* in the checkpoint, .* in the model.*\)\. It was trained on 5 "
        rf"classes \['a', .*set MODEL.ROI_HEADS.NUM_CLASSES 5\. .*--config-file {tmp_path}/config.yaml"
    )
    with pytest.raises(IncompleteWeightsError, match=message):
        Predictor(build_config(config, opts))
    Predictor(build_config(config, opts + RANDOM_WEIGHTS))  # asked for: loads what fits
    # the shapes configs name shapes_val (3 classes) in DATASETS.TEST: no longer the names' source
    predictor = Predictor(build_config(config, opts + ["MODEL.ROI_HEADS.NUM_CLASSES", "5", "DATASETS.TEST", "()"], task="predict"))
    assert predictor.metadata.thing_classes == FIVE


def test_checkpoint_missing_parameters_is_refused(tmp_path):
    model = build_model(build_config(CONFIGS[0], NO_DATA))
    backbone_only = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone_only}, tmp_path / "backbone.pth")
    with pytest.raises(IncompleteWeightsError, match=r"\d+ missing from the checkpoint: proposal_generator\..*, \.\.\."):
        Predictor(build_config(CONFIGS[0], ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "backbone.pth")]))


def test_training_checkpoints_hold_the_class_names_and_fine_tuning_loads_what_fits(tmp_path):
    source = build_model(build_config(CONFIGS[0], NO_DATA + ["MODEL.ROI_HEADS.NUM_CLASSES", "5"]))
    Checkpointer(source, str(tmp_path)).save("five_classes")
    cfg = build_config(CONFIGS[0], TINY + ["OUTPUT_DIR", str(tmp_path / "run"), "MODEL.WEIGHTS", str(tmp_path / "five_classes.pth")])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)  # fine-tuning: the classifiers are skipped, not an error
    trainer.checkpointer.save("model_0000000")
    saved = torch.load(tmp_path / "run" / "model_0000000.pth", weights_only=True)["metadata"]
    assert saved == {"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1, 3: 2}}

    # the dataset need not be registered, nor named: the names come from the checkpoint
    weights = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "run" / "model_0000000.pth")]
    predictor = Predictor(build_config(CONFIGS[0], weights + ["DATASETS.TEST", "('not_registered',)"], task="predict"))
    assert predictor.metadata.thing_classes == CLASSES
    # a checkpoint without names (e.g. from elsewhere): those of DATASETS.TEST[0], else none
    Checkpointer(trainer.model, str(tmp_path)).save("no_names")
    weights[-1] = str(tmp_path / "no_names.pth")
    assert Predictor(build_config(CONFIGS[0], weights)).metadata.thing_classes == CLASSES  # shapes_val
    assert Predictor(build_config(CONFIGS[0], weights + ["DATASETS.TEST", "()"])).metadata.get("thing_classes") is None


@pytest.mark.parametrize("script", ["train_net", "demo"])
def test_entry_points_refuse_to_run_without_weights(script, tmp_path):
    if script == "train_net":
        command = ["projects/train_net.py", "--config-file", CONFIGS[0], "--eval-only", *TINY, "OUTPUT_DIR", str(tmp_path)]
    else:
        command = ["projects/demo.py", "--config-file", CONFIGS[0], "--input", "datasets/shapes/val", "--output", str(tmp_path)]
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "IncompleteWeightsError: MODEL.WEIGHTS is empty" in proc.stderr
    assert not list(tmp_path.glob("*.jpg")) and not (tmp_path / "inference").exists()
