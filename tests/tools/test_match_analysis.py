"""projects/match_analysis.py on a hand-made dataset whose matches are known: a small square found
with half its mask and the wrong class on top, a medium square found by a box shifted 8 px, a
missed shape and an ignored crowd region."""
import os
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "projects"))
import match_analysis  # noqa: E402

SIZE = 64


def _rle(x0, y0, x1, y1):
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[y0:y1, x0:x1] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()  # as in a json file
    return rle


def _ann(ann_id, box, category, iscrowd=0):
    x, y, w, h = box
    return dict(id=ann_id, image_id=1, bbox=box, area=w * h, category_id=category, iscrowd=iscrowd,
                segmentation=_rle(x, y, x + w, y + h))


def _dataset() -> COCO:
    gt = COCO()
    gt.dataset = dict(
        images=[dict(id=1, width=SIZE, height=SIZE)],
        categories=[dict(id=1, name="a"), dict(id=2, name="b")],
        annotations=[
            _ann(1, [10, 10, 20, 20], 1),  # small
            _ann(2, [0, 0, 40, 40], 2),  # medium
            _ann(3, [50, 50, 10, 10], 1),  # missed
            _ann(4, [40, 0, 24, 24], 1, iscrowd=1),
        ],
    )
    gt.createIndex()
    return gt


RESULTS = [
    # the small square: the best box (exact, right class, half the mask) is not the best scored (box
    # IoU 0.82, wrong class): the match is the former, the class is the latter's
    dict(image_id=1, bbox=[10, 10, 20, 20], category_id=1, score=0.5, segmentation=_rle(10, 10, 20, 30)),
    dict(image_id=1, bbox=[11, 11, 20, 20], category_id=2, score=0.9, segmentation=_rle(11, 11, 31, 31)),
    # the medium square: box and mask shifted 8 px to the right, right class
    dict(image_id=1, bbox=[8, 0, 40, 40], category_id=2, score=0.8, segmentation=_rle(8, 0, 48, 40)),
]


def test_matches_of_a_known_dataset():
    summary = match_analysis.summarize(match_analysis.match_instances(_dataset(), RESULTS))
    shifted_iou = 32 * 40 / (2 * 40 * 40 - 32 * 40)  # 0.667 for box and mask alike
    assert summary["instances"] == 3  # the crowd region is not an instance
    assert summary["matched"] == pytest.approx(2 / 3)
    assert summary["class right"] == pytest.approx(0.5)
    assert summary["corner error small (px)"] == pytest.approx(0.0)
    assert summary["matches at box IoU 0.5-0.7"] == 1
    assert summary["mask IoU at box IoU 0.5-0.7"] == pytest.approx(shifted_iou)
    assert summary["matches at box IoU 0.7-0.85"] == 0
    assert summary["mask IoU at box IoU 0.7-0.85"] is None
    assert summary["matches at box IoU 0.85-1.0"] == 1  # box IoU 1 falls in the last range
    assert summary["mask IoU at box IoU 0.85-1.0"] == pytest.approx(0.5)
    assert summary["mask IoU small"] == pytest.approx(0.5)
    assert summary["mask IoU medium"] == pytest.approx(shifted_iou)
    assert summary["mask IoU large"] is None


def test_corner_error_is_the_mean_absolute_coordinate_difference():
    results = [dict(RESULTS[0], bbox=[12, 10, 20, 22])]  # x0, x1 +2 px, y1 +2 px
    (match, *_) = match_analysis.match_instances(_dataset(), results)
    assert match["corner_error"] == pytest.approx((2 + 0 + 2 + 2) / 4)


def test_table_has_a_row_per_run_and_a_dash_where_no_instance_is():
    summary = match_analysis.summarize(match_analysis.match_instances(_dataset(), RESULTS))
    table = match_analysis.format_table({"run_a": summary, "run_b": summary}).splitlines()
    assert len(table) == 4 and table[2].startswith("| run_a | 3 | 0.667 | 0.500 |")
    assert table[2].count("| - |") == 2


def test_a_run_without_results_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="shapes_test.*" + str(tmp_path)):
        match_analysis.results_file(str(tmp_path), "shapes_test")
