"""RefineMask's RoI heads: Mask R-CNN's box branch, the semantic head on P2 and the multi-stage
RefineMask head in place of the mask head."""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.structures import Instances
from torch import Tensor

from instseg.modeling import InstSegROIHeads

from .mask_head import RefineMaskHead
from .semantic_head import SemanticHead


@ROI_HEADS_REGISTRY.register()
class RefineROIHeads(InstSegROIHeads):
    @configurable
    def __init__(self, *, semantic_head: SemanticHead, **kwargs):
        """Arguments as StandardROIHeads (its mask head being a RefineMaskHead), plus the semantic
        head whose outputs the mask head refines with."""
        super().__init__(**kwargs)
        self.semantic_head = semantic_head

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        pooler_args, pooled = cls._init_mask_pooler(cfg, input_shape)
        semantic_args = SemanticHead.from_config(cfg, input_shape)
        mask_head = RefineMaskHead(
            cfg, pooled, semantic_channels=semantic_args["conv_dim"], semantic_stride=semantic_args["in_shape"].stride
        )
        # the semantic head after the mask head: the order sets their random initialisation at a SEED
        return dict(pooler_args, mask_head=mask_head, semantic_head=SemanticHead(**semantic_args))

    def forward(self, images, features: Dict[str, Tensor], proposals: List[Instances], targets=None):
        semantic_feat, semantic_logits = self.semantic_head(features[self.semantic_head.in_feature])
        # the semantic outputs travel to _forward_mask with the other feature maps
        features = dict(features, refinemask_semantic=semantic_feat, refinemask_semantic_logits=semantic_logits)
        instances, losses = super().forward(images, features, proposals, targets)
        if self.training:
            losses["loss_semantic"] = self.semantic_head.loss(semantic_logits, targets, tuple(images.tensor.shape[-2:]))
        return instances, losses

    def _forward_mask(self, features: Dict[str, Tensor], instances: List[Instances]):
        instances, boxes, pooled = self._mask_rois(features, instances)
        labels = cat([x.gt_classes if self.training else x.pred_classes for x in instances])
        stage_logits = self.mask_head(
            pooled, features["refinemask_semantic"], features["refinemask_semantic_logits"], boxes, labels
        )
        if self.training:
            return {"loss_mask": self.mask_head.losses(stage_logits, instances)}
        probs = self.mask_head.inference(stage_logits)
        for inst, masks in zip(instances, probs.split([len(x) for x in instances])):
            inst.pred_masks = masks
        return instances
