"""RefineMask's RoI heads: Mask R-CNN's box branch, the semantic head on P2 and the multi-stage
RefineMask head (MODEL.REFINEMASK.HEAD) in place of the mask head."""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.structures import Instances
from torch import Tensor

from instseg.modeling import InstSegROIHeads

from .mask_head import MASK_HEADS
from .semantic_head import SemanticHead

# the semantic head's outputs travel to _forward_mask among the feature maps under these keys: its
# features and, where it predicts them, its foreground logits (the mask head's inputs in that order)
SEMANTIC_KEYS = ("refinemask_semantic", "refinemask_semantic_logits")


@ROI_HEADS_REGISTRY.register()
class RefineROIHeads(InstSegROIHeads):
    @configurable
    def __init__(self, *, semantic_head: SemanticHead, **kwargs):
        """Arguments as StandardROIHeads (its mask head being one of MASK_HEADS), plus the semantic
        head whose outputs the mask head refines with."""
        super().__init__(**kwargs)
        self.semantic_head = semantic_head

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        head = cfg.MODEL.REFINEMASK.HEAD
        if head not in MASK_HEADS:
            raise ValueError(f"MODEL.REFINEMASK.HEAD must be one of {sorted(MASK_HEADS)}, got {head!r}")
        head_class = MASK_HEADS[head]
        pooler_args, pooled = cls._init_mask_pooler(cfg, input_shape)
        semantic_args = SemanticHead.from_config(cfg, input_shape, predict_foreground=head_class.uses_foreground)
        mask_head = head_class(
            cfg, pooled, semantic_channels=semantic_args["conv_dim"], semantic_stride=semantic_args["in_shape"].stride
        )
        # the semantic head after the mask head: the order sets their random initialisation at a SEED
        return dict(pooler_args, mask_head=mask_head, semantic_head=SemanticHead(**semantic_args))

    def forward(self, images, features: Dict[str, Tensor], proposals: List[Instances], targets=None):
        semantic_feat, semantic_logits = self.semantic_head(features[self.semantic_head.in_feature])
        semantic = dict(zip(SEMANTIC_KEYS, (semantic_feat, semantic_logits)))
        features = dict(features, **{k: v for k, v in semantic.items() if v is not None})
        instances, losses = super().forward(images, features, proposals, targets)
        if self.training and semantic_logits is not None:
            losses["loss_semantic"] = self.semantic_head.loss(semantic_logits, targets, tuple(images.tensor.shape[-2:]))
        return instances, losses

    def _forward_mask(self, features: Dict[str, Tensor], instances: List[Instances]):
        instances, boxes, pooled = self._mask_rois(features, instances)
        labels = cat([x.gt_classes if self.training else x.pred_classes for x in instances])
        semantic = [features[k] for k in SEMANTIC_KEYS if k in features]
        stage_logits = self.mask_head(pooled, *semantic, boxes, labels)
        if self.training:
            return {"loss_mask": self.mask_head.losses(stage_logits, instances)}
        probs = self.mask_head.inference(stage_logits)
        for inst, masks in zip(instances, probs.split([len(x) for x in instances])):
            inst.pred_masks = masks
        return instances
