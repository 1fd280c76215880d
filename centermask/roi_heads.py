"""CenterMask's RoI heads: no box head (FCOS boxes are final), a SAG mask head fed by the adaptive
RoI pooler, and an optional MaskIoU head that rescores detections."""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import build_mask_head
from detectron2.structures import Instances
from torch import Tensor

from instseg.modeling import InstSegROIHeads, build_mask_pooler

from .maskiou_head import build_maskiou_head
from .sag_mask_head import SpatialAttentionMaskHead


@ROI_HEADS_REGISTRY.register()
class CenterROIHeads(InstSegROIHeads):
    """Training: FCOS proposals (plus ground truth) are matched and sampled as in Mask R-CNN and the
    foreground ones train the mask (and MaskIoU) head. Inference: masks for FCOS's detections."""

    @configurable
    def __init__(self, *, maskiou_head=None, **kwargs):
        """Arguments as StandardROIHeads, plus the MaskIoU head (None: off)."""
        super().__init__(**kwargs)
        self.maskiou_head = maskiou_head

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        return {"box_in_features": [], "box_pooler": None, "box_head": None, "box_predictor": None}

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        pooler_args, pooled = build_mask_pooler(cfg, input_shape, cfg.MODEL.ROI_MASK_HEAD.ASSIGN_CRITERION)
        mask_head = build_mask_head(cfg, pooled)
        if cfg.MODEL.MASKIOU_ON and not isinstance(mask_head, SpatialAttentionMaskHead):
            raise ValueError(
                "MODEL.MASKIOU_ON needs MODEL.ROI_MASK_HEAD.NAME SpatialAttentionMaskHead (it leaves the "
                f"logits the MaskIoU head learns from), got {cfg.MODEL.ROI_MASK_HEAD.NAME!r}"
            )
        return dict(
            pooler_args,
            mask_head=mask_head,
            maskiou_head=build_maskiou_head(cfg, pooled) if cfg.MODEL.MASKIOU_ON else None,
        )

    def forward(self, images, features: Dict[str, Tensor], proposals: List[Instances], targets=None):
        del images
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, targets)
            return proposals, self._forward_mask(features, proposals)
        return self.forward_with_given_boxes(features, proposals), {}

    def _forward_mask(self, features: Dict[str, Tensor], instances: List[Instances]):
        """The mask head, then the MaskIoU head on what it left in the instances: in training
        their losses, at test time the instances with pred_masks and mask_scores."""
        instances, _, pooled = self.mask_rois(features, instances)
        out = self.mask_head(pooled, instances)
        if self.maskiou_head is None:
            return out
        if self.training:
            return dict(out, **self.maskiou_head(pooled, instances))
        return self.maskiou_head(pooled, out)
