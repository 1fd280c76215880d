"""MaskIoU head (Mask Scoring R-CNN, as used by CenterMask): predicts the IoU of each predicted mask
with its ground truth; at test time a detection's mask score is its score x its predicted mask IoU.

Parameter names follow centermask2 (``maskiou_fcn1..N``, ``maskiou_fc1``, ``maskiou_fc2``, ``maskiou``).
Shape legend: M RoIs, C feature channels, S the RoI resolution (14), K classes.
"""
from typing import List

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat
from detectron2.structures import BitMasks, Instances, PolygonMasks
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.modeling import crop_gt_masks, set_per_image

ROI_MASKIOU_HEAD_REGISTRY = Registry("ROI_MASKIOU_HEAD")
ROI_MASKIOU_HEAD_REGISTRY.__doc__ = "Heads that predict the IoU of RoI masks with their ground truth."


def build_maskiou_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    return ROI_MASKIOU_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASKIOU_HEAD.NAME)(cfg, input_shape)


def _mask_areas(gt_masks) -> Tensor:
    """Area in pixels of each full ground-truth mask."""
    if isinstance(gt_masks, BitMasks):
        return gt_masks.tensor.flatten(1).sum(dim=1).float()
    if isinstance(gt_masks, PolygonMasks):
        return gt_masks.area().float()
    raise TypeError(f"MaskIoU targets need BitMasks or PolygonMasks, got {type(gt_masks).__name__}")


@torch.no_grad()
def maskiou_targets(mask_logits: Tensor, instances: List[Instances]) -> Tensor:
    """IoU of each binarised predicted mask with its full ground-truth mask.

    Args:
        mask_logits: (M, R, R) logits of the ground-truth class, R = 28, for the foreground
            proposals of `instances` (fields proposal_boxes, gt_masks), in order.

    Returns:
        (M,) IoU in [0, 1]. The prediction only covers the proposal box, but the union counts the
        ground truth's pixels outside it too (its whole area, rescaled to the R x R grid).
    """
    instances = [x for x in instances if len(x)]
    if not instances:
        return mask_logits.new_zeros((0,))
    resolution = mask_logits.shape[-1]
    # counted in float32 whatever the logits' dtype: areas in pixels overflow float16
    gt = crop_gt_masks(instances, "proposal_boxes", resolution).to(mask_logits.device).float()
    boxes = cat([x.proposal_boxes.tensor for x in instances]).to(mask_logits.device).float()
    box_areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1.0)
    gt_areas = cat([_mask_areas(x.gt_masks) for x in instances]).to(mask_logits.device) * resolution**2 / box_areas
    pred = (mask_logits > 0).float()
    overlap = (pred * gt).flatten(1).sum(dim=1)
    union = pred.flatten(1).sum(dim=1) + torch.maximum(gt_areas, gt.flatten(1).sum(dim=1)) - overlap
    return overlap / union.clamp(min=1.0)


@ROI_MASKIOU_HEAD_REGISTRY.register()
class MaskIoUHead(nn.Module):
    @configurable
    def __init__(self, *, in_channels: int, resolution: int, num_classes: int, conv_dim: int, num_conv: int, loss_weight: float):
        """
        Args:
            in_channels: C + 1: RoI features concatenated with the max-pooled mask probabilities.
            resolution: S, the RoI feature size; the last conv halves it.
            num_classes: K, one IoU per class.
            conv_dim, num_conv: width and depth of the conv tower.
            loss_weight: weight of the L2 loss.
        """
        super().__init__()
        self.loss_weight = loss_weight
        self.convs = []
        channels = in_channels
        for k in range(num_conv):
            stride = 2 if k == num_conv - 1 else 1
            conv = Conv2d(channels, conv_dim, 3, stride=stride, padding=1, activation=nn.ReLU())
            self.add_module(f"maskiou_fcn{k + 1}", conv)
            self.convs.append(conv)
            channels = conv_dim
        self.maskiou_fc1 = nn.Linear(conv_dim * (resolution // 2) ** 2, 1024)
        self.maskiou_fc2 = nn.Linear(1024, 1024)
        self.maskiou = nn.Linear(1024, num_classes)
        for conv in self.convs:
            weight_init.c2_msra_fill(conv)
        # fan-in scaled: fan_out scaling would multiply the variance by fan_in / fan_out in fc1 (12544 /
        # 1024 with CONV_DIM 256, 6272 / 1024 with 128) and make the initial IoU predictions, hence the
        # first gradients, explode
        for fc in (self.maskiou_fc1, self.maskiou_fc2):
            weight_init.c2_xavier_fill(fc)
        nn.init.normal_(self.maskiou.weight, std=0.01)
        nn.init.constant_(self.maskiou.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "in_channels": input_shape.channels + 1,
            "resolution": input_shape.height,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "conv_dim": cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM,
            "num_conv": cfg.MODEL.ROI_MASKIOU_HEAD.NUM_CONV,
            "loss_weight": cfg.MODEL.MASKIOU_LOSS_WEIGHT,
        }

    def forward(self, features: Tensor, instances: List[Instances]):
        """As a detectron2 mask head: in training the loss dict, at test time `instances` rescored.

        Args:
            features: (M, C, S, S) the mask head's RoI features of `instances`, images in order.
            instances: in training the foreground proposals with the mask head's `gt_class_mask_logits`;
                at test time the detections with its `pred_masks`.
        """
        return self.losses(features, instances) if self.training else self.rescore(features, instances)

    def predict_iou(self, features: Tensor, mask_probs: Tensor) -> Tensor:
        """
        Args:
            features: (M, C, S, S) RoI features (the mask head's input).
            mask_probs: (M, 1, 2S, 2S) predicted mask probabilities of one class per RoI.

        Returns:
            (M, K) predicted IoU per class.
        """
        x = cat([features, F.max_pool2d(mask_probs, kernel_size=2, stride=2)], dim=1)
        for conv in self.convs:
            x = conv(x)
        x = F.relu(self.maskiou_fc1(x.flatten(1)))
        x = F.relu(self.maskiou_fc2(x))
        return self.maskiou(x)

    def losses(self, features: Tensor, instances: List[Instances]) -> dict:
        """L2 loss on the ground-truth class, over RoIs whose target IoU is positive.

        Args:
            features: (M, C, S, S); instances: the foreground proposals, whose `gt_class_mask_logits`
                (2S, 2S) the mask head set.
        """
        if instances:
            logits = cat([x.gt_class_mask_logits for x in instances])
            classes = cat([x.gt_classes for x in instances])
        else:
            logits = features.new_zeros((0, 2 * features.shape[-2], 2 * features.shape[-1]))
            classes = torch.zeros((0,), dtype=torch.long, device=features.device)
        index = torch.arange(len(classes), device=features.device)
        pred = self.predict_iou(features, logits.sigmoid().unsqueeze(1).detach())[index, classes]
        targets = maskiou_targets(logits.detach(), instances)
        keep = targets > 0
        if not keep.any():
            return {"loss_maskiou": pred.sum() * 0}
        loss = 0.5 * F.mse_loss(pred[keep], targets[keep], reduction="mean")
        return {"loss_maskiou": loss * self.loss_weight}

    def rescore(self, features: Tensor, instances: List[Instances]) -> List[Instances]:
        """Test time: set each detection's mask_scores to its score x its predicted mask IoU, as
        centermask2 does (unclamped); scores stays FCOS's box score. pred_masks must hold the
        2S x 2S mask probabilities of the predicted class."""
        if sum(len(x) for x in instances) == 0:
            for inst in instances:
                inst.mask_scores = inst.scores.clone()
            return instances
        classes = cat([x.pred_classes for x in instances])
        index = torch.arange(len(classes), device=features.device)
        ious = self.predict_iou(features, cat([x.pred_masks for x in instances]))[index, classes]
        set_per_image(instances, "mask_scores", cat([x.scores for x in instances]) * ious.to(instances[0].scores.dtype))
        return instances
