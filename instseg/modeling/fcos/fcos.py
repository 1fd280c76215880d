"""FCOS (Tian et al., ICCV 2019), the anchor-free one-stage detector under BlendMask and CenterMask.

Registered as a detectron2 proposal generator named "FCOS" (MODEL.PROPOSAL_GENERATOR.NAME), which both
methods build through detectron2's build_proposal_generator. Through ``forward`` it serves
GeneralizedRCNN (CenterMask: its detections, turned into proposals by
instseg.modeling.proposals.detections_as_proposals, are the RoI heads' proposals); BlendMask calls the
steps (``predict``, ``losses``, ``detect``) itself. FCOS holds no state of either method: its positives
and detections say where they lie (flat location index, FPN level; FCOSPredictions.positions gives the
level's (y, x)) and, when asked, the predictions keep the box tower's per-level output, so that a
caller evaluates its own per-location layers there (BlendMask's top layer: its attentions).

Shape legend: N images, L locations of an image over all levels, K classes, C head channels,
P positive locations in the batch.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor, nn
from torch.nn import functional as F

from ..backbone import feature_shapes
from ..proposals import detections_as_proposals
from .head import FCOSHead
from .targets import assign_locations, centerness_targets, compute_locations, size_ranges


@dataclass
class FCOSPredictions:
    """Head outputs of a batch, flattened over levels in the order (level, y, x): a location's flat
    index ("loc_inds", "location_inds") indexes the L dimension."""

    logits: Tensor  # (N, L, K)
    box_reg: Tensor  # (N, L, 4) distances (l, t, r, b) in strides
    ctrness: Tensor  # (N, L)
    locations: Tensor  # (L, 2) image coordinates (x, y)
    strides: Tensor  # (L,)
    levels: Tensor  # (L,) level index
    ranges: Tensor  # (L, 2) size range of the location's level
    level_sizes: Optional[List[Tuple[int, int]]] = None  # per level (Hl, Wl), as predict sets it
    # per level (N, C, Hl, Wl) the box tower's output (what bbox_pred and ctrness read), with
    # predict(keep_box_tower=True): for a caller's own per-location layers
    box_tower: Optional[List[Tensor]] = None

    def positions(self, loc_inds: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Where flat location indices lie in the per-level feature maps: (level, y, x), each like
        ``loc_inds``; ``per_level[level][n, :, y, x]`` is the location's entry of a per-level output."""
        if self.level_sizes is None:
            raise ValueError("FCOSPredictions.positions needs level_sizes (FCOS.predict sets them)")
        sizes = torch.tensor(self.level_sizes, dtype=torch.int64, device=loc_inds.device).reshape(-1, 2)
        areas = sizes[:, 0] * sizes[:, 1]
        starts = torch.cumsum(areas, 0) - areas
        levels = self.levels[loc_inds]
        index = loc_inds - starts[levels]
        widths = sizes[levels, 1]
        return levels, index // widths, index % widths


@dataclass
class FCOSPositives:
    """The positive locations of a batch and what the mask branches need of them."""

    image_inds: Tensor  # (P,) image of each positive
    gt_inds: Tensor  # (P,) index of its ground-truth box within its image
    loc_inds: Tensor  # (P,) its flat location index (FCOSPredictions' L dimension)
    ctrness_targets: Tensor  # (P,) centerness targets (BlendMask weights its mask loss with them)
    loss_denorm: Tensor  # () the normalizer of the box loss, averaged over processes


def _reduce_mean(x: Tensor) -> Tensor:
    """Mean over the processes of a distributed run (the value itself in a single process)."""
    if comm.get_world_size() > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x = x / comm.get_world_size()
    return x


def _flatten(per_level: List[Tensor]) -> Tensor:
    """Per level (N, C, Hl, Wl) -> (N, L, C)."""
    return cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]) for x in per_level], dim=1)


@PROPOSAL_GENERATOR_REGISTRY.register()
class FCOS(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        strides: List[int],
        head: FCOSHead,
        num_classes: int,
        sizes_of_interest: List[int],
        center_sample_radius: float,
        focal_loss_alpha: float,
        focal_loss_gamma: float,
        thresh_with_ctr: bool,
        score_thresh: Dict[bool, float],
        pre_nms_topk: Dict[bool, int],
        post_nms_topk: Dict[bool, int],
        nms_thresh: float,
        clip_before_nms: bool = False,
        detections_per_image: int = 0,
    ):
        """
        Args:
            in_features: FPN levels to run on, e.g. ["p3", ..., "p7"].
            strides: their strides.
            head: the FCOSHead.
            num_classes: K.
            sizes_of_interest: boundaries between the levels' size ranges (len(in_features) - 1).
            center_sample_radius: positives lie within this many strides of a box centre (<= 0: anywhere
                in the box).
            focal_loss_alpha, focal_loss_gamma: classification focal loss.
            thresh_with_ctr: apply the score threshold to class score x centerness (else class score).
            score_thresh, pre_nms_topk, post_nms_topk: keyed by training mode (True/False); post-NMS
                top-k counts the candidates kept after NMS (with ties, as upstream).
            nms_thresh: IoU threshold of the class-aware NMS (<= 0: no NMS).
            clip_before_nms: clip the boxes to the image and drop empty ones before NMS, so that NMS
                and the mask branch see the boxes that are drawn; False as AdelaiDet and centermask2
                (see `detect`).
            detections_per_image: at test time, the most detections an image keeps (<= 0: no bound).
        """
        super().__init__()
        self.in_features = in_features
        self.fcos_head = head  # the name AdelaiDet and centermask2 checkpoints use
        self.num_classes = num_classes
        self.strides = strides
        self.ranges = size_ranges(sizes_of_interest, len(in_features))
        self.center_sample_radius = center_sample_radius
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.thresh_with_ctr = thresh_with_ctr
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.clip_before_nms = clip_before_nms
        self.detections_per_image = detections_per_image

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        fcos = cfg.MODEL.FCOS
        shapes = feature_shapes(input_shape, fcos.IN_FEATURES, "MODEL.FCOS.IN_FEATURES")
        if len(fcos.FPN_STRIDES) != len(fcos.IN_FEATURES):
            raise ValueError("MODEL.FCOS.FPN_STRIDES needs one stride per MODEL.FCOS.IN_FEATURES")
        return {
            "in_features": list(fcos.IN_FEATURES),
            "strides": list(fcos.FPN_STRIDES),
            "head": FCOSHead(cfg, shapes),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "sizes_of_interest": list(fcos.SIZES_OF_INTEREST),
            "center_sample_radius": fcos.POS_RADIUS if fcos.CENTER_SAMPLE else 0.0,
            "focal_loss_alpha": fcos.LOSS_ALPHA,
            "focal_loss_gamma": fcos.LOSS_GAMMA,
            "thresh_with_ctr": fcos.THRESH_WITH_CTR,
            "score_thresh": {True: fcos.INFERENCE_TH_TRAIN, False: fcos.INFERENCE_TH_TEST},
            "pre_nms_topk": {True: fcos.PRE_NMS_TOPK_TRAIN, False: fcos.PRE_NMS_TOPK_TEST},
            # at test time at least the detections TEST.DETECTIONS_PER_IMAGE asks for, which bounds the
            # final detections of every method of this project
            "post_nms_topk": {
                True: fcos.POST_NMS_TOPK_TRAIN,
                False: max(fcos.POST_NMS_TOPK_TEST, cfg.TEST.DETECTIONS_PER_IMAGE),
            },
            "nms_thresh": fcos.NMS_TH,
            "clip_before_nms": fcos.CLIP_BEFORE_NMS,
            "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ):
        """detectron2's proposal-generator interface.

        Returns:
            proposals: per image, the detections after NMS. In training they are proposals for RoI
                heads (fields proposal_boxes, objectness_logits); at test time final detections
                (pred_boxes, scores, pred_classes).
            losses: the FCOS losses in training, else {}.
        """
        predictions = self.predict(features)
        detections = self.detect(predictions, images.image_sizes)
        if not self.training:
            return detections, {}
        losses, _ = self.losses(predictions, gt_instances)
        return detections_as_proposals(detections), losses

    def predict(self, features: Dict[str, Tensor], keep_box_tower: bool = False) -> FCOSPredictions:
        """Run the head on the FPN levels. `keep_box_tower`: the predictions also hold the box
        tower's per-level output (box_tower), for a caller's own layers at chosen locations."""
        feats = [features[f] for f in self.in_features]
        logits, box_reg, ctrness, box_tower = self.fcos_head(feats)
        locations, strides, levels, ranges = [], [], [], []
        for level, (x, stride) in enumerate(zip(feats, self.strides)):
            loc = compute_locations(x.shape[2], x.shape[3], stride, x.device)
            locations.append(loc)
            strides.append(torch.full((len(loc),), float(stride), device=x.device))
            levels.append(torch.full((len(loc),), level, dtype=torch.int64, device=x.device))
            ranges.append(loc.new_tensor(self.ranges[level]).expand(len(loc), 2))
        return FCOSPredictions(
            logits=_flatten(logits),
            box_reg=_flatten(box_reg),
            ctrness=_flatten(ctrness).squeeze(2),
            locations=cat(locations),
            strides=cat(strides),
            levels=cat(levels),
            ranges=cat(ranges),
            level_sizes=[(x.shape[2], x.shape[3]) for x in feats],
            box_tower=box_tower if keep_box_tower else None,
        )

    def losses(self, pred: FCOSPredictions, gt_instances: List[Instances]):
        """Focal classification, centerness-weighted GIoU box and centerness BCE losses.

        Returns:
            losses: {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}.
            positives: FCOSPositives of the batch.
        """
        targets = [
            assign_locations(
                pred.locations, pred.strides, pred.ranges, gt.gt_boxes.tensor, gt.gt_classes,
                self.num_classes, self.center_sample_radius,
            )
            for gt in gt_instances
        ]
        labels = torch.stack([t.labels for t in targets])  # (N, L)
        pos_image, pos_loc = torch.nonzero(labels != self.num_classes, as_tuple=True)
        num_pos_avg = _reduce_mean(pos_image.new_tensor(float(len(pos_image)), dtype=torch.float32)).clamp(min=1.0)

        # float32 even under autocast: the losses sum over every location, GIoU indexes in place
        logits, box_reg, ctrness = pred.logits.float(), pred.box_reg.float(), pred.ctrness.float()
        one_hot = F.one_hot(labels, self.num_classes + 1)[..., : self.num_classes].to(logits.dtype)
        # fvcore's eager focal loss, not its TorchScript one, which switches to a fused backward after
        # its first calls: a process's first training would round differently from the next ones
        loss_cls = sigmoid_focal_loss(
            logits, one_hot, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="sum"
        ) / num_pos_avg

        reg_targets = torch.stack([t.reg for t in targets])[pos_image, pos_loc]
        ctr_targets = centerness_targets(reg_targets)
        loss_denorm = _reduce_mean(ctr_targets.sum().detach()).clamp(min=1e-6)
        reg_pred = box_reg[pos_image, pos_loc]
        ctr_pred = ctrness[pos_image, pos_loc]
        if len(pos_image) > 0:
            as_boxes = lambda d: torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], dim=1)  # noqa: E731
            giou = giou_loss(as_boxes(reg_pred), as_boxes(reg_targets), reduction="none")
            loss_loc = (giou * ctr_targets).sum() / loss_denorm
            loss_ctr = F.binary_cross_entropy_with_logits(ctr_pred, ctr_targets, reduction="sum") / num_pos_avg
        else:  # keep the graph connected so that every process runs the same backward
            loss_loc = reg_pred.sum() * 0
            loss_ctr = ctr_pred.sum() * 0
        gt_inds = torch.stack([t.gt_inds for t in targets])[pos_image, pos_loc]
        positives = FCOSPositives(
            image_inds=pos_image,
            gt_inds=gt_inds,
            loc_inds=pos_loc,
            ctrness_targets=ctr_targets,
            loss_denorm=loss_denorm,
        )
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}, positives

    def detect(self, pred: FCOSPredictions, image_sizes) -> List[Instances]:
        """AdelaiDet's and centermask2's post-processing, per image: keep the locations and classes
        whose class score (class score x centerness with thresh_with_ctr) passes the threshold; in each
        level, the pre_nms_topk of them with the highest class score x centerness; decode; class-aware
        NMS; then the post_nms_topk best and every detection tied with the last of them; at test time
        at most detections_per_image of those.

        The boxes are not clipped to the image: NMS and the mask branch see them whole and
        detectron2's detector_postprocess clips them, as upstream. With clip_before_nms they are
        clipped, and empty ones dropped, before NMS.

        Returns per image Instances with pred_boxes, scores (sqrt(class score x centerness)),
        pred_classes and where each was detected: locations (image coordinates (x, y)), fpn_levels and
        location_inds (its flat location index, FCOSPredictions' L dimension).
        """
        training = self.training
        results = []
        for i, image_size in enumerate(image_sizes):
            cls_scores = pred.logits[i].detach().sigmoid()
            ranking = cls_scores * pred.ctrness[i].detach().sigmoid()[:, None]
            thresholded = ranking if self.thresh_with_ctr else cls_scores
            keep_loc, keep_cls = [], []
            for level in range(len(self.strides)):
                (idx,) = torch.nonzero(pred.levels == level, as_tuple=True)
                loc, cls = torch.nonzero(thresholded[idx] > self.score_thresh[training], as_tuple=True)
                if len(loc) > self.pre_nms_topk[training]:
                    top = ranking[idx[loc], cls].topk(self.pre_nms_topk[training]).indices
                    loc, cls = loc[top], cls[top]
                keep_loc.append(idx[loc])
                keep_cls.append(cls)
            loc, cls = cat(keep_loc), cat(keep_cls)
            scores = torch.sqrt(ranking[loc, cls])
            reg = pred.box_reg[i, loc].detach() * pred.strides[loc, None]
            xy = pred.locations[loc]
            boxes = Boxes(torch.stack([xy[:, 0] - reg[:, 0], xy[:, 1] - reg[:, 1], xy[:, 0] + reg[:, 2], xy[:, 1] + reg[:, 3]], dim=1))
            if self.clip_before_nms:
                boxes.clip(image_size)
                nonempty = boxes.nonempty()  # a location may regress (or be clipped to) a degenerate box
                boxes, scores, cls, loc = boxes[nonempty], scores[nonempty], cls[nonempty], loc[nonempty]
            if self.nms_thresh > 0:
                keep = batched_nms(boxes.tensor, scores, cls, self.nms_thresh)  # by decreasing score
            else:
                keep = scores.argsort(descending=True)
            count = _top_k_with_ties(scores[keep], self.post_nms_topk[training])
            if not training and self.detections_per_image > 0:
                count = min(count, self.detections_per_image)
            keep = keep[:count]
            loc = loc[keep]
            result = Instances(image_size)
            result.pred_boxes = boxes[keep]
            result.scores = scores[keep]
            result.pred_classes = cls[keep]
            result.locations = pred.locations[loc]
            result.fpn_levels = pred.levels[loc]
            result.location_inds = loc
            results.append(result)
        return results


def _top_k_with_ties(sorted_scores: Tensor, k: int) -> int:
    """How many of the leading `sorted_scores` (decreasing) to keep: the k best and every later one
    tied with the k-th, as AdelaiDet's and centermask2's kthvalue threshold keeps them; all when
    k <= 0."""
    if k <= 0 or len(sorted_scores) <= k:
        return len(sorted_scores)
    return int((sorted_scores >= sorted_scores[k - 1]).sum())
