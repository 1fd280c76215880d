"""CenterMask components: eSE and spatial attention against plain formulas, VoVNet shapes and
centermask2 parameter names, Eq. 2 level assignment, MaskIoU targets, and the built model."""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from centermask import VOVNET_SPECS, MaskIoUHead, SpatialAttention, VoVNet, maskiou_targets
from centermask.vovnet import EffectiveSE
from instseg.engine import build_config
from instseg.layers import ROIPooler, assign_boxes_by_image_ratio

from helpers import fcos_boxes_across_borders

LITE_SHAPES = "configs/CenterMask/centermask_lite_V_19_eSE_shapes.yaml"


def test_effective_se_matches_formula():
    torch.manual_seed(0)
    ese = EffectiveSE(6)
    x = torch.randn(2, 6, 5, 7)
    pooled = x.mean(dim=(2, 3))  # (N, C)
    fc = pooled @ ese.fc.weight[:, :, 0, 0].T + ese.fc.bias
    expected = x * (torch.clamp(fc + 3, 0, 6) / 6)[:, :, None, None]
    torch.testing.assert_close(ese(x), expected)


def test_spatial_attention_matches_formula():
    torch.manual_seed(0)
    sam = SpatialAttention()
    x = torch.randn(3, 8, 14, 14)
    maps = torch.stack([x.mean(dim=1), x.max(dim=1).values], dim=1)
    expected = x * torch.sigmoid(F.conv2d(maps, sam.conv.weight, padding=1))
    torch.testing.assert_close(sam(x), expected)


@pytest.mark.parametrize("name", sorted(VOVNET_SPECS))
def test_vovnet_output_shapes(name):
    spec = VOVNET_SPECS[name]
    net = VoVNet(spec, 3, ["stage2", "stage3", "stage4", "stage5"], norm="BN").eval()
    out = net(torch.zeros(1, 3, 64, 96))
    for i, stage in enumerate(["stage2", "stage3", "stage4", "stage5"]):
        stride = 4 * 2**i
        assert out[stage].shape == (1, spec.stage_out_ch[i], math.ceil(64 / stride), math.ceil(96 / stride))
        assert net.output_shape()[stage] == ShapeSpec(channels=spec.stage_out_ch[i], stride=stride)


def test_vovnet_parameter_names_and_identity_blocks():
    net = VoVNet(VOVNET_SPECS["V-39-eSE"], 3, ["stage5"])
    keys = {k: v.shape for k, v in net.state_dict().items()}
    assert keys["stem.stem_1/conv.weight"] == (64, 3, 3, 3)
    assert keys["stem.stem_3/conv.weight"] == (128, 64, 3, 3)
    assert keys["stage2.OSA2_1.layers.0.OSA2_1_0/conv.weight"] == (128, 128, 3, 3)
    assert keys["stage2.OSA2_1.concat.OSA2_1_concat/conv.weight"] == (256, 128 + 5 * 128, 1, 1)
    assert keys["stage2.OSA2_1.ese.fc.weight"] == (256, 256, 1, 1)
    assert "stage4.OSA4_2.layers.4.OSA4_2_4/norm.running_var" in keys
    assert not net.stage4.OSA4_1.identity and net.stage4.OSA4_2.identity
    dw = VoVNet(VOVNET_SPECS["V-19-slim-dw-eSE"], 3, ["stage5"]).state_dict()
    assert dw["stem.stem_2/dw_conv3x3.weight"].shape == (64, 1, 3, 3)
    assert dw["stage3.OSA3_1.conv_reduction.OSA3_1_reduction_0/conv.weight"].shape == (80, 112, 1, 1)
    assert dw["stage3.OSA3_1.layers.2.OSA3_1_2/pw_conv1x1.weight"].shape == (80, 80, 1, 1)


def test_vovnet_freeze_at():
    net = VoVNet(VOVNET_SPECS["V-19-slim-eSE"], 3, ["stage5"], norm="BN", freeze_at=2)
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.stage2.parameters())
    assert all(p.requires_grad for p in net.stage3.parameters())
    assert type(net.stage2.OSA2_1.concat[1]).__name__ == "FrozenBatchNorm2d"


def test_adaptive_level_assignment_eq2():
    # image 800 x 800: k = ceil(5 - log2(A_img / A_box)), clamped to [3, 5], minus k_min = 3
    boxes = Boxes(torch.tensor([[0, 0, 400, 400], [0, 0, 800, 800], [0, 0, 100, 100], [0, 0, 565, 565],
                                [0, 0, 566, 566.0]]))
    levels = assign_boxes_by_image_ratio([boxes], [(800, 800)], 3, 5)
    # ratios 4 (k=3), 1 (k=5), 64 (k=-1 -> 3), 2.005 (k=ceil(3.996)=4), 1.998 (k=ceil(4.001)=5)
    assert levels.tolist() == [0, 2, 0, 1, 2]


def test_ratio_pooler_pools_each_box_on_its_level():
    feats = [torch.full((1, 1, 64 // 2**i, 64 // 2**i), float(i)) for i in range(3)]
    pooler = ROIPooler(2, (1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2", assign_criterion="ratio")
    boxes = [Boxes(torch.tensor([[0, 0, 100, 100], [0, 0, 512, 512.0]]))]
    out = pooler(feats, boxes, [(512, 512)])
    assert out[:, 0, 0, 0].tolist() == [0.0, 2.0]  # small box -> P3 (value 0), whole image -> P5 (2)
    with pytest.raises(ValueError, match="needs image_sizes"):
        pooler(feats, boxes)


def _fg_instances(box, gt_mask):
    inst = Instances((8, 8))
    inst.proposal_boxes = Boxes(torch.tensor([box], dtype=torch.float32))
    inst.gt_masks = BitMasks(gt_mask[None])
    return inst


def test_maskiou_targets_on_hand_made_masks():
    gt = torch.zeros(8, 8, dtype=torch.bool)
    gt[0:4, 0:4] = True  # a 4 x 4 square in the box (0, 0, 4, 4)
    full = torch.full((1, 4, 4), 5.0)
    half = full.clone()
    half[:, :, 2:] = -5.0  # left half predicted
    inst = _fg_instances([0, 0, 4, 4], gt)
    assert torch.allclose(maskiou_targets(full, [inst]), torch.tensor([1.0]))
    assert torch.allclose(maskiou_targets(half, [inst]), torch.tensor([0.5]))
    # ground truth reaching outside the box: 4 x 8 = 32 pixels, the box (0, 0, 4, 4) holds 16 of them;
    # a full prediction covers 16 of 32 -> IoU 0.5
    gt_wide = torch.zeros(8, 8, dtype=torch.bool)
    gt_wide[0:4, :] = True
    assert torch.allclose(maskiou_targets(full, [_fg_instances([0, 0, 4, 4], gt_wide)]), torch.tensor([0.5]))
    # polygons give the same target as bitmasks
    poly = Instances((8, 8))
    poly.proposal_boxes = Boxes(torch.tensor([[0, 0, 4, 4.0]]))
    poly.gt_masks = PolygonMasks([[[0, 0, 8, 0, 8, 4, 0, 4]]])
    assert torch.allclose(maskiou_targets(full, [poly]), torch.tensor([0.5]))


def test_maskiou_targets_of_float16_logits_count_large_areas_in_float32():
    gt = torch.zeros(512, 512, dtype=torch.bool)
    gt[:400, :] = True  # 204800 pixels, past float16's largest value (65504); the box holds 160000
    inst = Instances((512, 512))
    inst.proposal_boxes = Boxes(torch.tensor([[0, 0, 400, 400.0]]))
    inst.gt_masks = BitMasks(gt[None])
    full = torch.full((1, 4, 4), 5.0, dtype=torch.float16)
    assert torch.allclose(maskiou_targets(full, [inst]), torch.tensor([160000 / 204800]))


def test_full_centermask_parameter_names():
    cfg = build_config("configs/CenterMask/centermask_V_39_eSE_FPN_ms_3x.yaml")
    keys = {k: v.shape for k, v in build_model(cfg).state_dict().items()}
    expected = {
        "backbone.bottom_up.stage4.OSA4_2.ese.fc.weight": (768, 768, 1, 1),
        "backbone.fpn_lateral3.weight": (256, 512, 1, 1),
        "backbone.top_block.p7.weight": (256, 256, 3, 3),
        "proposal_generator.fcos_head.cls_tower.9.weight": (256, 256, 3, 3),
        "proposal_generator.fcos_head.scales.4.scale": (1,),
        "roi_heads.mask_head.mask_fcn4.weight": (256, 256, 3, 3),
        "roi_heads.mask_head.spatialAtt.conv.weight": (1, 2, 3, 3),
        "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2),
        "roi_heads.mask_head.predictor.weight": (80, 256, 1, 1),
        "roi_heads.maskiou_head.maskiou_fcn1.weight": (256, 257, 3, 3),
        "roi_heads.maskiou_head.maskiou_fc1.weight": (1024, 256 * 7 * 7),
        "roi_heads.maskiou_head.maskiou.weight": (80, 1024),
    }
    for key, shape in expected.items():
        assert keys.get(key) == shape, key
    assert not any(k.startswith("roi_heads.box_") for k in keys)


def test_lite_model_trains_and_predicts_masks(two_box_batch):
    cfg = build_config(LITE_SHAPES, ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"])
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model(two_box_batch)
    assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_maskiou"} <= set(losses)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (out,) = model(two_box_batch)
    pred = out["instances"]
    assert pred.pred_masks.shape[1:] == (128, 128) and len(pred) <= 50


def test_ratio_level_of_a_box_across_the_border():
    # image 800 x 800, box (-400, 0, 400, 400): area 320000, ratio 2 -> k = ceil(5 - 1) = 4 (index 1);
    # clipped to (0, 0, 400, 400): ratio 4 -> k = 3 (index 0). centermask2 pools the unclipped box.
    boxes = Boxes(torch.tensor([[-400.0, 0.0, 400.0, 400.0]]))
    assert assign_boxes_by_image_ratio([boxes], [(800, 800)], 3, 5).tolist() == [1]
    boxes.clip((800, 800))
    assert assign_boxes_by_image_ratio([boxes], [(800, 800)], 3, 5).tolist() == [0]


@pytest.mark.parametrize("clip", [False, True])
def test_the_mask_pooler_sees_the_boxes_nms_kept(two_box_batch, monkeypatch, clip):
    """centermask2 pools (and picks the Eq. 2 level of) each detection's unclipped box
    (MODEL.FCOS.CLIP_BEFORE_NMS False, the default); detector_postprocess clips it at the end."""
    cfg = build_config(LITE_SHAPES, ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
                                     "MODEL.FCOS.CLIP_BEFORE_NMS", str(clip)])
    model = build_model(cfg).eval()
    fcos_boxes_across_borders(model.proposal_generator)
    pooled = []
    pooler = model.roi_heads.mask_pooler
    forward = pooler.forward
    monkeypatch.setattr(pooler, "forward", lambda x, boxes, sizes: pooled.append(Boxes.cat(boxes).tensor) or forward(x, boxes, sizes))
    with torch.no_grad():
        (out,) = model(two_box_batch)
    (boxes,) = pooled
    inside = (boxes >= 0).all(dim=1) & (boxes <= 128).all(dim=1)
    assert len(boxes) > 0 and bool(inside.all()) == clip
    drawn = out["instances"].pred_boxes.tensor
    assert len(drawn) > 0 and bool(((drawn >= 0) & (drawn <= 128)).all())


def test_maskiou_rescoring_sets_mask_scores_and_keeps_scores():
    """centermask2: mask_scores = scores x predicted IoU of the predicted class, unclamped; scores
    stays FCOS's score (box AP ranks by it, mask AP by mask_scores)."""
    head = MaskIoUHead(in_channels=3, resolution=4, num_classes=2, conv_dim=4, num_conv=1, loss_weight=1.0)
    with torch.no_grad():
        head.maskiou.weight.zero_()
        head.maskiou.bias.copy_(torch.tensor([1.25, -0.5]))  # predicted IoU of class 0 and of class 1
    inst = Instances((32, 32))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 20.0, 20.0]]))
    inst.scores = torch.tensor([0.8, 0.6])
    inst.pred_classes = torch.tensor([0, 1])
    inst.pred_masks = torch.rand(2, 1, 8, 8)
    empty = inst[:0]
    head.rescore(torch.randn(2, 2, 4, 4), [inst, empty])
    assert torch.allclose(inst.mask_scores, torch.tensor([0.8 * 1.25, 0.6 * -0.5]))
    assert inst.scores.tolist() == pytest.approx([0.8, 0.6])
    assert len(empty.mask_scores) == 0


def test_configs_build_the_centermask_meta_architecture():
    from centermask import CenterMask

    model = build_model(build_config(LITE_SHAPES))
    assert type(model) is CenterMask
    with pytest.raises(ValueError, match="META_ARCHITECTURE CenterMask needs MODEL.ROI_HEADS.NAME CenterROIHeads"):
        build_model(build_config(LITE_SHAPES, ["MODEL.ROI_HEADS.NAME", "InstSegROIHeads", "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_FC", "1"]))


def test_maskiou_needs_the_sag_mask_head():
    with pytest.raises(ValueError, match="MODEL.MASKIOU_ON needs MODEL.ROI_MASK_HEAD.NAME SpatialAttentionMaskHead"):
        build_model(build_config(LITE_SHAPES, ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]))


def test_mask_heads_train_and_predict_through_forward(two_box_batch):
    """The SAG head's forward leaves the ground-truth class's logits of each RoI for the MaskIoU head;
    the MaskIoU head's forward gives its loss in training and rescored instances at test time."""
    torch.manual_seed(0)
    heads = build_model(build_config(LITE_SHAPES)).roi_heads
    inst = _fg_instances([0, 0, 8, 8], torch.ones(8, 8, dtype=torch.bool))
    inst.gt_classes = torch.tensor([1])
    x = torch.randn(1, heads.mask_head.conv_norm_relus[0].in_channels, 14, 14)
    heads.train()
    with EventStorage():
        losses = heads.mask_head(x, [inst])
    assert set(losses) == {"loss_mask"}
    torch.testing.assert_close(inst.gt_class_mask_logits, heads.mask_head.layers(x)[:, 1])
    assert set(heads.maskiou_head(x, [inst])) == {"loss_maskiou"}
    heads.eval()
    det = Instances((16, 16), pred_boxes=Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]])), scores=torch.tensor([0.5]), pred_classes=torch.tensor([1]))
    with torch.no_grad():
        (out,) = heads.maskiou_head(x, heads.mask_head(x, [det]))
        iou = heads.maskiou_head.predict_iou(x, out.pred_masks)[0, 1]
    assert out.pred_masks.shape == (1, 1, 28, 28)
    torch.testing.assert_close(out.mask_scores, 0.5 * iou[None])
