"""RefineMask's faster-better variant (MODEL.REFINEMASK.HEAD "SimpleRefineMaskHead", the official
configs/refinemask/coco/r50-refinemask-1x-faster-better.py): its channels, the head against a plain
composition of the official rules, the BAR loss against a hand-computed case, its configs and a short
training."""
import math

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from helpers import TINY, ground_truth_as_detections
from torch.nn import functional as F

from instseg.engine import Trainer, build_config
from refinemask import SimpleRefineMaskHead, SimpleSFMStage

SHAPES = "configs/RefineMask/refinemask_faster_better_R_18_FPN_shapes.yaml"
R50 = "configs/RefineMask/refinemask_faster_better_R_50_FPN_1x.yaml"
# what the variant sets in each config (Base-RefineMask-FasterBetter-FPN.yaml)
VARIANT = {
    "MODEL.REFINEMASK.HEAD": "SimpleRefineMaskHead",
    "MODEL.REFINEMASK.CLASS_AGNOSTIC_LAST_STAGE": True,
    "MODEL.REFINEMASK.STAGE_LOSS_WEIGHTS": [0.5, 0.75, 0.75, 1.0],
}


def _flat(cfg: CfgNode, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    return out


@pytest.mark.parametrize(
    "variant, original",
    [
        ("refinemask_faster_better_R_50_FPN_1x", "refinemask_R_50_FPN_1x"),
        ("refinemask_faster_better_R_50_FPN_2x", "refinemask_R_50_FPN_2x"),
        ("refinemask_faster_better_R_101_FPN_1x", "refinemask_R_101_FPN_1x"),
        ("refinemask_faster_better_R_101_FPN_2x", "refinemask_R_101_FPN_2x"),
        ("refinemask_faster_better_R_50_FPN_1x_mmdet", "refinemask_R_50_FPN_1x_mmdet"),
        ("refinemask_faster_better_R_18_FPN_shapes", "refinemask_R_18_FPN_shapes"),
    ],
)
def test_configs_differ_from_the_originals_only_by_the_variant(variant, original):
    ours = _flat(build_config(f"configs/RefineMask/{variant}.yaml"))
    theirs = _flat(build_config(f"configs/RefineMask/{original}.yaml"))
    differing = {k for k in ours if ours[k] != theirs[k]}
    assert differing - {"OUTPUT_DIR"} == set(VARIANT)
    assert {k: ours[k] for k in VARIANT} == VARIANT
    if "OUTPUT_DIR" in differing:
        assert ours["OUTPUT_DIR"] == f"output/{variant}"


def test_unknown_head_names_the_key():
    with pytest.raises(ValueError, match="MODEL.REFINEMASK.HEAD must be one of .*'SimpleRefineMaskHead'.*got 'Fast'"):
        build_model(build_config(SHAPES, ["MODEL.REFINEMASK.HEAD", "Fast"]))


def test_head_and_semantic_head_channels():
    """The official SimpleRefineMaskHead at C = D = 256, K = 80: fusion input 2C + 1 (instance and
    semantic features, the stage's mask), fusion output C/2 - 1 (+ the mask = the next stage's C),
    classifiers 256 -> K, 128 -> K, 64 -> K and 32 -> 1; no semantic classifier, no transform of the
    semantic crop."""
    model = build_model(build_config(R50, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]))
    expected = {}

    def conv(name, out, inp, k=1):
        expected.update({f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)})

    for i in range(4):
        conv(f"roi_heads.semantic_head.convs.{i}", 256, 256, 3)
    mh = "roi_heads.mask_head"
    for i in range(2):
        conv(f"{mh}.instance_convs.{i}", 256, 256, 3)
    for i, c in enumerate([256, 128, 64]):
        conv(f"{mh}.stages.{i}.semantic_transform_in", c, 256)
        conv(f"{mh}.stages.{i}.instance_logits", 80, c)
        conv(f"{mh}.stages.{i}.reduce", c, 2 * c + 1)
        for k in range(3):
            conv(f"{mh}.stages.{i}.dilated_convs.{k}", c, c, 3)
        conv(f"{mh}.stages.{i}.merge", c, c)
        conv(f"{mh}.stages.{i}.fuse_transform_out", c // 2 - 1, c)
    conv(f"{mh}.final_instance_logits", 1, 32)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith((f"{mh}.", "roi_heads.semantic_head."))}
    assert ours == expected
    assert type(model.roi_heads.mask_head) is SimpleRefineMaskHead
    assert all(type(s) is SimpleSFMStage for s in model.roi_heads.mask_head.stages)
    # one bilinear sample per bin for the semantic crops (mmcv's SimpleRoIAlign), at P2's stride
    poolers = [s.pooler.level_poolers[0] for s in model.roi_heads.mask_head.stages]
    assert [(p.sampling_ratio, p.spatial_scale) for p in poolers] == [(1, 0.25)] * 3
    assert model.roi_heads.mask_head.stage_loss_weights == [0.5, 0.75, 0.75, 1.0]


def simple_roi_align(feat, boxes, size, scale):
    """mmcv's SimpleRoIAlign: a bilinear sample (grid_sample, zero outside the map) at the centre of
    each of the size x size bins of each box. feat (1, C, H, W), boxes (M, 4) -> (M, C, size, size)."""
    t = (torch.arange(size, dtype=feat.dtype) + 0.5) / size
    x = boxes[:, 0:1] + t * (boxes[:, 2:3] - boxes[:, 0:1])  # (M, size)
    y = boxes[:, 1:2] + t * (boxes[:, 3:4] - boxes[:, 1:2])
    height, width = feat.shape[-2:]
    gx, gy = x * scale / width * 2 - 1, y * scale / height * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], dim=-1)
    return F.grid_sample(feat.expand(len(boxes), -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def plain_simple_head(head, x, semantic_feat, boxes, labels):
    """The official SimpleRefineMaskHead's forward, op by op in NCHW: per stage, the stage's logits of
    the RoI's class from its input, the semantic crop, [x, crop, sigmoid(logits)] fused (reduce,
    dilated branches + global average pool, merge, transform out), the mask appended again and all
    upsampled 2x but after the last stage; the last classifier at that stage's size, its logits
    upsampled with align_corners=True."""
    for conv in head.instance_convs:
        x = F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1))
    rows = torch.arange(len(x))
    stage_logits = []
    for i, stage in enumerate(head.stages):
        logits = stage.instance_logits(x)[rows, labels]
        sem = simple_roi_align(F.relu(stage.semantic_transform_in(semantic_feat)), boxes, x.shape[-1], 0.25)
        mask = logits.sigmoid()[:, None]
        y = F.relu(stage.reduce(torch.cat([x, sem, mask], dim=1)))
        branches = [F.relu(F.conv2d(y, c.weight, c.bias, padding=c.dilation, dilation=c.dilation)) for c in stage.dilated_convs]
        y = F.relu(stage.merge(branches[0] + branches[1] + branches[2] + F.avg_pool2d(y, y.shape[-1])))
        x = torch.cat([F.relu(stage.fuse_transform_out(y)), mask], dim=1)
        if i < len(head.stages) - 1:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        stage_logits.append(logits)
    last = head.final_instance_logits(x)[rows, torch.zeros_like(labels)]  # class-agnostic
    stage_logits.append(F.interpolate(last[:, None], scale_factor=2, mode="bilinear", align_corners=True)[:, 0])
    return stage_logits


def test_head_equals_the_official_rules_composed_plainly():
    """Forward and gradients, float64, boxes whose bin centres lie inside the semantic map (where
    RoIAlign with one sample per bin and SimpleRoIAlign agree); our head runs channels-last, in
    chunks, with in-place ReLUs and classifies only each RoI's class."""
    head = build_model(build_config(SHAPES)).roi_heads.mask_head.double()
    for p in head.parameters():  # away from the near-zero predictor init, so that a wrong class shows
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(0)
    c = head.instance_convs[0].in_channels
    inputs = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in [(3, c, 14, 14), (1, c, 16, 16)]]
    boxes = torch.tensor([[4.0, 6.0, 40.0, 30.0], [10.0, 6.0, 60.0, 58.0], [2.0, 20.0, 30.0, 50.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0, 1])
    weights = [torch.randn(3, s, s, generator=g, dtype=torch.float64) for s in (14, 28, 56, 112)]
    results = []
    for run in (lambda x, s: head(x, s, [Boxes(boxes)], labels), lambda x, s: plain_simple_head(head, x, s, boxes, labels)):
        head.zero_grad()
        x = [t.clone().requires_grad_() for t in inputs]
        stage_logits = run(*x)
        sum((logits * w).sum() for logits, w in zip(stage_logits, weights)).backward()
        results.append(stage_logits + [t.grad for t in x] + [p.grad.clone() for p in head.parameters()])
    assert [tuple(t.shape) for t in results[0][:4]] == [(3, s, s) for s in (14, 28, 56, 112)]
    for ours, plain in zip(*results):
        assert torch.allclose(ours, plain, atol=1e-10)


def band(size: int, top: int, bottom: int) -> torch.Tensor:
    """(size, size) bool: the rows [top, bottom) across the whole width."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:bottom] = True
    return mask


def band_boundary(size: int, top: int, bottom: int, width: int) -> torch.Tensor:
    """The boundary region of band(size, top, bottom): the rows within `width` of its two edges, and
    its pixels within `width` of the frame's left and right sides (outside the frame is background).
    For such bands the official rule (more than a tenth of the (2 width + 1)^2 window of the other
    label) selects the same pixels."""
    region = torch.zeros(size, size, dtype=torch.bool)
    region[max(top - width, 0) : top + width] = True
    region[bottom - width : bottom + width] = True
    region[top:bottom, :width] = True
    region[top:bottom, size - width :] = True
    return region


def test_bar_loss_of_a_hand_computed_case():
    """One RoI covering a 112 x 112 image whose mask is the band of rows [32, 80): targets rows
    [4, 10), [8, 20), [16, 40), [32, 80) at 14, 28, 56, 112. Stage logits: 0 at 14; +2 on rows
    [10, 22) of 28, -2 elsewhere; 1 at 56; -1 at 112. BARCrossEntropyLoss (stage weights 0.5, 0.75,
    0.75, 1.0, boundary width 2, start stage 1): stages 0 and 1 BCE over the RoI; stage 2 BCE over the
    boundary regions of the 28 prediction (rows [10, 22)) and of the 28 target, upsampled 2x; stage 3
    over those of the merged 56 prediction (rows [18, 46): the 28 one upsampled, with the 56 logits
    (> 0) inside its 1-pixel boundary, rows [18, 22) and [42, 46)) and of the 56 target."""
    head = build_model(build_config(SHAPES)).roi_heads.mask_head
    inst = Instances((112, 112))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 112.0, 112.0]]))
    inst.gt_masks = BitMasks(band(112, 32, 80)[None])
    inst.gt_classes = torch.tensor([1])
    stage1 = torch.where(band(28, 10, 22), 2.0, -2.0)
    stage_logits = [torch.zeros(1, 14, 14), stage1[None], torch.full((1, 56, 56), 1.0), torch.full((1, 112, 112), -1.0)]
    stage_logits = [t.double() for t in stage_logits]

    def bce(logit, target):
        return math.log1p(math.exp(-logit)) if target else math.log1p(math.exp(logit))

    loss0 = math.log(2)
    # rows 8, 9 (target only) and 20, 21 (prediction only) of 28 are wrong
    loss1 = (24 * bce(2, True) + 4 * bce(2, False)) / 28

    def region_loss(region, target, logit):
        region = region.repeat_interleave(2, 0).repeat_interleave(2, 1)
        fg, bg = int((region & target).sum()), int((region & ~target).sum())
        return (fg * bce(logit, True) + bg * bce(logit, False)) / (fg + bg)

    loss2 = region_loss(band_boundary(28, 10, 22, 2) | band_boundary(28, 8, 20, 2), band(56, 16, 40), 1.0)
    loss3 = region_loss(band_boundary(56, 18, 46, 2) | band_boundary(56, 16, 40, 2), band(112, 32, 80), -1.0)
    expected = 0.5 * loss0 + 0.75 * loss1 + 0.75 * loss2 + 1.0 * loss3
    assert head.losses(stage_logits, [inst]).item() == pytest.approx(expected, rel=1e-12)
    # the stage weights are the variant's: the same case with the original head's differs
    head.stage_loss_weights = [0.25, 0.5, 0.75, 1.0]
    assert head.losses(stage_logits, [inst]).item() == pytest.approx(expected - 0.25 * loss0 - 0.25 * loss1, rel=1e-12)


def test_model_trains_without_semantic_loss_and_predicts_112_masks(two_box_batch):
    model = build_model(build_config(SHAPES))
    assert model.roi_heads.semantic_head.logits is None
    image, inst = two_box_batch[0]["image"], two_box_batch[0]["instances"]
    model.train()
    with EventStorage():
        losses = model(two_box_batch)
    assert {"loss_mask", "loss_cls", "loss_box_reg"} <= set(losses) and "loss_semantic" not in losses
    sum(losses.values()).backward()
    # the semantic head trains through the stages' semantic crops
    assert model.roi_heads.semantic_head.convs[0].weight.grad.abs().sum() > 0
    model.eval()
    proposals = ground_truth_as_detections(inst)
    with torch.no_grad():
        features = model.backbone((image[None] - model.pixel_mean) / model.pixel_std)
        _, semantic_logits = model.roi_heads.semantic_head(features["p2"])
        (out,) = model.roi_heads.forward_with_given_boxes(features, [proposals])
    assert semantic_logits is None
    assert out.pred_masks.shape == (2, 1, 112, 112)
    assert 0 <= out.pred_masks.min() and out.pred_masks.max() <= 1


@pytest.mark.slow
def test_short_training_on_the_shapes_config(tmp_path):
    """A few iterations of the trainer (helpers.TINY, no evaluation), as tests/e2e/test_determinism.py."""
    cfg = build_config(SHAPES, TINY + ["DATASETS.TEST", "()", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)])
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    histories = trainer.storage.histories()
    assert "loss_mask" in histories and "loss_semantic" not in histories
    assert all(math.isfinite(v) for v, _ in histories["total_loss"].values())
    for key in ("roi_heads.semantic_head.convs.0.weight", "roi_heads.mask_head.stages.2.reduce.weight",
                "roi_heads.mask_head.final_instance_logits.weight"):
        assert not torch.equal(before[key], after[key]), key
