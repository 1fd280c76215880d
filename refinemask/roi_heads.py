"""RefineMask's RoI heads: Mask R-CNN's box branch, the semantic head on P2 and the multi-stage
RefineMask head (MODEL.REFINEMASK.HEAD) in place of the mask head."""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.structures import Instances
from torch import Tensor

from instseg.modeling import InstSegROIHeads, build_mask_pooler, set_per_image

from .mask_head import MASK_HEADS
from .semantic_head import SemanticHead, SemanticOutputs


@ROI_HEADS_REGISTRY.register()
class RefineROIHeads(InstSegROIHeads):
    @configurable
    def __init__(self, *, semantic_head: SemanticHead, **kwargs):
        """Arguments as StandardROIHeads (its mask head being one of MASK_HEADS), plus the semantic
        head whose outputs the mask head refines with."""
        super().__init__(**kwargs)
        if self.keypoint_on:
            raise ValueError("RefineROIHeads has no keypoint branch: MODEL.KEYPOINT_ON must be False")
        self.semantic_head = semantic_head

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        head = cfg.MODEL.REFINEMASK.HEAD
        if head not in MASK_HEADS:
            raise ValueError(f"MODEL.REFINEMASK.HEAD must be one of {sorted(MASK_HEADS)}, got {head!r}")
        head_class = MASK_HEADS[head]
        pooler_args, pooled = build_mask_pooler(cfg, input_shape)
        semantic_args = SemanticHead.from_config(cfg, input_shape, predict_foreground=head_class.uses_foreground)
        mask_head = head_class(
            cfg, pooled, semantic_channels=semantic_args["conv_dim"], semantic_stride=semantic_args["in_shape"].stride
        )
        # the semantic head after the mask head: the order sets their random initialisation at a SEED
        return dict(pooler_args, mask_head=mask_head, semantic_head=SemanticHead(**semantic_args))

    def forward(self, images, features: Dict[str, Tensor], proposals: List[Instances], targets=None):
        if not self.training:
            return self.forward_with_given_boxes(features, self._forward_box(features, proposals)), {}
        semantic = self.semantic_head(features[self.semantic_head.in_feature])
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses = self._forward_box(features, proposals)
        losses.update(self._forward_mask(features, proposals, semantic))
        if semantic.foreground_logits is not None:
            losses["loss_semantic"] = self.semantic_head.loss(
                semantic.foreground_logits, targets, tuple(images.tensor.shape[-2:])
            )
        return proposals, losses

    def forward_with_given_boxes(self, features: Dict[str, Tensor], instances: List[Instances]) -> List[Instances]:
        """Test time: the masks of the given detections (the semantic head runs here, as only the
        mask head needs it)."""
        assert not self.training
        semantic = self.semantic_head(features[self.semantic_head.in_feature])
        return self._forward_mask(features, instances, semantic)

    def _forward_mask(self, features: Dict[str, Tensor], instances: List[Instances], semantic: SemanticOutputs):
        instances, boxes, pooled = self.mask_rois(features, instances)
        labels = cat([x.gt_classes if self.training else x.pred_classes for x in instances])
        stage_logits = self.mask_head(pooled, *semantic.mask_head_inputs(), boxes, labels)
        if self.training:
            return {"loss_mask": self.mask_head.losses(stage_logits, instances)}
        set_per_image(instances, "pred_masks", self.mask_head.inference(stage_logits))
        return instances
