"""The export module of RefineMask (Mask R-CNN's RPN and box branch, the semantic head on P2 and the
multi-stage RefineMask head, both variants)."""
from typing import Tuple

from detectron2.modeling.poolers import ROIPooler as D2ROIPooler
from detectron2.structures import Boxes
from torch import Tensor

from refinemask.mask_head import MASK_HEADS
from refinemask.roi_heads import RefineROIHeads
from refinemask.semantic_head import SemanticHead

from instseg.layers.poolers import ROIPooler
from instseg.export.common import pad_rows, pool_levels, require_type, rpn_proposals
from instseg.export.rcnn import ExportBase, ExportRCNN, check_box_head, check_rpn


class ExportRefineMask(ExportBase):
    """forward(image) -> boxes, scores, classes, mask_probs (D, 1, R, R), R the last stage's size
    (112): the stages merged as RefineMaskHead.inference does."""

    output_names = ("boxes", "scores", "classes", "mask_probs")

    def __init__(self, model):
        super().__init__(model)
        check_rpn(model)
        heads = model.roi_heads
        require_type("roi_heads", heads, (RefineROIHeads,))
        check_box_head(heads)
        require_type("roi_heads.mask_pooler", heads.mask_pooler, (ROIPooler, D2ROIPooler))
        require_type("roi_heads.mask_head", heads.mask_head, tuple(MASK_HEADS.values()))
        require_type("roi_heads.semantic_head", heads.semantic_head, (SemanticHead,))

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[-2:]
        features = self.backbone_features(image)
        rpn = self.model.proposal_generator
        proposals, _ = rpn_proposals(rpn, [features[f] for f in rpn.in_features], height, width)
        heads = self.model.roi_heads
        boxes, scores, classes = ExportRCNN.detect(heads, features, proposals, height, width)
        # the mask head splits its RoIs into chunks in Python: it runs on exactly
        # TEST.DETECTIONS_PER_IMAGE rows (pad_rows), of which the first D are the detections
        count = boxes.shape[0]
        rows = heads.box_predictor.test_topk_per_image
        head_boxes, head_classes = (pad_rows(boxes, rows), pad_rows(classes, rows)) if rows > 0 else (boxes, classes)
        semantic = heads.semantic_head(features[heads.semantic_head.in_feature])
        pooled = pool_levels(heads.mask_pooler, [features[f] for f in heads.mask_in_features], head_boxes)
        stage_logits = heads.mask_head(pooled, *semantic.mask_head_inputs(), [Boxes(head_boxes)], head_classes)
        return boxes, scores, classes, heads.mask_head.inference(stage_logits)[:count]
