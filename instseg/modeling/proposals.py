"""Adapters between one-stage detections and detectron2's two-stage proposals.

CenterMask runs FCOS as the proposal generator of detectron2's GeneralizedRCNN: in training FCOS's
detections become the proposals the RoI heads match and sample (centermask2's way).
"""
from typing import List

import torch
from detectron2.structures import Instances

# where torch.logit clamps the scores, as centermask2 does: logit(0) and logit(1) would be -inf / inf
SCORE_EPS = 1e-6


def detections_as_proposals(detections: List[Instances], eps: float = SCORE_EPS) -> List[Instances]:
    """Per image, the detections (pred_boxes, scores) as RPN-style proposals (proposal_boxes,
    objectness_logits), the fields detectron2's RoI heads read.

    Why the logit: detectron2's proposals carry ``objectness_logits``, logits (RPN's; where the RoI
    heads add the ground truth to the proposals, add_ground_truth_to_proposals gives it the logit
    of probability 1 - 1e-10), while FCOS's scores are probabilities (sqrt(class score x
    centerness)). ``objectness_logits = logit(scores)`` keeps the order of the scores and makes
    ``sigmoid(objectness_logits) == scores``, so whatever reads the proposals as logits reads FCOS's
    scores. The scores are clamped to [eps, 1 - eps] first, so a score of 0 or 1 gives a finite
    logit (logit(eps), logit(1 - eps)).

    The boxes are shared, not copied; the other fields of the detections are not carried.
    """
    proposals = []
    for det in detections:
        proposal = Instances(det.image_size)
        proposal.proposal_boxes = det.pred_boxes
        proposal.objectness_logits = torch.logit(det.scores, eps=eps)
        proposals.append(proposal)
    return proposals
