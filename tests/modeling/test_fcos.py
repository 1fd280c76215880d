"""FCOS, shared by BlendMask and CenterMask: locations, target assignment on hand-made boxes,
centerness, losses, decoding and NMS, AdelaiDet/centermask2 parameter names, its generic outputs
(where positives and detections lie, the box tower on request), its registration as the proposal
generator "FCOS", and detections_as_proposals."""
import dataclasses
import math

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.structures import Boxes, ImageList, Instances
from helpers import build_fcos, fcos_features, two_images_gt

from instseg.config import get_project_cfg
from instseg.modeling import detections_as_proposals
from instseg.modeling.fcos import FCOS, FCOSPositives, FCOSPredictions
from instseg.modeling.fcos.targets import INF, assign_locations, centerness_targets, compute_locations
from instseg.modeling.proposals import SCORE_EPS


def test_compute_locations_are_cell_centres():
    loc = compute_locations(2, 3, 8, "cpu")
    expected = torch.tensor([[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]], dtype=torch.float32)
    assert torch.equal(loc, expected)


def _assign(locations, strides, ranges, boxes, classes, radius=1.5):
    return assign_locations(
        torch.tensor(locations, dtype=torch.float32),
        torch.tensor(strides, dtype=torch.float32),
        torch.tensor(ranges, dtype=torch.float32),
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(classes),
        num_classes=3,
        center_radius=radius,
    )


def test_assignment_centre_sampling_and_regression_targets():
    box = [[0.0, 0.0, 40.0, 40.0]]  # centre (20, 20); radius 1.5 * stride 8 = 12 -> centre region [8, 32]
    t = _assign([[20, 20], [12, 28], [4, 4], [36, 20]], [8] * 4, [[-1, 64]] * 4, box, [2])
    assert t.labels.tolist() == [2, 2, 3, 3]  # (4, 4) and (36, 20) are in the box but outside the centre region
    assert t.gt_inds.tolist() == [0, 0, -1, -1]
    assert torch.allclose(t.reg[0], torch.tensor([20.0, 20.0, 20.0, 20.0]) / 8)
    assert torch.allclose(t.reg[1], torch.tensor([12.0, 28.0, 28.0, 12.0]) / 8)
    # without centre sampling, anywhere inside the box is positive
    assert _assign([[4, 4], [36, 20]], [8, 8], [[-1, 64]] * 2, box, [2], radius=0).labels.tolist() == [2, 2]


def test_assignment_size_ranges_and_smallest_box_wins():
    boxes = [[0.0, 0.0, 100.0, 100.0], [40.0, 40.0, 60.0, 60.0]]  # large (max dist 50) and small (10)
    loc = [[50, 50], [50, 50], [50, 50]]
    ranges = [[-1, 8], [8, 32], [32, INF]]
    t = _assign(loc, [8, 16, 32], ranges, boxes, [0, 1], radius=10)
    # level 0 range [-1, 8]: neither; level 1 [8, 32]: small box (max dist 10); level 2: large box (50)
    assert t.labels.tolist() == [3, 1, 0]
    both = _assign([[50, 50]], [8], [[-1, INF]], boxes, [0, 1], radius=10)
    assert both.labels.tolist() == [1] and both.gt_inds.tolist() == [1], "smaller box wins"


def test_assignment_without_boxes():
    t = _assign([[4, 4]], [8], [[-1, 64]], torch.zeros(0, 4).tolist(), [])
    assert t.labels.tolist() == [3] and t.gt_inds.tolist() == [-1]


def test_centerness_targets():
    reg = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 2.0], [0.0, 1.0, 1.0, 1.0]])
    expected = torch.tensor([1.0, math.sqrt(1 / 3), 0.0])
    assert torch.allclose(centerness_targets(reg), expected)


def test_parameter_names_match_adelaidet_checkpoints():
    keys = {k: v.shape for k, v in build_fcos().state_dict().items()}
    assert keys["fcos_head.cls_tower.0.weight"] == (32, 32, 3, 3)
    assert keys["fcos_head.cls_tower.1.weight"] == (32,)  # GroupNorm
    assert "fcos_head.bbox_tower.9.bias" in keys and "fcos_head.cls_tower.12.weight" not in keys
    assert keys["fcos_head.cls_logits.weight"] == (3, 32, 3, 3)
    assert keys["fcos_head.bbox_pred.weight"] == (4, 32, 3, 3)
    assert keys["fcos_head.ctrness.weight"] == (1, 32, 3, 3)
    assert keys["fcos_head.scales.4.scale"] == (1,)
    shared = {k for k in build_fcos(NUM_SHARE_CONVS=3, NUM_CLS_CONVS=0, NUM_BOX_CONVS=0, USE_SCALE=False).state_dict()}
    assert "fcos_head.share_tower.6.weight" in shared
    assert not any(".scales." in k or ".cls_tower." in k for k in shared)
    bn = {k for k in build_fcos(NORM="BN").state_dict()}
    assert "fcos_head.cls_tower.1.4.running_mean" in bn  # one BatchNorm per level


def test_losses_are_finite_and_trainable():
    fcos = build_fcos(NUM_CLS_CONVS=1, NUM_BOX_CONVS=1)
    gt = []
    for boxes, classes in (([[4.0, 6.0, 40.0, 50.0], [30.0, 30.0, 60.0, 62.0]], [0, 2]), ([], [])):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor(boxes).reshape(-1, 4))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        gt.append(inst)
    feats = fcos_features(fcos)
    opt = torch.optim.SGD(fcos.parameters(), lr=0.05)
    history = []
    for _ in range(15):
        losses, positives = fcos.losses(fcos.predict(feats), gt)
        total = sum(losses.values())
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert positives.image_inds.tolist() == [0] * len(positives.image_inds) and len(positives.gt_inds) > 0
    assert set(positives.gt_inds.tolist()) == {0, 1}
    assert history[-1] < history[0] * 0.7


def _predictions(locations, logits, box_reg, ctrness, strides, levels):
    """Hand-made head outputs of one image (sizes ranges are not used by detect)."""
    return FCOSPredictions(
        logits=torch.tensor([logits], dtype=torch.float32),
        box_reg=torch.tensor([box_reg], dtype=torch.float32),
        ctrness=torch.tensor([ctrness], dtype=torch.float32),
        locations=torch.tensor(locations, dtype=torch.float32),
        strides=torch.tensor(strides, dtype=torch.float32),
        levels=torch.tensor(levels),
        ranges=torch.zeros(len(locations), 2),
    )


def _logit(p):
    return math.log(p / (1 - p))


def test_detect_decodes_thresholds_and_nms():
    fcos = build_fcos(CLIP_BEFORE_NMS=True).eval()
    locations = [[20.0, 20.0], [22.0, 20.0], [100.0, 100.0], [60.0, 60.0]]
    logits = [[-10.0] * 3 for _ in range(4)]
    logits[3][2] = 5.0  # the best score, but an empty box: dropped
    logits[0][1] = 3.0  # class 1 at location 0
    logits[1][1] = 2.0  # a near-duplicate of it: suppressed by NMS
    logits[2][0] = 1.0  # class 0 elsewhere
    box_reg = [[1.0, 1.0, 2.0, 2.0], [1.25, 1.0, 1.75, 2.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]
    pred = _predictions(locations, logits, box_reg, [0.0] * 4, [8, 8, 16, 8], [0, 0, 1, 0])
    (det,) = fcos.detect(pred, [(128, 128)])
    assert det.pred_classes.tolist() == [1, 0]
    assert torch.allclose(det.pred_boxes.tensor[0], torch.tensor([12.0, 12.0, 36.0, 36.0]))
    assert torch.allclose(det.pred_boxes.tensor[1], torch.tensor([92.0, 92.0, 108.0, 108.0]))
    assert torch.allclose(det.scores[0], torch.sqrt(torch.sigmoid(torch.tensor(3.0)) * 0.5))
    assert not det.has("top_feat")
    # upstream keeps the empty box through NMS (detector_postprocess drops it after clipping)
    (upstream,) = build_fcos().eval().detect(pred, [(128, 128)])
    assert upstream.pred_classes.tolist() == [2, 1, 0]
    assert upstream.pred_boxes.tensor[0].tolist() == [60.0, 60.0, 60.0, 60.0]


def test_pre_nms_topk_ranks_by_class_score_times_centerness():
    # one level, four far-apart locations of class 0, all above the class-score threshold 0.05;
    # class scores 0.9 0.8 0.3 0.2, centerness 0.1 0.1 0.9 0.9: products 0.09 0.08 0.27 0.18
    cls, ctr = [0.9, 0.8, 0.3, 0.2], [0.1, 0.1, 0.9, 0.9]
    pred = _predictions(
        [[8.0 + 32 * k, 8.0] for k in range(4)], [[_logit(p)] for p in cls], [[0.5] * 4] * 4,
        [_logit(c) for c in ctr], [8] * 4, [0] * 4,
    )
    fcos = build_fcos(PRE_NMS_TOPK_TEST=2).eval()
    fcos.num_classes = 1
    (det,) = fcos.detect(pred, [(64, 256)])
    # AdelaiDet / centermask2 keep the two best products (locations 2 and 3), not the two best class
    # scores (0 and 1), though the threshold is on the class score alone (THRESH_WITH_CTR False)
    assert det.locations[:, 0].tolist() == [72.0, 104.0]
    assert torch.allclose(det.scores, torch.tensor([0.27, 0.18]).sqrt())
    # the threshold is on the class score: 0.25 drops location 3 (0.2); of the rest the two best
    # products are locations 2 (0.27) and 0 (0.09)
    fcos.score_thresh = {False: 0.25, True: 0.25}
    (det,) = fcos.detect(pred, [(64, 256)])
    assert det.locations[:, 0].tolist() == [72.0, 8.0]
    fcos.thresh_with_ctr = True  # now on the product: 0.27 alone passes 0.25
    (det,) = fcos.detect(pred, [(64, 256)])
    assert det.locations[:, 0].tolist() == [72.0]


def _two_boxes_across_the_left_border():
    """Class 0 at two locations of a 100 x 100 image: A = (-60, 0, 40, 100), score sqrt(0.9 * 0.5),
    and B = (0, 0, 40, 100), score sqrt(0.8 * 0.5). Unclipped their IoU is 4000 / 10000 = 0.4;
    clipped, A is B and their IoU is 1."""
    return _predictions(
        [[20.0, 50.0], [21.0, 50.0]], [[_logit(0.9)], [_logit(0.8)]],
        [[80.0, 50.0, 20.0, 50.0], [21.0, 50.0, 19.0, 50.0]], [0.0, 0.0], [1, 1], [0, 0],
    )


def test_nms_on_unclipped_boxes_as_upstream():
    fcos = build_fcos().eval()  # MODEL.FCOS.CLIP_BEFORE_NMS False, as AdelaiDet and centermask2
    fcos.num_classes = 1
    (det,) = fcos.detect(_two_boxes_across_the_left_border(), [(100, 100)])
    assert det.pred_boxes.tensor.tolist() == [[-60.0, 0.0, 40.0, 100.0], [0.0, 0.0, 40.0, 100.0]]
    fcos.clip_before_nms = True
    (det,) = fcos.detect(_two_boxes_across_the_left_border(), [(100, 100)])
    assert det.pred_boxes.tensor.tolist() == [[0.0, 0.0, 40.0, 100.0]]
    assert torch.allclose(det.scores, torch.tensor([0.45]).sqrt())


def test_post_nms_topk_keeps_ties_as_kthvalue():
    # three far-apart detections scored 0.6, 0.6, 0.5 (class scores with centerness 0.5 each); in
    # training (CenterMask's proposals) nothing else bounds them
    pred = _predictions(
        [[8.0 + 32 * k, 8.0] for k in range(3)], [[_logit(0.72)], [_logit(0.72)], [_logit(0.5)]],
        [[0.5] * 4] * 3, [0.0] * 3, [8] * 3, [0] * 3,
    )
    counts = {}
    for k in (1, 2, 3, 0, -1):
        fcos = build_fcos(POST_NMS_TOPK_TRAIN=k).train()
        fcos.num_classes = 1
        counts[k] = len(fcos.detect(pred, [(64, 128)])[0])
    # top 1 keeps both tied 0.6 (kthvalue threshold); <= 0 keeps all
    assert counts == {1: 2, 2: 2, 3: 3, 0: 3, -1: 3}
    fcos = build_fcos(NMS_TH=0.0).eval()  # no NMS at all: overlapping boxes stay
    fcos.num_classes = 1
    (det,) = fcos.detect(_two_boxes_across_the_left_border(), [(100, 100)])
    assert len(det) == 2 and det.scores[0] > det.scores[1]


def test_detections_per_image_bounds_the_test_detections():
    """TEST.DETECTIONS_PER_IMAGE is the one bound of every method's final detections: FCOS keeps at
    least that many candidates after NMS at test time and never more (ties included)."""
    pred = _predictions(
        [[8.0 + 32 * k, 8.0] for k in range(3)], [[_logit(0.72)], [_logit(0.72)], [_logit(0.5)]],
        [[0.5] * 4] * 3, [0.0] * 3, [8] * 3, [0] * 3,
    )

    def count(post_nms_topk, detections_per_image, training=False):
        cfg = get_project_cfg()
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
        cfg.MODEL.FCOS.POST_NMS_TOPK_TEST = post_nms_topk
        cfg.MODEL.FCOS.POST_NMS_TOPK_TRAIN = post_nms_topk
        cfg.TEST.DETECTIONS_PER_IMAGE = detections_per_image
        fcos = FCOS(cfg, {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(3, 8)}).train(training)
        return len(fcos.detect(pred, [(64, 128)])[0])

    assert count(post_nms_topk=1, detections_per_image=3) == 3  # the candidates follow the bound up
    assert count(post_nms_topk=3, detections_per_image=1) == 1  # and the bound cuts the tie of 0.6
    assert count(post_nms_topk=1, detections_per_image=1, training=True) == 2  # training: ties, no bound
    assert count(post_nms_topk=3, detections_per_image=0) == 3  # <= 0: no bound


def test_fcos_outputs_hold_no_method_state():
    """FCOS's outputs are generic: no top layer, no attentions (BlendMask computes its own)."""
    assert {f.name for f in dataclasses.fields(FCOSPredictions)} == {
        "logits", "box_reg", "ctrness", "locations", "strides", "levels", "ranges", "level_sizes", "box_tower",
    }
    assert {f.name for f in dataclasses.fields(FCOSPositives)} == {
        "image_inds", "gt_inds", "loc_inds", "ctrness_targets", "loss_denorm",
    }
    fcos = build_fcos(NUM_CLS_CONVS=1, NUM_BOX_CONVS=1)
    assert not any("top" in name for name, _ in fcos.named_modules())


def test_predictions_say_where_each_location_lies_and_keep_the_box_tower_on_request():
    fcos = build_fcos(NUM_CLS_CONVS=1, NUM_BOX_CONVS=1)
    features = fcos_features(fcos)  # levels of 16x16, 8x8, 4x4, 2x2, 1x1
    pred = fcos.predict(features)
    assert pred.level_sizes == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert pred.box_tower is None
    loc_inds = torch.arange(len(pred.locations))
    levels, ys, xs = pred.positions(loc_inds)
    assert torch.equal(levels, pred.levels)
    # (y, x) in the level's map is the cell whose centre is the location
    strides = torch.tensor(fcos.strides)[levels]
    assert torch.equal(torch.stack([xs, ys], dim=1) * strides[:, None] + (strides // 2)[:, None], pred.locations.long())
    assert (ys < torch.tensor([h for h, _ in pred.level_sizes])[levels]).all()
    kept = fcos.predict(features, keep_box_tower=True)
    _, _, _, box_tower = fcos.fcos_head([features[f] for f in fcos.in_features])
    assert len(kept.box_tower) == 5
    for level, (ours, head) in enumerate(zip(kept.box_tower, box_tower)):
        assert ours.shape == (2, 32, *pred.level_sizes[level])
        torch.testing.assert_close(ours, head)
        # a per-level output at positions(...) is the flattened output at the flat index
        flat = ours.permute(0, 2, 3, 1).reshape(2, -1, 32)
        sel = torch.nonzero(levels == level, as_tuple=True)[0]
        start = int(sel[0])
        torch.testing.assert_close(ours[1, :, ys[sel], xs[sel]].T, flat[1, sel - start])


def test_positives_and_detections_carry_their_location_indices():
    fcos = build_fcos(NUM_CLS_CONVS=1, NUM_BOX_CONVS=1, INFERENCE_TH_TRAIN=0.0)
    pred = fcos.predict(fcos_features(fcos))
    gt = two_images_gt()
    _, positives = fcos.losses(pred, gt)
    labels = torch.stack([
        assign_locations(pred.locations, pred.strides, pred.ranges, g.gt_boxes.tensor, g.gt_classes, 3, 1.5).labels
        for g in gt
    ])
    pos_image, pos_loc = torch.nonzero(labels != 3, as_tuple=True)
    assert len(pos_loc) > 0
    assert torch.equal(positives.image_inds, pos_image) and torch.equal(positives.loc_inds, pos_loc)
    detections = fcos.detect(pred, [(128, 128)] * 2)
    for det in detections:
        assert len(det) > 0 and not det.has("top_feat")
        assert det.location_inds.dtype == torch.int64
        assert torch.equal(det.locations, pred.locations[det.location_inds])
        assert torch.equal(det.fpn_levels, pred.levels[det.location_inds])


def test_fcos_is_the_proposal_generator_named_fcos():
    assert PROPOSAL_GENERATOR_REGISTRY.get("FCOS") is FCOS
    cfg = get_project_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "FCOS"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    shapes = {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(3, 8)}
    assert type(build_proposal_generator(cfg, shapes)) is FCOS


def test_detections_as_proposals_logit_inverts_sigmoid_and_clamps():
    scores = torch.tensor([0.0, 1e-9, 0.01, 0.25, 0.5, 0.9, 1.0 - 1e-9, 1.0])
    det = Instances((10, 20))
    det.pred_boxes = Boxes(torch.arange(32, dtype=torch.float32).reshape(8, 4))
    det.scores = scores
    det.pred_classes = torch.zeros(8, dtype=torch.int64)
    det.location_inds = torch.arange(8)
    (proposal,) = detections_as_proposals([det])
    assert proposal.image_size == (10, 20)
    assert set(proposal.get_fields()) == {"proposal_boxes", "objectness_logits"}
    assert proposal.proposal_boxes is det.pred_boxes
    logits = proposal.objectness_logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.sigmoid()[2:6], scores[2:6])  # sigmoid(logit(s)) == s
    # 0 and 1 (and what is nearer to them than eps) clamp to logit(eps) and logit(1 - eps)
    eps = torch.tensor(SCORE_EPS)
    assert SCORE_EPS == 1e-6  # centermask2's
    low, high = torch.logit(eps).item(), torch.logit(1 - eps).item()
    assert logits[:2].tolist() == [low, low] and logits[6:].tolist() == [high, high]
    assert (logits[1:] >= logits[:-1]).all()  # the order of the scores
    assert detections_as_proposals([]) == []


def test_training_forward_returns_the_detections_as_proposals():
    fcos = build_fcos(NUM_CLS_CONVS=1, NUM_BOX_CONVS=1, INFERENCE_TH_TRAIN=0.0).train()
    features = fcos_features(fcos)
    images = ImageList(torch.zeros(2, 3, 128, 128), [(128, 128), (120, 128)])
    proposals, losses = fcos(images, features, two_images_gt())
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    expected = detections_as_proposals(fcos.detect(fcos.predict(features), images.image_sizes))
    for ours, theirs in zip(proposals, expected):
        assert set(ours.get_fields()) == {"proposal_boxes", "objectness_logits"}
        assert torch.equal(ours.proposal_boxes.tensor, theirs.proposal_boxes.tensor)
        assert torch.equal(ours.objectness_logits, theirs.objectness_logits)
