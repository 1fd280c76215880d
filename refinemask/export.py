"""The export module of RefineMask (Mask R-CNN's RPN and box branch, the semantic head on P2 and the
multi-stage RefineMask head, both variants)."""
from detectron2.modeling.poolers import ROIPooler as D2ROIPooler
from detectron2.structures import Boxes
from torch import Tensor

from instseg.export.common import require_type
from instseg.export.rcnn import ExportRCNN, check_box_head, check_rpn
from instseg.layers.poolers import ROIPooler

from .mask_head import MASK_HEADS
from .roi_heads import RefineROIHeads
from .semantic_head import SemanticHead


class ExportRefineMask(ExportRCNN):
    """forward(image) -> boxes, scores, classes, mask_probs (D, 1, R, R), R the last stage's size
    (112): the stages merged as RefineMaskHead.inference does."""

    @staticmethod
    def check(model) -> None:
        check_rpn(model)
        heads = model.roi_heads
        require_type("roi_heads", heads, (RefineROIHeads,))
        check_box_head(heads)
        require_type("roi_heads.mask_pooler", heads.mask_pooler, (ROIPooler, D2ROIPooler))
        require_type("roi_heads.mask_head", heads.mask_head, tuple(MASK_HEADS.values()))
        require_type("roi_heads.semantic_head", heads.semantic_head, (SemanticHead,))

    def mask_probs(self, features, pooled: Tensor, boxes: Tensor, classes: Tensor) -> Tensor:
        heads = self.model.roi_heads
        semantic = heads.semantic_head(features[heads.semantic_head.in_feature])
        stage_logits = heads.mask_head(pooled, *semantic.mask_head_inputs(), [Boxes(boxes)], classes)
        return heads.mask_head.inference(stage_logits)
