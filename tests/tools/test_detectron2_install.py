"""The detectron2 that `make install` provides works with this torch/numpy/Pillow, and what it cannot
do without compiled ops fails with a clear error."""
import numpy as np
import pytest
import torch

from instseg.utils import detectron2_has_compiled_ops

needs_pure_python_build = pytest.mark.skipif(
    detectron2_has_compiled_ops(), reason="a detectron2 with compiled ops is installed"
)


def test_model_zoo_configs_are_packaged():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert path.endswith("mask_rcnn_R_50_FPN_1x.yaml")


def test_extent_transform_with_current_pillow():
    from detectron2.data.transforms import ExtentTransform

    image = np.zeros((10, 12, 3), dtype=np.uint8)
    out = ExtentTransform(src_rect=(0, 0, 12, 10), output_size=(5, 6)).apply_image(image)
    assert out.shape == (5, 6, 3)


def test_class_histogram_with_numpy_2():
    from detectron2.data.build import print_instances_class_histogram

    print_instances_class_histogram([{"annotations": [{"category_id": 0, "iscrowd": 0}]}], ["a"])


@needs_pure_python_build
def test_compiled_ops_raise_a_clear_error():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]])
    with pytest.raises(RuntimeError, match="pure-Python build.*install detectron2 from its git source"):
        pairwise_iou_rotated(boxes, boxes)
