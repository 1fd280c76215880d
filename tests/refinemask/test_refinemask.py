"""RefineMask: boundary regions against a brute-force distance computation, the stage merge rule, loss
masking, SFM shapes, and the model built from its configs."""
import itertools

import pytest
import torch
import torchvision
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from instseg.engine import build_config
from refinemask import SFMStage, boundary_region, mask_head, merge_stage

from helpers import ground_truth_as_detections

SHAPES = "configs/RefineMask/refinemask_R_18_FPN_shapes.yaml"


def brute_force_boundary(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A pixel is boundary iff a pixel of the other label (outside the frame: background) lies within
    Chebyshev distance `width`."""
    h, w = mask.shape
    out = torch.zeros_like(mask, dtype=torch.bool)
    for i, j in itertools.product(range(h), range(w)):
        for a, b in itertools.product(range(i - width, i + width + 1), range(j - width, j + width + 1)):
            other = bool(mask[a, b]) if 0 <= a < h and 0 <= b < w else False
            if other != bool(mask[i, j]):
                out[i, j] = True
                break
    return out


@pytest.mark.parametrize("width", [1, 2])
def test_boundary_region_matches_brute_force(width):
    g = torch.Generator().manual_seed(width)
    masks = torch.rand(3, 12, 10, generator=g) > 0.5
    masks[0] = False
    masks[0, 3:9, 2:7] = True  # a solid block
    out = boundary_region(masks, width)
    for mask, region in zip(masks, out):
        assert torch.equal(region, brute_force_boundary(mask, width))


def official_boundary(masks: torch.Tensor, width: int) -> torch.Tensor:
    """The official generate_block_target's boundary label (== 1), written plainly: a pixel whose
    (2 width + 1)^2 window (outside the frame: background) holds more than a tenth of pixels of the
    other label. masks (M, H, W) bool."""
    k = 2 * width + 1
    fg_count = F.conv2d(F.pad(masks.float()[:, None], [width] * 4), torch.ones(1, 1, k, k))[:, 0]
    other = torch.where(masks, k * k - fg_count, fg_count)
    return other / (k * k) > 0.1


def official_merge(previous: torch.Tensor, logits: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """The official RefineRoIHead.simple_test_mask step, (M, S, S), (M, 2S, 2S) -> (M, 2S, 2S): outside
    the 1-pixel boundary of sigmoid(previous) >= 0.5 (that complement interpolated bilinearly, then
    >= 0.5), the previous logits interpolated bilinearly, both with align_corners True."""
    size = logits.shape[-2:]
    keep = ~official_boundary(previous.sigmoid() >= 0.5, 1)
    keep = F.interpolate(keep.float()[:, None], size, mode="bilinear", align_corners=align_corners)[:, 0] >= 0.5
    upsampled = F.interpolate(previous[:, None], size, mode="bilinear", align_corners=align_corners)[:, 0]
    out = logits.clone()
    out[keep] = upsampled[keep]
    return out


def _blobs(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n, size, size) smooth random logits: a few blobs with boundaries inside the frame."""
    coarse = torch.randn(n, 1, 4, 4, generator=g) * 4
    return F.interpolate(coarse, size, mode="bilinear", align_corners=False)[:, 0] + 0.1 * torch.randn(n, size, size, generator=g)


def test_merge_stage_equals_the_official_rule():
    g = torch.Generator().manual_seed(0)
    previous, logits = _blobs(6, 28, g), torch.randn(6, 56, 56, generator=g) * 3
    merged = merge_stage(previous, logits, width=1)
    assert torch.equal(merged, official_merge(previous, logits))
    # the rule's align_corners matters: the former False differs
    assert not torch.allclose(merged, official_merge(previous, logits, align_corners=False))
    # a square: deep inside / far outside keep the previous logits, its contour takes the stage's
    square = torch.full((1, 8, 8), -5.0)
    square[0, 2:6, 2:6] = 5.0
    merged = merge_stage(square, torch.full((1, 16, 16), 7.0), width=1)
    assert merged[0, 0, 0] == -5.0 and merged[0, 7, 7] == 5.0 and merged[0, 4, 7] == 7.0


def test_inference_merges_the_stages_as_the_official_code():
    """From 28 up, each stage merged into the previous merged one (the official loop edits the stage
    predictions in place); the sigmoid of the last."""
    head, _ = _head_and_instances()
    g = torch.Generator().manual_seed(1)
    stage_logits = [_blobs(5, s, g) for s in (14, 28, 56, 112)]
    merged = stage_logits[1]
    for logits in stage_logits[2:]:
        merged = official_merge(merged, logits)
    probs = head.inference(stage_logits)
    assert probs.shape == (5, 1, 112, 112)
    assert torch.equal(probs[:, 0], merged.sigmoid())


def _head_and_instances():
    cfg = build_config(SHAPES)
    model = build_model(cfg)
    head = model.roi_heads.mask_head
    inst = Instances((64, 64))
    inst.proposal_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0], [20.0, 10.0, 60.0, 50.0]]))
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 12:36, 10:30] = True
    masks[1, 15:45, 25:55] = True
    inst.gt_masks = BitMasks(masks)
    inst.gt_classes = torch.tensor([0, 2])
    return head, inst


def test_sfm_stage_shapes():
    stage = SFMStage(64, 128, 4, 14, 3, [1, 3, 5], "instseg")
    boxes = [Boxes(torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 4.0, 60.0, 40.0]]))]
    semantic_map = stage.transform_semantic(torch.randn(1, 128, 16, 16))
    logits, out = stage(torch.randn(2, 64, 14, 14), semantic_map, torch.rand(1, 1, 16, 16), boxes, torch.tensor([0, 2]))
    assert semantic_map.shape == (1, 64, 16, 16)
    assert logits.shape == (2, 14, 14) and out.shape == (2, 32, 14, 14)


def plain_sfm(stage, x, semantic_feat, semantic_logits, boxes, labels):
    """The SFM written out op by op in NCHW, with torchvision's RoIAlign and the official code's ReLU
    after pooling the semantic features."""
    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=boxes.dtype), boxes], dim=1)
    size, scale = stage.pooler.output_size, stage.pooler.level_poolers[0].spatial_scale

    def crop(t):
        return torchvision.ops.roi_align(t, rois, size, scale, sampling_ratio=0, aligned=True)

    logits = stage.instance_logits(x)[torch.arange(len(x)), labels]
    sem = F.relu(crop(F.relu(stage.semantic_transform_in(semantic_feat))))
    sem = F.relu(stage.semantic_transform_out(sem))
    masks = torch.stack([logits.sigmoid(), crop(semantic_logits.sigmoid())[:, 0]], dim=1)
    y = F.relu(stage.reduce(torch.cat([x, sem, masks], dim=1)))
    branches = [F.relu(F.conv2d(y, c.weight, c.bias, padding=c.dilation, dilation=c.dilation)) for c in stage.dilated_convs]
    y = F.relu(stage.merge(branches[0] + branches[1] + branches[2]))
    y = F.relu(stage.fuse_transform_out(y))
    return logits, torch.cat([y, masks], dim=1)


def test_sfm_stage_equals_its_plain_composition():
    """Forward and gradients, float64; the stage runs channels-last with in-place ReLUs."""
    stage = SFMStage(16, 24, 4, 14, 3, [1, 3, 5], "instseg").double()
    g = torch.Generator().manual_seed(0)
    for p in stage.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.2
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 6.0, 60.0, 62.0], [-4.0, 20.0, 30.0, 70.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0, 1])
    inputs = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in [(3, 16, 14, 14), (1, 24, 16, 16), (1, 1, 16, 16)]]
    weights = torch.randn(3, 14, 14, generator=g, dtype=torch.float64), torch.randn(3, 8, 14, 14, generator=g, dtype=torch.float64)
    results = []
    def ours(x, semantic_feat, semantic_logits):
        return stage(x, stage.transform_semantic(semantic_feat), semantic_logits.sigmoid(), [Boxes(boxes)], labels)

    for run in (ours, lambda *a: plain_sfm(stage, *a, boxes, labels)):
        stage.zero_grad()
        x = [t.clone().requires_grad_() for t in inputs]
        logits, out = run(*x)
        ((logits * weights[0]).sum() + (out * weights[1]).sum()).backward()
        results.append([logits, out] + [t.grad for t in x] + [p.grad.clone() for p in stage.parameters()])
    for ours, plain in zip(*results):
        assert torch.allclose(ours, plain, atol=1e-10)


def test_sfm_stages_crop_the_semantic_maps_at_their_stride():
    cfg = build_config(SHAPES, ["MODEL.REFINEMASK.SEMANTIC_IN_FEATURE", "p3", "MODEL.DEVICE", "cpu"])
    stages = build_model(cfg).roi_heads.mask_head.stages
    assert [s.pooler.level_poolers[0].spatial_scale for s in stages] == [1 / 8] * 3


def plain_head(head, x, semantic_feat, semantic_logits, boxes, labels, mask_align_corners=True):
    """The official RefineMaskHead.forward, op by op in NCHW: per stage the SFM (plain_sfm), then its
    fused features upsampled 2x bilinearly with align_corners False (mmcv's "bilinear" upsample layer)
    and its two mask channels (the stage's mask and the foreground crop) re-interpolated to 2S with
    align_corners True; the last classifier for all K classes at 112, then the RoI's class picked."""
    for conv in head.instance_convs:
        x = conv(x)
    stage_logits = []
    for stage in head.stages:
        logits, out = plain_sfm(stage, x, semantic_feat, semantic_logits, boxes, labels)
        features = F.relu(F.interpolate(out[:, :-2], scale_factor=2, mode="bilinear", align_corners=False))
        masks = F.interpolate(out[:, -2:], scale_factor=2, mode="bilinear", align_corners=mask_align_corners)
        x = torch.cat([features, masks], dim=1)
        stage_logits.append(logits)
    last = head.final_instance_logits(x)
    pick = labels if last.shape[1] > 1 else torch.zeros_like(labels)
    return stage_logits + [last[torch.arange(len(x)), pick]]


@pytest.mark.parametrize("class_agnostic_last_stage", [False, True])
def test_head_equals_the_official_rules_composed_plainly(class_agnostic_last_stage):
    """Our head classifies each RoI's class only, the last mask before the 2x upsampling, runs
    channels-last and in chunks; the plain composition classifies all K classes, then picks, and
    upsamples, then classifies."""
    cfg = build_config(SHAPES, ["MODEL.REFINEMASK.CLASS_AGNOSTIC_LAST_STAGE", str(class_agnostic_last_stage)])
    head = build_model(cfg).roi_heads.mask_head.double()
    for p in head.parameters():  # away from the near-zero predictor init, so that a wrong class shows
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(0)
    c = cfg.MODEL.REFINEMASK.CONV_DIM
    rois = torch.randn(3, c, 14, 14, generator=g, dtype=torch.float64)
    semantic = torch.randn(1, c, 16, 16, generator=g, dtype=torch.float64), torch.randn(1, 1, 16, 16, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 6.0, 60.0, 62.0], [5.0, 20.0, 30.0, 50.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        ours = head(rois, *semantic, [Boxes(boxes)], labels)
        plain = plain_head(head, rois, *semantic, boxes, labels)
        former = plain_head(head, rois, *semantic, boxes, labels, mask_align_corners=False)
    assert [x.shape[-1] for x in ours] == [14, 28, 56, 112]
    for a, b in zip(ours, plain):
        assert torch.allclose(a, b, atol=1e-10)
    # the mask channels' align_corners matters: upsampling them with False (as the features) differs
    assert not torch.allclose(ours[1], former[1], atol=1e-6) and not torch.allclose(ours[-1], former[-1], atol=1e-6)


def test_roi_chunks_keep_each_roi_with_its_image():
    boxes = [Boxes(torch.arange(5.0)[:, None].expand(5, 4)), Boxes(torch.zeros(0, 4)), Boxes(10 + torch.arange(4.0)[:, None].expand(4, 4))]
    chunks = list(mask_head._roi_chunks(boxes, 3))
    assert [(start, end) for start, end, _ in chunks] == [(0, 3), (3, 6), (6, 9)]
    assert [[b.tensor[:, 0].tolist() for b in chunk] for _, _, chunk in chunks] == [
        [[0, 1, 2], [], []],
        [[3, 4], [], [10]],
        [[], [], [11, 12, 13]],
    ]
    assert [(start, end, [len(b) for b in chunk]) for start, end, chunk in mask_head._roi_chunks([Boxes(torch.zeros(0, 4))], 3)] == [(0, 0, [0])]


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_head_in_chunks_equals_the_head_on_all_rois(monkeypatch, chunk_size):
    """Forward and gradients of 7 RoIs on 3 images (one without RoIs), in chunks that cross images."""
    head = build_model(build_config(SHAPES)).roi_heads.mask_head.double()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(0)
    c = head.instance_convs[0].in_channels
    inputs = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in [(7, c, 14, 14), (3, c, 16, 16), (3, 1, 16, 16)]]
    corners = torch.rand(7, 2, generator=g, dtype=torch.float64) * 30
    all_boxes = torch.cat([corners, corners + 8 + torch.rand(7, 2, generator=g, dtype=torch.float64) * 30], dim=1)
    boxes = [Boxes(all_boxes[:4]), Boxes(all_boxes[:0]), Boxes(all_boxes[4:])]
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    results = []
    for size in (100, chunk_size):
        monkeypatch.setattr(mask_head, "ROIS_PER_CHUNK", size)
        head.zero_grad()
        x = [t.clone().requires_grad_() for t in inputs]
        stage_logits = head(*x, boxes, labels)
        sum((logits * (i + 1)).sum() for i, logits in enumerate(stage_logits)).backward()
        results.append(stage_logits + [t.grad for t in x] + [p.grad.clone() for p in head.parameters()])
    for whole, chunked in zip(*results):
        assert torch.allclose(whole, chunked, atol=1e-10)


def test_loss_masks_later_stages_to_the_boundary_region():
    head, inst = _head_and_instances()
    logits = [torch.zeros(2, s, s, requires_grad=True) for s in (14, 28, 56, 112)]
    head.losses(logits, [inst]).backward()
    # stages 0 and 1 train on every pixel; stages 2 and 3 only on part of the RoI
    assert (logits[0].grad != 0).all() and (logits[1].grad != 0).all()
    for stage in (2, 3):
        trained = logits[stage].grad != 0
        assert trained.any() and not trained.all()
    # changing a stage-3 logit outside the trained region does not change the loss
    outside = (logits[3].grad == 0).nonzero()[0].tolist()
    changed = [x.detach().clone() for x in logits]
    changed[3][tuple(outside)] = 10.0
    assert torch.equal(head.losses(changed, [inst]), head.losses([x.detach() for x in logits], [inst]))


def test_model_trains_and_predicts_112_masks(two_box_batch):
    model = build_model(build_config(SHAPES))
    image, inst = two_box_batch[0]["image"], two_box_batch[0]["instances"]
    model.train()
    with EventStorage():
        losses = model(two_box_batch)
    assert {"loss_mask", "loss_semantic", "loss_cls", "loss_box_reg"} <= set(losses)
    sum(losses.values()).backward()
    assert model.roi_heads.semantic_head.logits.weight.grad.abs().sum() > 0
    model.eval()
    proposals = ground_truth_as_detections(inst)
    with torch.no_grad():
        features = model.backbone((image[None] - model.pixel_mean) / model.pixel_std)
        (out,) = model.roi_heads.forward_with_given_boxes(features, [proposals])
    assert out.pred_masks.shape == (2, 1, 112, 112)


def test_full_model_parameter_names():
    keys = {k: v.shape for k, v in build_model(build_config("configs/RefineMask/refinemask_R_50_FPN_1x.yaml", ["MODEL.WEIGHTS", ""])).state_dict().items()}
    expected = {
        "roi_heads.semantic_head.convs.3.weight": (256, 256, 3, 3),
        "roi_heads.semantic_head.logits.weight": (1, 256, 1, 1),
        "roi_heads.mask_head.instance_convs.1.weight": (256, 256, 3, 3),
        "roi_heads.mask_head.stages.0.reduce.weight": (256, 514, 1, 1),
        "roi_heads.mask_head.stages.1.dilated_convs.2.weight": (128, 128, 3, 3),
        "roi_heads.mask_head.stages.2.fuse_transform_out.weight": (30, 64, 1, 1),
        "roi_heads.mask_head.stages.0.instance_logits.weight": (80, 256, 1, 1),
        "roi_heads.mask_head.final_instance_logits.weight": (80, 32, 1, 1),
        "roi_heads.box_predictor.cls_score.weight": (81, 1024),
    }
    for key, shape in expected.items():
        assert keys.get(key) == shape, key


def test_configs_build_the_refinemask_meta_architecture():
    from refinemask import RefineMask

    assert type(build_model(build_config(SHAPES))) is RefineMask
    with pytest.raises(ValueError, match="META_ARCHITECTURE RefineMask needs MODEL.ROI_HEADS.NAME RefineROIHeads"):
        build_model(build_config(SHAPES, ["MODEL.ROI_HEADS.NAME", "InstSegROIHeads"]))


def test_semantic_outputs_reach_the_mask_head_as_arguments(two_box_batch, monkeypatch):
    """The RoI heads leave the backbone's feature dict as it was and hand the mask head the
    semantic head's features and foreground logits (the paper head) as arguments."""
    model = build_model(build_config(SHAPES)).eval()
    image, inst = two_box_batch[0]["image"], two_box_batch[0]["instances"]
    seen = {}
    head_forward = model.roi_heads.mask_head.forward

    def recording_forward(x, *maps_boxes_labels):
        seen["args"] = maps_boxes_labels
        return head_forward(x, *maps_boxes_labels)

    monkeypatch.setattr(model.roi_heads.mask_head, "forward", recording_forward)
    with torch.no_grad():
        features = model.backbone((image[None] - model.pixel_mean) / model.pixel_std)
        keys = set(features)
        model.roi_heads.forward_with_given_boxes(features, [ground_truth_as_detections(inst)])
        semantic = model.roi_heads.semantic_head(features["p2"])
    assert set(features) == keys
    feat, logits, boxes, labels = seen["args"]
    torch.testing.assert_close(feat, semantic.features)
    torch.testing.assert_close(logits, semantic.foreground_logits)
    assert labels.tolist() == inst.gt_classes.tolist()


def test_refinemask_heads_have_no_keypoint_branch():
    with pytest.raises(ValueError, match="MODEL.KEYPOINT_ON must be False"):
        build_model(build_config(SHAPES, ["MODEL.KEYPOINT_ON", "True"]))
