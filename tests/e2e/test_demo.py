"""projects/demo.py: what a picture shows (the score of what is drawn, thresholded), the class names
of the checkpoint or of a dataset it registers, and a COCO results json that pycocotools loads."""
import importlib.util
import json
import os

import pytest
import torch
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from helpers import CONFIGS, labelme_dataset, run
from pycocotools.coco import COCO

from instseg.checkpoint import Checkpointer, TrainingMetadata
from instseg.data.datasets import register_coco_instances
from instseg.engine import build_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "projects", "demo.py"))
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def _detections(scores, mask_scores=None):
    inst = Instances((32, 32))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]] * len(scores)))
    inst.scores = torch.tensor(scores)
    if mask_scores is not None:
        inst.mask_scores = torch.tensor(mask_scores)
    return inst


def test_threshold_applies_to_the_shown_score():
    # CenterMask: the label and the threshold are the mask score (score x MaskIoU), not FCOS's score
    shown = demo.shown_instances(_detections([0.9, 0.7, 0.3], [0.35, 0.6, 0.55]), 0.5)
    assert shown.scores.tolist() == pytest.approx([0.6, 0.55])
    # other methods: their scores
    shown = demo.shown_instances(_detections([0.9, 0.4, 0.5]), 0.5)
    assert shown.scores.tolist() == pytest.approx([0.9, 0.5])


# a 5-class Mask R-CNN at the 64 x 48 images' size that keeps every detection of its random weights
SMALL = ["MODEL.ROI_HEADS.NUM_CLASSES", "5", "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "64",
         "MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "5"]
# labelme-like, but with category ids that are neither contiguous nor from 0
SPARSE = [{"id": 3, "name": "_background_"}, {"id": 7, "name": "cat"}, {"id": 8, "name": "dog"},
          {"id": 20, "name": "bird"}, {"id": 21, "name": "fish"}]


def _checkpoint(path, dataset=None):
    """A complete random-weight checkpoint of the SMALL model; with the training metadata (class
    names, category ids) of registered `dataset` when given, as training writes it."""
    model = build_model(build_config(CONFIGS[0], SMALL + ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]))
    extra = {"metadata": TrainingMetadata([dataset]).state_dict()} if dataset else {}
    Checkpointer(model, str(path.parent)).save(path.stem, **extra)
    return str(path)


def _demo(*args, opts=()):
    return run("projects/demo.py", "--config-file", CONFIGS[0], "--confidence-threshold", "0", *args,
               "--opts", *SMALL, *opts)


def test_results_json_of_a_folder_loads_into_pycocotools_with_the_jsons_ids(tmp_path):
    data = tmp_path / "data"
    json_file = labelme_dataset(data, num_images=3, categories=SPARSE)  # image ids 0, 1, 2
    register_coco_instances("demo_labelme", json_file, str(data))
    weights = _checkpoint(tmp_path / "model_final.pth", "demo_labelme")
    results = tmp_path / "results.json"
    log = _demo("--input", str(data / "JPEGImages"), "--output-json", str(results), "--coco-json", json_file,
                "--output", str(tmp_path / "pictures"), opts=["MODEL.WEIGHTS", weights, "DATASETS.TEST", "()"])
    assert "wrote 15 detections on 3 images" in log
    assert sorted(os.listdir(tmp_path / "pictures")) == ["0.jpg", "1.jpg", "2.jpg"]
    detections = COCO(json_file).loadRes(str(results))
    annotations = detections.dataset["annotations"]
    assert sorted({a["image_id"] for a in annotations}) == [0, 1, 2]
    assert {a["category_id"] for a in annotations} <= {3, 7, 8, 20, 21}
    assert all(detections.annToMask(a).shape == (48, 64) for a in annotations)
    assert all(a["file_name"].endswith(f"JPEGImages/{a['image_id']}.jpg") for a in annotations)


def test_without_a_coco_json_ids_follow_the_images_and_the_registered_datasets_categories(tmp_path):
    data = tmp_path / "data"
    json_file = labelme_dataset(data, num_images=2, categories=SPARSE)
    weights = _checkpoint(tmp_path / "no_names.pth")  # not from training: no class names in it
    results = tmp_path / "results.json"
    _demo("--input", str(data / "JPEGImages"), "--output-json", str(results), "--register-coco", "mine", json_file, str(data),
          opts=["MODEL.WEIGHTS", weights, "DATASETS.TEST", "('mine',)"])
    detections = json.loads(results.read_text())
    assert {d["image_id"] for d in detections} == {1, 2}
    assert {d["category_id"] for d in detections} <= {3, 7, 8, 20, 21}


def test_coco_json_of_other_classes_or_without_the_image_is_an_error(tmp_path):
    json_file = labelme_dataset(tmp_path, num_images=1)
    ids = demo.ImageIds(json_file)
    assert ids(str(tmp_path / "JPEGImages" / "0.jpg")) == 0 and ids("elsewhere/0.jpg") == 0  # by base name
    with pytest.raises(KeyError, match=r"'x/9\.jpg' is not in --coco-json"):
        ids("x/9.jpg")
    with pytest.raises(ValueError, match=r"has the categories \['_background_', 'cat'.*the model predicts \['a'"):
        demo.dataset_category_ids(Metadata(thing_classes=["a", "b", "c", "d", "e"]), 5, ids)
    assert demo.dataset_category_ids(Metadata(), 5, ids) == [0, 1, 2, 3, 4]
    assert demo.dataset_category_ids(Metadata(thing_dataset_id_to_contiguous_id={3: 0, 9: 1}), 2) == [3, 9]
