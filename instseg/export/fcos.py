"""FCOS's test-time detections (instseg.modeling.fcos.FCOS.predict + detect) on tensors, for one
image: the one-stage half of CenterMask's and BlendMask's export modules."""
from typing import List, Tuple

import torch
from torch import Tensor

from ..modeling.fcos import FCOS
from ..modeling.fcos.targets import compute_locations
from .common import at_most, batched_nms, clip_boxes, require_type


def check_fcos(path: str, fcos) -> None:
    require_type(path, fcos, (FCOS,))


def fcos_detections(fcos: FCOS, features: List[Tensor], height, width, keep_box_tower: bool = False):
    """FCOS.detect at test time for one image: (D, 4) boxes, (D,) scores, (D,) int64 classes,
    (D,) flat location indices, by decreasing score; with keep_box_tower also the box tower's
    per-level outputs (for BlendMask's top layer).

    Per level the locations x classes over the score threshold, the pre_nms_topk best of them by
    class score x centerness (all of them when fewer: they are sorted here, which NMS ignores),
    class-aware NMS, the post_nms_topk best and every detection tied with the last of them, at most
    detections_per_image."""
    logits, box_reg, ctrness, box_tower = fcos.fcos_head(features)
    pre_nms_topk = fcos.pre_nms_topk[False]
    threshold = fcos.score_thresh[False]
    all_loc, all_cls, all_boxes, all_scores = [], [], [], []
    start = 0
    for level, (logit, reg, ctr, stride) in enumerate(zip(logits, box_reg, ctrness, fcos.strides)):
        h, w = logit.shape[-2:]
        num_classes = logit.shape[1]
        cls_scores = logit[0].permute(1, 2, 0).reshape(-1, num_classes).sigmoid()
        ranking = cls_scores * ctr[0].reshape(-1).sigmoid()[:, None]
        thresholded = ranking if fcos.thresh_with_ctr else cls_scores
        flat = torch.nonzero((thresholded > threshold).reshape(-1)).reshape(-1)
        candidates = ranking.reshape(-1)[flat]
        top_scores, top = candidates.topk(at_most(candidates.shape[0], pre_nms_topk))
        flat = flat[top]
        loc, cls = flat // num_classes, flat % num_classes
        distances = reg[0].permute(1, 2, 0).reshape(-1, 4)[loc] * float(stride)
        xy = compute_locations(h, w, stride, logit.device)[loc]
        all_boxes.append(torch.cat([xy - distances[:, :2], xy + distances[:, 2:]], dim=1))
        all_scores.append(torch.sqrt(top_scores))
        all_loc.append(loc + start)
        all_cls.append(cls)
        start = start + h * w
    boxes, scores, classes, locations = (torch.cat(t) for t in (all_boxes, all_scores, all_cls, all_loc))
    if fcos.clip_before_nms:
        boxes = clip_boxes(boxes, height, width)
        nonempty = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).reshape(-1)
        boxes, scores, classes, locations = boxes[nonempty], scores[nonempty], classes[nonempty], locations[nonempty]
    if fcos.nms_thresh > 0:
        keep = batched_nms(boxes, scores, classes, fcos.nms_thresh)
    else:
        keep = scores.argsort(descending=True)
    k = fcos.post_nms_topk[False]
    if k > 0:  # the k best and every later one tied with the k-th (FCOS's _top_k_with_ties)
        sorted_scores = scores[keep]
        kth = torch.cat([sorted_scores, sorted_scores.new_full((k,), -float("inf"))])[k - 1]
        keep = keep[torch.nonzero(sorted_scores >= kth).reshape(-1)]
    if fcos.detections_per_image > 0:
        keep = keep[: fcos.detections_per_image]
    out = (boxes[keep], scores[keep], classes[keep], locations[keep])
    return out + (box_tower,) if keep_box_tower else out
