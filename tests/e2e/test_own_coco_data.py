"""The README's "Your own COCO data" walk-through, on a labelme export (category 0 "_background_",
image id 0, file names under JPEGImages/): train from scratch, evaluate with the run's saved config,
predict with class names, write a COCO results json -- the README's commands, with the tiny
schedule of helpers.TINY."""
import os

import pytest
import torch
from helpers import CONFIGS, LABELME_CATEGORIES, TINY, ZERO_THRESHOLDS, labelme_dataset, run
from pycocotools.coco import COCO

pytestmark = pytest.mark.slow


def test_train_eval_demo_and_results_json_of_a_labelme_export(tmp_path):
    train, val, out = tmp_path / "labelme" / "train", tmp_path / "labelme" / "val", tmp_path / "output" / "my_run"
    labelme_dataset(train, num_images=6)
    val_json = labelme_dataset(val, num_images=3)
    register = ["--register-coco", "my_train", str(train / "annotations.json"), str(train),
                "--register-coco", "my_val", val_json, str(val)]
    log = run("projects/train_net.py", "--config-file", CONFIGS[0], *register,
              "DATASETS.TRAIN", '("my_train",)', "DATASETS.TEST", '("my_val",)', "MODEL.ROI_HEADS.NUM_CLASSES", "5",
              "OUTPUT_DIR", str(out), *TINY, *ZERO_THRESHOLDS)  # after 4 steps scores are low: keep all
    assert "copypaste: Task: segm" in log
    weights = str(out / "model_final.pth")
    names = [c["name"] for c in LABELME_CATEGORIES]
    assert torch.load(weights, weights_only=True)["metadata"]["thing_classes"] == names

    # the run's config: only DATASETS.TEST is read, so my_train need not be registered
    log = run("projects/train_net.py", "--config-file", str(out / "config.yaml"), "--eval-only",
              "--register-coco", "my_val", val_json, str(val), "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out / "eval"))
    assert "Evaluation results for segm" in log and "copypaste: Task: segm" in log

    # no dataset registered: the class names come from the checkpoint
    log = run("projects/demo.py", "--config-file", str(out / "config.yaml"), "--input", str(val / "JPEGImages"),
              "--output", str(out / "pictures"), "--output-json", str(out / "results.json"), "--coco-json", val_json,
              "--confidence-threshold", "0", "--opts", "MODEL.WEIGHTS", weights)
    assert sorted(os.listdir(out / "pictures")) == ["0.jpg", "1.jpg", "2.jpg"]
    detections = COCO(val_json).loadRes(str(out / "results.json")).dataset["annotations"]
    assert detections and {d["image_id"] for d in detections} <= {0, 1, 2}
    assert {d["category_id"] for d in detections} <= {c["id"] for c in LABELME_CATEGORIES}
