"""The small shared parts the methods build on: the per-image split of batched RoI results, the
channels-last rule, the RoIAlign choice of a pooler, the mask pooler built from cfg."""
import pytest
import torch
from detectron2.layers import ROIAlign as D2ROIAlign
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler as D2ROIPooler
from detectron2.structures import Boxes, Instances

from instseg.config import get_project_cfg
from instseg.layers import ROIAlign, rois_from_boxes, rois_from_indices
from instseg.layers.memory_format import is_channels_last, to_channels_last
from instseg.modeling import build_mask_pooler, set_per_image, with_roi_align_impl


def test_set_per_image_splits_rows_by_image_in_order():
    images = [Instances((4, 4), scores=torch.zeros(n)) for n in (2, 0, 3)]
    set_per_image(images, "values", torch.arange(5.0)[:, None])
    assert [x.values[:, 0].tolist() for x in images] == [[0.0, 1.0], [], [2.0, 3.0, 4.0]]
    with pytest.raises(RuntimeError):
        set_per_image(images, "values", torch.arange(4.0))  # one row short


def test_channels_last_rule_counts_a_one_channel_map_as_nchw():
    x = torch.randn(2, 3, 4, 5)
    assert not is_channels_last(x) and is_channels_last(to_channels_last(x))
    assert not is_channels_last(to_channels_last(torch.randn(2, 1, 4, 5)))  # both layouts at once
    y = to_channels_last(x)
    assert to_channels_last(y).data_ptr() == y.data_ptr()


def test_with_roi_align_impl_is_the_one_choice():
    ours = with_roi_align_impl(D2ROIPooler(7, (1 / 4,), 0, "ROIAlignV2"), "instseg")
    theirs = with_roi_align_impl(D2ROIPooler(7, (1 / 4,), 0, "ROIAlignV2"), "detectron2")
    assert type(ours.level_poolers[0]) is ROIAlign and type(theirs.level_poolers[0]) is D2ROIAlign
    with pytest.raises(ValueError, match='MODEL.ROI_ALIGN_IMPL must be "instseg" or "detectron2"'):
        with_roi_align_impl(D2ROIPooler(7, (1 / 4,), 0, "ROIAlignV2"), "torchvision")


@pytest.mark.parametrize("impl,op", [("instseg", ROIAlign), ("detectron2", D2ROIAlign)])
def test_build_mask_pooler_follows_the_config(impl, op):
    cfg = get_project_cfg()
    cfg.MODEL.ROI_ALIGN_IMPL = impl
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    shapes = {f"p{k}": ShapeSpec(channels=8, stride=2**k) for k in (2, 3, 4, 5)}
    args, pooled = build_mask_pooler(cfg, shapes, "ratio")
    pooler = args["mask_pooler"]
    assert args["mask_in_features"] == cfg.MODEL.ROI_HEADS.IN_FEATURES and pooler.assign_criterion == "ratio"
    assert all(type(p) is op for p in pooler.level_poolers)
    assert (pooled.channels, pooled.height, pooled.width) == (8, 14, 14)
    shapes["p3"] = ShapeSpec(channels=4, stride=8)
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.IN_FEATURES must share one width"):
        build_mask_pooler(cfg, shapes)


def test_rois_from_boxes_and_from_indices_agree():
    boxes = [torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.zeros(0, 4), Boxes(torch.tensor([[5.0, 6.0, 7.0, 8.0], [0.0, 0.0, 1.0, 1.0]]))]
    rois = rois_from_boxes(boxes)
    assert rois.tolist() == [[0, 1, 2, 3, 4], [2, 5, 6, 7, 8], [2, 0, 0, 1, 1]]
    torch.testing.assert_close(rois, rois_from_indices(torch.tensor([0, 2, 2]), rois[:, 1:]))
    assert rois_from_boxes([torch.zeros(0, 4, dtype=torch.float64)]).shape == (0, 5)
    assert rois_from_boxes([torch.zeros(0, 4, dtype=torch.float64)]).dtype == torch.float64
