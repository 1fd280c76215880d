"""The embedded dataset: deterministic, cached, valid COCO with visible-part RLE masks."""
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_util

from instseg.data.shapes import CLASSES, IMAGE_SIZE, generate_shapes, json_path, render_scene


def test_render_is_deterministic_and_masks_are_disjoint():
    image_a, shapes_a = render_scene(7)
    image_b, shapes_b = render_scene(7)
    assert np.array_equal(image_a, image_b)
    assert [c for c, _ in shapes_a] == [c for c, _ in shapes_b]
    assert image_a.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image_a.dtype == np.uint8
    masks = np.stack([m for _, m in shapes_a])
    assert masks.sum(axis=0).max() <= 1, "visible parts of occluding shapes must not overlap"
    assert not np.array_equal(image_a, render_scene(8)[0])


def test_scenes_have_occlusion_and_varied_sizes():
    areas, scenes_with_overlap = [], 0
    for seed in range(40):
        _, shapes = render_scene(seed)
        areas += [m.sum() for _, m in shapes]
        boxes = [(np.nonzero(m.any(0))[0][[0, -1]], np.nonzero(m.any(1))[0][[0, -1]]) for _, m in shapes]
        scenes_with_overlap += any(
            a[0][0] <= b[0][1] and b[0][0] <= a[0][1] and a[1][0] <= b[1][1] and b[1][0] <= a[1][1]
            for i, a in enumerate(boxes) for b in boxes[i + 1:]
        )
    areas = np.array(areas)
    assert areas.min() < 32**2 and areas.max() > 64**2, "small and large objects"
    assert scenes_with_overlap >= 8, "shapes overlap (and so occlude each other) in many scenes"


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_shapes(root)
    return root


def test_generated_coco_json(dataset_root):
    coco = json.load(open(json_path(dataset_root, "val")))
    assert [c["name"] for c in coco["categories"]] == CLASSES
    assert len(coco["images"]) == 50
    image_ids = {im["id"] for im in coco["images"]}
    for ann in coco["annotations"]:
        assert ann["image_id"] in image_ids and 1 <= ann["category_id"] <= len(CLASSES)
        mask = mask_util.decode(ann["segmentation"])
        assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert mask.sum() == ann["area"] > 0
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    for im in coco["images"][:3]:
        assert os.path.isfile(os.path.join(dataset_root, "val", im["file_name"]))
    # annotations are the visible parts of the scene with the same seed
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    _, shapes = render_scene(1_000_000)
    assert len(first) == len(shapes)
    for ann, (category, mask) in zip(first, shapes):
        assert ann["category_id"] == category + 1
        assert np.array_equal(mask_util.decode(ann["segmentation"]).astype(bool), mask)


def test_the_test_split_is_ten_times_the_validation_split_and_other_scenes(dataset_root):
    val, test = (json.load(open(json_path(dataset_root, split))) for split in ("val", "test"))
    assert len(test["images"]) == 500 and test["categories"] == val["categories"]
    _, shapes = render_scene(2_000_000)
    assert len([a for a in test["annotations"] if a["image_id"] == 1]) == len(shapes)


def test_generation_is_cached(dataset_root):
    path = json_path(dataset_root, "train")
    before = os.stat(path).st_mtime_ns
    generate_shapes(dataset_root)
    assert os.stat(path).st_mtime_ns == before


def test_registered_in_detectron2():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import instseg.data  # noqa: F401  (registers the dataset under $DETECTRON2_DATASETS)

    dicts = DatasetCatalog.get("shapes_val")
    assert len(dicts) == 50 and dicts[0]["annotations"][0]["segmentation"]["counts"]
    assert MetadataCatalog.get("shapes_val").thing_classes == CLASSES
