"""CenterMask's RoI heads: no box head (FCOS boxes are final), a SAG mask head fed by the adaptive
RoI pooler, and an optional MaskIoU head that rescores detections."""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import build_mask_head
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from detectron2.structures import Instances
from torch import Tensor

from instseg.modeling import InstSegROIHeads

from .maskiou_head import build_maskiou_head


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
        pooler_args, pooled = cls._init_mask_pooler(cfg, input_shape, cfg.MODEL.ROI_MASK_HEAD.ASSIGN_CRITERION)
        return dict(
            pooler_args,
            mask_head=build_mask_head(cfg, pooled),
            maskiou_head=build_maskiou_head(cfg, pooled) if cfg.MODEL.MASKIOU_ON else None,
        )

    def forward(self, images, features: Dict[str, Tensor], proposals: List[Instances], targets=None):
        del images
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, targets)
            return proposals, self._forward_mask(features, proposals)
        return self.forward_with_given_boxes(features, proposals), {}

    def _forward_mask(self, features: Dict[str, Tensor], instances: List[Instances]):
        instances, _, pooled = self._mask_rois(features, instances)
        mask_logits = self.mask_head.layers(pooled)
        if self.training:
            losses = {
                "loss_mask": mask_rcnn_loss(mask_logits, instances, self.mask_head.vis_period)
                * self.mask_head.loss_weight
            }
            if self.maskiou_head is not None:
                losses.update(self.maskiou_head.losses(pooled, mask_logits, instances))
            return losses
        mask_rcnn_inference(mask_logits, instances)
        if self.maskiou_head is not None:
            self.maskiou_head.rescore(pooled, instances)
        return instances
