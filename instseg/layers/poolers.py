"""detectron2's multi-level ROIPooler with a choice of the rule that assigns boxes to FPN levels, and
the swap of its RoIAlign levels for this project's op."""
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.layers import ROIAlign as D2ROIAlign
from detectron2.layers import nonzero_tuple
from detectron2.modeling import poolers as d2_poolers
from detectron2.structures import Boxes
from torch import Tensor, nn

from .roi_align import ROIAlign
from .rois import rois_from_boxes

ASSIGN_CRITERIA = ("area", "ratio")


def use_instseg_roi_align(pooler: d2_poolers.ROIPooler) -> d2_poolers.ROIPooler:
    """Swap every detectron2 ROIAlign level of `pooler` for ours with the same parameters, in place.

    ROIPooler keeps its level assignment and batching; only the per-level op changes. Levels of
    other types (ROIPool, ROIAlignRotated) are left alone. Returns `pooler`.
    """
    pooler.level_poolers = nn.ModuleList(
        ROIAlign(p.output_size, p.spatial_scale, p.sampling_ratio, p.aligned)
        if isinstance(p, D2ROIAlign)
        else p
        for p in pooler.level_poolers
    )
    return pooler


def assign_boxes_by_image_ratio(
    box_lists: Sequence[Boxes], image_sizes: Sequence[Tuple[int, int]], min_level: int, max_level: int
) -> Tensor:
    """CenterMask's adaptive RoI assignment (paper Eq. 2): level k = ceil(k_max - log2(A_img / A_box)),
    clamped to [k_min, k_max], where A_img is the area of the (resized, unpadded) input image. Unlike
    Mask R-CNN's rule (Eq. 1, a canonical 224-pixel box on P4), a box's level depends on its size
    relative to the image, which suits the few large levels (P3-P5) of one-stage detectors.

    Returns:
        (M,) level index of each box counted from min_level, in box-list order.
    """
    ratios = []
    for boxes, (height, width) in zip(box_lists, image_sizes):
        ratios.append(float(height * width) / boxes.area().clamp(min=1e-6))
    levels = torch.ceil(max_level - torch.log2(torch.cat(ratios)))
    return (levels.clamp(min_level, max_level) - min_level).to(torch.int64)


class ROIPooler(d2_poolers.ROIPooler):
    """detectron2's ROIPooler with a selectable level-assignment rule: "area" (Mask R-CNN, FPN paper
    Eq. 1) or "ratio" (CenterMask Eq. 2, needs the image sizes). Its levels run detectron2's RoIAlign
    until use_instseg_roi_align swaps in this project's op (instseg.modeling.with_roi_align_impl
    does so where MODEL.ROI_ALIGN_IMPL says)."""

    def __init__(self, *args, assign_criterion: str = "area", **kwargs):
        """Arguments as detectron2's ROIPooler, plus:

        Args:
            assign_criterion: "area" or "ratio".
        """
        super().__init__(*args, **kwargs)
        if assign_criterion not in ASSIGN_CRITERIA:
            raise ValueError(
                f"assign criterion (MODEL.ROI_MASK_HEAD.ASSIGN_CRITERION) must be one of {ASSIGN_CRITERIA}, got {assign_criterion!r}"
            )
        self.assign_criterion = assign_criterion

    def forward(
        self, x: List[Tensor], box_lists: List[Boxes], image_sizes: Optional[List[Tuple[int, int]]] = None
    ) -> Tensor:
        """
        Args:
            x: per level, (N, C, Hl, Wl) features.
            box_lists: per image, the M_i boxes to pool.
            image_sizes: per image, (height, width); required by the "ratio" rule.

        Returns:
            (M, C, output_size, output_size), boxes in box-list order.
        """
        if self.assign_criterion == "area" or len(self.level_poolers) == 1:
            return super().forward(x, box_lists)
        if image_sizes is None:
            raise ValueError('the "ratio" level assignment needs image_sizes')
        rois = rois_from_boxes(box_lists)
        levels = assign_boxes_by_image_ratio(box_lists, image_sizes, self.min_level, self.max_level)
        output = x[0].new_zeros((len(rois), x[0].shape[1]) + tuple(self.output_size))
        for level, pooler in enumerate(self.level_poolers):
            (inds,) = nonzero_tuple(levels == level)
            output[inds] = pooler(x[level], rois[inds]).to(output.dtype)
        return output
