"""projects/demo.py's choice of what a picture shows: the score of what is drawn, thresholded."""
import importlib.util
import os

import pytest
import torch
from detectron2.structures import Boxes, Instances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
