"""The export module of detectron2's GeneralizedRCNN with an RPN and StandardROIHeads (Mask R-CNN),
this project's InstSegROIHeads included."""
from typing import Tuple

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from torch import Tensor, nn

from ..modeling.roi_heads import InstSegROIHeads
from .common import (
    class_mask_probs, fast_rcnn_detections, normalize_and_pad, pad_rows, pool_levels, require_type, rpn_proposals,
    unsupported,
)


def check_rpn(model) -> None:
    require_type("proposal_generator", model.proposal_generator, (RPN,))
    require_type("proposal_generator.anchor_generator", model.proposal_generator.anchor_generator,
                 (DefaultAnchorGenerator,))


def check_box_head(roi_heads, path="roi_heads") -> None:
    require_type(f"{path}.box_head", roi_heads.box_head, (FastRCNNConvFCHead,))
    require_type(f"{path}.box_predictor", roi_heads.box_predictor, (FastRCNNOutputLayers,))
    if getattr(roi_heads, "keypoint_on", False):
        raise unsupported(f"{path}.keypoint_head", roi_heads.keypoint_head, "keypoint heads have no export path")


class ExportBase(nn.Module):
    """The input half every export module shares: the (3, H, W) float image (resized, in
    cfg.INPUT.FORMAT channel order, 0-255 as GeneralizedRCNN's "image" input) -> the normalized,
    padded (1, 3, H', W') batch and its backbone features."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def backbone_features(self, image: Tensor):
        x = normalize_and_pad(image, self.model.pixel_mean, self.model.pixel_std,
                              self.model.backbone.size_divisibility)
        return self.model.backbone(x)


class ExportRCNN(ExportBase):
    """forward(image (3, H, W) float) -> boxes (D, 4) in the image's coordinates, scores (D,),
    classes (D,) int64, mask_probs (D, 1, M, M) (M = 28 for Mask R-CNN), by decreasing score: the
    model's detections before detector_postprocess."""

    output_names = ("boxes", "scores", "classes", "mask_probs")

    def __init__(self, model: GeneralizedRCNN):
        super().__init__(model)
        self.check(model)

    @staticmethod
    def check(model) -> None:
        """UnsupportedExportError unless this module reproduces `model` (subclasses: their heads)."""
        check_rpn(model)
        roi_heads = model.roi_heads
        require_type("roi_heads", roi_heads, (StandardROIHeads, InstSegROIHeads))
        check_box_head(roi_heads)
        if not roi_heads.mask_on:
            raise unsupported("roi_heads", roi_heads, "MODEL.MASK_ON is False: the export module returns masks")
        require_type("roi_heads.mask_head", roi_heads.mask_head, (MaskRCNNConvUpsampleHead,))

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[-2:]
        features = self.backbone_features(image)
        rpn = self.model.proposal_generator
        proposals, _ = rpn_proposals(rpn, [features[f] for f in rpn.in_features], height, width)
        heads = self.model.roi_heads
        boxes, scores, classes = self.detect(heads, features, proposals, height, width)
        # the mask head on exactly TEST.DETECTIONS_PER_IMAGE rows (pad_rows), then the D real ones:
        # heads that check or split their rows in Python then see a static count
        rows = heads.box_predictor.test_topk_per_image
        head_boxes, head_classes = (pad_rows(boxes, rows), pad_rows(classes, rows)) if rows > 0 else (boxes, classes)
        pooled = pool_levels(heads.mask_pooler, [features[f] for f in heads.mask_in_features], head_boxes)
        return boxes, scores, classes, self.mask_probs(features, pooled, head_boxes, head_classes)[: boxes.shape[0]]

    def mask_probs(self, features, pooled: Tensor, boxes: Tensor, classes: Tensor) -> Tensor:
        """(R, 1, M, M) mask probabilities of the R (padded) detections' classes, from their pooled
        (R, C, S, S) features."""
        return class_mask_probs(self.model.roi_heads.mask_head.layers(pooled), classes)

    @staticmethod
    def detect(heads, features, proposals, height, width):
        pooled = pool_levels(heads.box_pooler, [features[f] for f in heads.box_in_features], proposals)
        predictions = heads.box_predictor(heads.box_head(pooled))
        return fast_rcnn_detections(heads.box_predictor, predictions, proposals, height, width)
