"""End to end through the user entry points: train_net.py (train, checkpoint, --resume, --eval-only),
DefaultPredictor on the saved checkpoint, and demo.py pictures. A few iterations at 128 px."""
import json
import os

import pytest
import torch
from helpers import CONFIGS, TINY, ZERO_THRESHOLDS, run

from instseg.engine import build_config

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: c.split("/")[1])
def trained(request, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train"))
    log = run("projects/train_net.py", "--config-file", request.param, *TINY, "OUTPUT_DIR", out)
    return request.param, out, log


def test_training_writes_model_zoo_checkpoints_and_evaluates(trained):
    _, out, log = trained
    assert "copypaste: Task: segm" in log and "copypaste: Task: bbox" in log
    assert "copypaste: Task: boundary" in log
    checkpoint = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert set(checkpoint) >= {"model", "iteration"}
    assert any(k.startswith(("roi_heads.mask_head.", "basis_module.")) for k in checkpoint["model"])
    assert os.path.isfile(os.path.join(out, "model_0000001.pth"))  # CHECKPOINT_PERIOD 2
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"


def test_run_is_quiet_and_its_files_are_clean(trained):
    _, out, log = trained  # the process's stdout and stderr: pytest.ini's warning filters do not apply
    for noise in ("torch.jit.script` is deprecated", "torch.meshgrid", "NumPy array is not writable"):
        assert noise not in log
    text = open(os.path.join(out, "log.txt")).read()
    assert "\x1b" not in text and "\x1b" in log  # the terminal keeps its colours
    assert text.count("Running with full config") == 1  # no logger got its handlers twice
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.json has {c}")) for line in f]
    assert any("segm/AP" in row for row in rows)


def test_eval_only_from_checkpoint(trained):
    config, out, _ = trained
    log = run(
        "projects/train_net.py", "--config-file", config, "--eval-only", *TINY,
        "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", out + "/eval",
    )
    assert "Evaluation results for segm" in log


def test_resume_continues_from_last_checkpoint(trained, tmp_path):
    config, out, _ = trained
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    for name in ("model_0000001.pth", "last_checkpoint"):
        src = os.path.join(out, name)
        with open(src, "rb") as f, open(os.path.join(resumed, name), "wb") as g:
            g.write(f.read() if name != "last_checkpoint" else b"model_0000001.pth")
    log = run(
        "projects/train_net.py", "--config-file", config, "--resume", *TINY, "OUTPUT_DIR", resumed,
    )
    assert "Starting training from iteration 2" in log
    assert os.path.isfile(os.path.join(resumed, "model_final.pth"))


def test_default_predictor_and_demo_pictures(trained, tmp_path):
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    config, out, _ = trained
    weights = os.path.join(out, "model_final.pth")
    cfg = build_config(config, TINY + ["MODEL.WEIGHTS", weights] + ZERO_THRESHOLDS)
    image = read_image("datasets/shapes/val/00000.png", format="BGR")
    instances = DefaultPredictor(cfg)(image)["instances"]
    assert instances.image_size == image.shape[:2]
    # after a few iterations a model may still predict only degenerate boxes (and so nothing)
    assert instances.pred_masks.shape[1:] == image.shape[:2] and instances.has("scores")

    pictures = tmp_path / "pictures"
    run(
        "projects/demo.py", "--config-file", config, "--input", "datasets/shapes/val", "--max-images", "3",
        "--output", str(pictures), "--opts", *TINY, "MODEL.WEIGHTS", weights,
    )
    assert sorted(os.listdir(pictures)) == ["00000.jpg", "00001.jpg", "00002.jpg"]
