"""Boundary AP on hand-made masks whose Boundary IoU is computed by hand."""
import math

import numpy as np
import pytest
from pycocotools import mask as mask_util

from instseg.evaluation import boundary_ap


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def test_boundary_ap_of_a_hand_made_pair():
    # 100 x 100 image: d = round(0.02 * diagonal) = round(2.83) = 3 pixels.
    gt = np.zeros((100, 100), bool)
    gt[20:60, 20:60] = True  # 40 x 40
    pred = np.zeros((100, 100), bool)
    pred[20:60, 20:70] = True  # 40 x 50, same left/top/bottom edges
    # inner bands of width 3: gt 1600 - 34^2 = 444, pred 2000 - 34 * 44 = 504 pixels; they share the
    # left band (3 x 40) and the top and bottom bands between (3 x 37 each): 342 pixels
    boundary_iou = 342 / (444 + 504 - 342)
    mask_iou = 1600 / 2000
    assert math.isclose(boundary_iou, 0.5644, abs_tol=1e-4) and mask_iou == 0.8
    dataset = {
        "images": [{"id": 1, "height": 100, "width": 100}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(gt), "area": 1600.0,
                         "bbox": [20, 20, 40, 40], "iscrowd": 0}],
    }
    result = boundary_ap(dataset, [{"image_id": 1, "category_id": 1, "segmentation": _rle(pred), "score": 0.9}])
    # AP over IoU thresholds 0.50:0.05:0.95 is the share of thresholds the one match passes:
    # Boundary IoU 0.564 passes 0.50 and 0.55 (AP 20); mask IoU 0.8 would pass seven (AP 70)
    assert result["AP"] == pytest.approx(20.0)
    assert result["AP50"] == pytest.approx(100.0) and result["AP75"] == pytest.approx(0.0)
    assert math.isnan(result["APs"]) and math.isnan(result["APl"])
    perfect = boundary_ap(dataset, [{"image_id": 1, "category_id": 1, "segmentation": _rle(gt), "score": 0.9}])
    assert perfect["AP"] == pytest.approx(100.0)


def test_box_ap_ranks_by_scores_and_mask_ap_by_mask_scores(tmp_path):
    """centermask2's evaluator: with mask_scores, box results are scored by scores and mask results
    by mask_scores. One object, two detections: D1 has its box but a wrong mask and is first by
    scores; D2 has its mask but a wrong box and is first by mask_scores. Scored by the right field
    each AP is 100; by the wrong one the first detection is a false positive and the AP 50."""
    import json

    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.structures import Boxes, Instances

    from instseg.evaluation import BoundaryCOCOEvaluator

    gt = np.zeros((100, 100), bool)
    gt[20:60, 20:60] = True
    elsewhere = np.zeros((100, 100), bool)
    elsewhere[70:90, 70:90] = True
    dataset = {
        "images": [{"id": 1, "height": 100, "width": 100, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(gt), "area": 1600.0,
                         "bbox": [20, 20, 40, 40], "iscrowd": 0}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    name = f"mask_scores_test_{tmp_path.name}"
    register_coco_instances(name, {}, str(tmp_path / "gt.json"), str(tmp_path))
    DatasetCatalog.get(name)  # loading it maps the category ids, as a test loader does

    def evaluate(with_mask_scores):
        det = Instances((100, 100))
        det.pred_boxes = Boxes(torch.tensor([[20.0, 20.0, 60.0, 60.0], [70.0, 70.0, 90.0, 90.0]]))
        det.pred_classes = torch.tensor([0, 0])
        det.pred_masks = torch.from_numpy(np.stack([elsewhere, gt]))
        det.scores = torch.tensor([0.9, 0.1])
        if with_mask_scores:
            det.mask_scores = torch.tensor([0.1, 0.9])
        evaluator = BoundaryCOCOEvaluator(name, output_dir=str(tmp_path / "out"), use_fast_impl=False)
        evaluator.reset()
        evaluator.process([{"image_id": 1}], [{"instances": det}])
        return evaluator.evaluate()

    results = evaluate(with_mask_scores=True)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["boundary"]["AP"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert [d["score"] for d in saved] == pytest.approx([0.9, 0.1])
    assert [d["mask_score"] for d in saved] == pytest.approx([0.1, 0.9])
    # without mask_scores, masks are ranked by scores: D1's wrong mask comes first
    results = evaluate(with_mask_scores=False)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(50.0, abs=0.5)


def test_boundary_ap_counts_max_dets_per_image():
    # one object and two detections: a false positive first, the match second; counting only the
    # best detection of the image (maxDets 1) finds nothing, counting two finds the match at rank 2
    gt = np.zeros((100, 100), bool)
    gt[20:60, 20:60] = True
    elsewhere = np.zeros((100, 100), bool)
    elsewhere[70:90, 70:90] = True
    dataset = {
        "images": [{"id": 1, "height": 100, "width": 100}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(gt), "area": 1600.0,
                         "bbox": [20, 20, 40, 40], "iscrowd": 0}],
    }
    detections = [{"image_id": 1, "category_id": 1, "segmentation": _rle(elsewhere), "score": 0.9},
                  {"image_id": 1, "category_id": 1, "segmentation": _rle(gt), "score": 0.5}]
    assert boundary_ap(dataset, detections, max_dets=(1, 1, 1))["AP"] == pytest.approx(0.0)
    assert boundary_ap(dataset, detections, max_dets=(1, 1, 2))["AP"] == pytest.approx(50.0, abs=0.5)


def test_trainer_evaluator_counts_detections_per_image(tmp_path):
    from instseg.engine import Trainer, build_config

    cfg = build_config("configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml", ["TEST.DETECTIONS_PER_IMAGE", "150"])
    evaluator = Trainer.build_evaluator(cfg, "shapes_val", output_folder=str(tmp_path))
    assert evaluator._max_dets_per_image == [1, 10, 150]
