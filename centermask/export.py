"""The export module of CenterMask (FCOS + CenterROIHeads: SAG-Mask, MaskIoU rescoring)."""
from typing import Tuple

import torch
from detectron2.modeling.poolers import ROIPooler as D2ROIPooler
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
from torch import Tensor

from instseg.export.common import class_mask_probs, pad_rows, pool_levels, require_type
from instseg.export.fcos import check_fcos, fcos_detections
from instseg.export.rcnn import ExportBase
from instseg.layers.poolers import ROIPooler

from .maskiou_head import MaskIoUHead
from .roi_heads import CenterROIHeads
from .sag_mask_head import SpatialAttentionMaskHead


def ratio_levels(pooler, boxes: Tensor, height, width) -> Tensor:
    """assign_boxes_by_image_ratio of one image with a symbolic size: CenterMask's Eq. 2."""
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    ratios = (boxes.new_ones(()) * (height * width)) / areas
    levels = torch.ceil(pooler.max_level - torch.log2(ratios))
    return (levels.clamp(pooler.min_level, pooler.max_level) - pooler.min_level).to(torch.int64)


def mask_pooler_levels(pooler, boxes: Tensor, height, width):
    """The level of each box by the pooler's rule (None: detectron2's area rule, pool_levels'
    default)."""
    if isinstance(pooler, ROIPooler) and pooler.assign_criterion == "ratio" and len(pooler.level_poolers) > 1:
        return ratio_levels(pooler, boxes, height, width)
    return None


class ExportCenterMask(ExportBase):
    """forward(image) -> boxes, scores (FCOS's), classes, mask_probs (D, 1, 28, 28) and, with
    MaskIoU, mask_scores (D,) = score x predicted mask IoU."""

    def __init__(self, model):
        super().__init__(model)
        check_fcos("proposal_generator", model.proposal_generator)
        heads = model.roi_heads
        require_type("roi_heads", heads, (CenterROIHeads,))
        require_type("roi_heads.mask_pooler", heads.mask_pooler, (ROIPooler, D2ROIPooler))
        require_type("roi_heads.mask_head", heads.mask_head, (SpatialAttentionMaskHead, MaskRCNNConvUpsampleHead))
        if heads.maskiou_head is not None:
            require_type("roi_heads.maskiou_head", heads.maskiou_head, (MaskIoUHead,))
        self.output_names = ("boxes", "scores", "classes", "mask_probs") + (
            ("mask_scores",) if heads.maskiou_head is not None else ())

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        height, width = image.shape[-2:]
        features = self.backbone_features(image)
        fcos = self.model.proposal_generator
        boxes, scores, classes, _ = fcos_detections(fcos, [features[f] for f in fcos.in_features], height, width)
        heads = self.model.roi_heads
        # the mask branch on exactly TEST.DETECTIONS_PER_IMAGE rows (pad_rows), then the D real ones
        count = boxes.shape[0]
        rows = fcos.detections_per_image
        head_boxes = pad_rows(boxes, rows) if rows > 0 else boxes
        head_classes = pad_rows(classes, rows) if rows > 0 else classes
        levels = mask_pooler_levels(heads.mask_pooler, head_boxes, height, width)
        pooled = pool_levels(heads.mask_pooler, [features[f] for f in heads.mask_in_features], head_boxes, levels)
        mask_probs = class_mask_probs(heads.mask_head.layers(pooled), head_classes)
        if heads.maskiou_head is None:
            return boxes, scores, classes, mask_probs[:count]
        ious = heads.maskiou_head.predict_iou(pooled, mask_probs)
        ious = torch.gather(ious, 1, head_classes[:, None])[:, 0]
        return boxes, scores, classes, mask_probs[:count], scores * ious[:count]
