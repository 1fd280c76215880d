"""Detectron2's multi-level ROIPooler and the Mask R-CNN RoI heads run our op per MODEL.ROI_ALIGN_IMPL."""
import pytest
import torch
from detectron2.layers import ROIAlign as D2ROIAlign
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_roi_heads
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from instseg.config import get_project_cfg
from instseg.layers import ROIAlign, use_instseg_roi_align


def fpn_features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 8, 128 // s, 128 // s, generator=g) for s in (4, 8, 16, 32)]


def boxes_for_all_levels():
    # small to large boxes, so that the pooler assigns them to all four levels
    return [
        Boxes(torch.tensor([[4.0, 4.0, 20.0, 24.0], [10.0, 10.0, 120.0, 126.0], [0, 0, 60, 50]])),
        Boxes(torch.tensor([[30.0, 40.0, 70.0, 100.0], [1.0, 2.0, 127.0, 127.0]])),
    ]


@pytest.mark.parametrize("pooler_type,aligned", [("ROIAlignV2", True), ("ROIAlign", False)])
def test_pooler_with_our_op_matches_detectron2(pooler_type, aligned):
    args = dict(output_size=7, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0, pooler_type=pooler_type)
    reference = ROIPooler(**args)
    ours = use_instseg_roi_align(ROIPooler(**args))
    assert all(type(p) is ROIAlign and p.aligned == aligned for p in ours.level_poolers)
    assert all(type(p) is D2ROIAlign for p in reference.level_poolers)
    x, boxes = fpn_features(), boxes_for_all_levels()
    torch.testing.assert_close(ours(x, boxes), reference(x, boxes), atol=1e-5, rtol=0)


def test_pooler_keeps_other_pooler_types():
    pooler = use_instseg_roi_align(ROIPooler(7, (1 / 4,), 0, "ROIPool"))
    assert type(pooler.level_poolers[0]).__name__ == "RoIPool"


@pytest.mark.parametrize("impl,expected", [("instseg", ROIAlign), ("detectron2", D2ROIAlign)])
def test_roi_heads_follow_config(impl, expected):
    cfg = get_project_cfg()
    cfg.merge_from_file("configs/MaskRCNN/Base-MaskRCNN-FPN.yaml")
    cfg.MODEL.ROI_ALIGN_IMPL = impl
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 7)}
    heads = build_roi_heads(cfg, shapes)
    for pooler in (heads.box_pooler, heads.mask_pooler):
        assert len(pooler.level_poolers) == 4
        assert all(type(p) is expected for p in pooler.level_poolers)
