"""Tensor-only inference steps shared by the export modules of every method (batch of one image).

Each step reproduces detectron2's inference code on plain tensors, without data-dependent Python
control flow (no ``.item()``, no branching on values), so that torch.export traces it with a dynamic
image height and width and with data-dependent detection counts (nonzero, NMS).
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from .nms import nms


class UnsupportedExportError(ValueError):
    """A model (or one of its modules) that has no export path. The message names the module (its
    path in the model and its class) and why."""


def unsupported(path: str, module, why: str) -> UnsupportedExportError:
    cls = type(module)
    return UnsupportedExportError(f"cannot export {path} ({cls.__module__}.{cls.__qualname__}): {why}")


def require_type(path: str, module, types: Tuple[type, ...], why: str = "") -> None:
    """Raise UnsupportedExportError unless `module` is exactly one of `types` (a subclass may change
    what forward computes, which the export module would silently not reproduce)."""
    if type(module) not in types:
        names = ", ".join(t.__qualname__ for t in types)
        raise unsupported(path, module, why or f"the export path supports only {names}")


def normalize_and_pad(image: Tensor, pixel_mean: Tensor, pixel_std: Tensor, size_divisibility: int) -> Tensor:
    """(3, H, W) float image, as the model's "image" input -> (1, 3, H', W') normalized batch, padded
    with 0 at the bottom and right to multiples of `size_divisibility` (ImageList.from_tensors)."""
    x = ((image - pixel_mean) / pixel_std)[None]
    if size_divisibility > 1:
        height, width = image.shape[-2:]
        d = size_divisibility
        x = nn.functional.pad(x, (0, (width + d - 1) // d * d - width, 0, (height + d - 1) // d * d - height))
    return x


def clip_boxes(boxes: Tensor, height, width) -> Tensor:
    """Boxes.clip: (..., 4) x1, y1, x2, y2 clamped to [0, width] and [0, height] (ints or SymInts)."""
    one = boxes.new_ones(())
    limit = torch.stack([one * width, one * height, one * width, one * height])
    return torch.minimum(boxes.clamp(min=0), limit)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's batched_nms by the coordinate offset trick (one NMS, instseg_export::nms; ONNX
    NonMaxSuppression):
    the indices kept, by decreasing score."""
    boxes = boxes.float()
    # the largest coordinate (a 0 joined: no detections are an empty max), >= 0 for every caller's
    # boxes, so the offsets are torchvision's
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores.float(), float(iou_threshold))


def at_most(size, k: int):
    """min(size, k) of a tensor's size: a SymInt under torch.export, a 0-dim tensor under
    torch.jit.trace (which records sizes as tensors, so that the trace stays dynamic)."""
    if isinstance(size, Tensor):
        return size.clamp(max=k)
    return torch.sym_min(size, k)


def select(t: Tensor, mask: Tensor) -> Tensor:
    """t[mask] for a (N,) mask, as an index_select of its nonzero entries."""
    return t.index_select(0, torch.nonzero(mask).reshape(-1))


def rpn_proposals(rpn, features: List[Tensor], height, width) -> Tuple[Tensor, Tensor]:
    """detectron2's RPN at test time (forward + find_top_rpn_proposals) for one image: the
    (P, 4) proposal boxes and their (P,) objectness logits, by decreasing logit."""
    anchors = rpn.anchor_generator(features)
    logits, deltas = rpn.rpn_head(features)
    box_dim = rpn.anchor_generator.box_dim
    pre_nms_topk = rpn.pre_nms_topk[False]
    post_nms_topk = rpn.post_nms_topk[False]
    all_scores, all_boxes, all_levels = [], [], []
    for level, (anchors_i, logits_i, deltas_i) in enumerate(zip(anchors, logits, deltas)):
        logits_i = logits_i.permute(0, 2, 3, 1).reshape(-1)
        deltas_i = deltas_i.view(1, -1, box_dim, deltas_i.shape[-2], deltas_i.shape[-1]).permute(0, 3, 4, 1, 2)
        proposals_i = rpn.box2box_transform.apply_deltas(deltas_i.reshape(-1, box_dim), anchors_i.tensor)
        k = at_most(logits_i.shape[0], pre_nms_topk)
        scores_i, idx = logits_i.topk(k)
        all_scores.append(scores_i)
        all_boxes.append(proposals_i[idx])
        all_levels.append(torch.full_like(idx, level))
    scores, boxes, levels = torch.cat(all_scores), torch.cat(all_boxes), torch.cat(all_levels)
    # detectron2 drops non-finite boxes and scores at test time (training raises)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes = clip_boxes(boxes, height, width)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = torch.nonzero(valid & (widths > rpn.min_box_size) & (heights > rpn.min_box_size)).reshape(-1)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    keep = batched_nms(boxes, scores, levels, rpn.nms_thresh)[:post_nms_topk]
    return boxes[keep], scores[keep]


def pool_levels(pooler, features: Sequence[Tensor], boxes: Tensor, levels: Tensor = None) -> Tensor:
    """A multi-level ROIPooler on one image's (R, 4) boxes: every level pools every box, and each
    box takes the result of its own level (`levels`, default detectron2's area rule), so the graph
    has no per-level gather of data-dependent size; each box's result equals the pooler's own."""
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    if len(pooler.level_poolers) == 1:
        return pooler.level_poolers[0](features[0], rois)
    if levels is None:  # detectron2's assign_boxes_to_levels (FPN paper Eq. 1) on a tensor
        sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(pooler.canonical_level + torch.log2(sizes / pooler.canonical_box_size + 1e-8))
        levels = (levels.clamp(min=pooler.min_level, max=pooler.max_level) - pooler.min_level).to(torch.int64)
    output = None
    for level, (x, level_pooler) in enumerate(zip(features, pooler.level_poolers)):
        pooled = level_pooler(x, rois)
        if output is None:
            output = torch.zeros_like(pooled)
        output = torch.where((levels == level)[:, None, None, None], pooled.to(output.dtype), output)
    return output


def fast_rcnn_detections(box_predictor, predictions, proposals: Tensor, height, width) -> Tuple[Tensor, Tensor, Tensor]:
    """FastRCNNOutputLayers.inference (fast_rcnn_inference_single_image) for one image:
    (D, 4) boxes, (D,) scores, (D,) int64 classes, by decreasing score."""
    scores_logits, proposal_deltas = predictions
    boxes = box_predictor.box2box_transform.apply_deltas(proposal_deltas, proposals)
    if getattr(box_predictor, "use_sigmoid_ce", False):
        scores = scores_logits.sigmoid()
    else:
        scores = nn.functional.softmax(scores_logits, dim=-1)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    scores = scores[:, :-1]
    num_classes = scores.shape[1]
    num_reg = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, num_reg, 4), height, width)
    flat = torch.nonzero(((scores > box_predictor.test_score_thresh) & valid[:, None]).reshape(-1)).reshape(-1)
    rows, classes = flat // num_classes, flat % num_classes
    boxes = boxes[rows, classes if num_reg > 1 else torch.zeros_like(classes)]
    scores = scores.reshape(-1)[flat]
    keep = batched_nms(boxes, scores, classes, box_predictor.test_nms_thresh)
    if box_predictor.test_topk_per_image >= 0:
        keep = keep[: box_predictor.test_topk_per_image]
    return boxes[keep], scores[keep], classes[keep]


def class_mask_probs(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """mask_rcnn_inference: (D, K or 1, M, M) logits -> (D, 1, M, M) probabilities of each
    detection's class."""
    if mask_logits.shape[1] == 1:
        return mask_logits.sigmoid()
    index = classes.view(-1, 1, 1, 1).expand(-1, 1, mask_logits.shape[2], mask_logits.shape[3])
    return torch.gather(mask_logits, 1, index).sigmoid()


def pad_rows(t: Tensor, rows: int) -> Tensor:
    """`t` (D, ...), D <= rows, padded with zeros to exactly `rows` rows: heads then run on a
    tensor of a static size (torch.export cannot decide `numel() == 0` on a data-dependent one, as
    detectron2's Conv2d asks), and their first D rows are those of the detections."""
    return torch.cat([t, t.new_zeros((rows,) + tuple(t.shape[1:]))])[:rows]
