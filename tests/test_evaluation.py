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
