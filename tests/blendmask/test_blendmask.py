"""BlendMask: semantic targets from instance masks, AdelaiDet parameter names, the blender's loss with
either implementation, a training step + inference of a small model, FCOS built by
MODEL.PROPOSAL_GENERATOR.NAME, and the attentions BlendMask computes at FCOS's positives and
detections."""
import pytest
import torch
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, build_model
from detectron2.structures import BitMasks, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from instseg.engine import build_config
from instseg.modeling import semantic_targets

from helpers import fcos_boxes_across_borders

SHAPES = "configs/BlendMask/R_18_shapes.yaml"


def test_semantic_targets_from_instances():
    a = Instances((4, 6))
    masks = torch.zeros(2, 4, 6, dtype=torch.bool)
    masks[0, :, :3] = True
    masks[1, 1:3, 2:5] = True  # overlaps the first; drawn later, so it wins
    a.gt_masks = BitMasks(masks)
    a.gt_classes = torch.tensor([0, 2])
    b = Instances((2, 2))
    b.gt_masks = PolygonMasks([[[0, 0, 2, 0, 2, 2, 0, 2]]])
    b.gt_classes = torch.tensor([1])
    out = semantic_targets([a, b], (4, 8), num_classes=3, out_size=(4, 8))
    expected = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0],
                             [1, 1, 3, 3, 3, 0, 0, 0],
                             [1, 1, 3, 3, 3, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0, 0]])
    assert torch.equal(out[0], expected)
    assert torch.equal(out[1, :2, :2], torch.full((2, 2), 2)) and out[1].sum() == 8
    # the targets of a stride-2 feature map: every other pixel from the first
    assert torch.equal(semantic_targets([a, b], (4, 8), 3, out_size=(2, 4)), out[:, ::2, ::2])
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES"):
        semantic_targets([a], (4, 8), num_classes=2, out_size=(4, 8))


def test_parameter_names_match_adelaidet():
    keys = {k: v.shape for k, v in build_model(build_config("configs/BlendMask/R_50_1x.yaml", ["MODEL.WEIGHTS", ""])).state_dict().items()}
    expected = {
        "top_layer.weight": (784, 256, 3, 3),
        "top_layer.bias": (784,),
        "basis_module.refine.0.0.weight": (128, 256, 3, 3),
        "basis_module.refine.2.1.running_mean": (128,),
        "basis_module.tower.2.0.weight": (128, 128, 3, 3),
        "basis_module.tower.4.0.weight": (128, 128, 3, 3),
        "basis_module.tower.5.weight": (4, 128, 1, 1),
        "basis_module.seg_head.0.weight": (128, 256, 3, 3),
        "basis_module.seg_head.6.weight": (81, 128, 1, 1),
        "proposal_generator.fcos_head.cls_tower.9.weight": (256, 256, 3, 3),
        "proposal_generator.fcos_head.cls_logits.weight": (80, 256, 3, 3),
        "backbone.fpn_lateral3.weight": (256, 512, 1, 1),
        "backbone.top_block.p6.weight": (256, 256, 3, 3),
        "backbone.bottom_up.res5.2.conv3.weight": (2048, 512, 1, 1),
    }
    for key, shape in expected.items():
        assert keys.get(key) == shape, key
    assert not any(".scales." in k for k in keys)  # USE_SCALE False, as in AdelaiDet's checkpoints
    rt = {k for k in build_model(build_config("configs/BlendMask/RT_R_50_4x_bn-head_syncbn_shtw.yaml", ["MODEL.WEIGHTS", ""])).state_dict()}
    assert "proposal_generator.fcos_head.share_tower.1.2.running_mean" in rt
    assert "basis_module.tower.4.weight" in rt and "backbone.top_block.p6.weight" not in rt


def test_fused_and_reference_blenders_give_the_same_losses(two_box_batch):
    losses = {}
    for impl in ("fused", "reference"):
        torch.manual_seed(0)
        model = build_model(build_config(SHAPES, ["MODEL.BLENDMASK.BLENDER_IMPL", impl])).train()
        with EventStorage():
            losses[impl] = model(two_box_batch)
    assert set(losses["fused"]) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_basis_sem"}
    for key in losses["fused"]:
        torch.testing.assert_close(losses["fused"][key], losses["reference"][key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config, bases_stride", [(SHAPES, 4), ("configs/BlendMask/R_18_P2_shapes.yaml", 2)])
def test_small_model_trains_and_predicts_masks(two_box_batch, config, bases_stride):
    model = build_model(build_config(config))
    model.train()
    with EventStorage():
        losses = model(two_box_batch)
    sum(losses.values()).backward()
    assert model.top_layer.weight.grad.abs().sum() > 0
    assert model.basis_module.tower[-1].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (out,) = model(two_box_batch)
        bases, _ = model.basis_module(model.backbone(model.preprocess_image(two_box_batch).tensor))
    assert bases.shape[-2:] == (128 // bases_stride, 128 // bases_stride)
    pred = out["instances"]
    assert pred.pred_masks.shape[1:] == (128, 128) and pred.has("scores") and pred.has("pred_classes")


@pytest.mark.parametrize("clip", [False, True])
def test_the_blender_crops_the_boxes_nms_kept(two_box_batch, monkeypatch, clip):
    """AdelaiDet blends each mask in its unclipped box (MODEL.FCOS.CLIP_BEFORE_NMS False, the
    default); only detectron2's detector_postprocess clips the boxes. Clipping before NMS blends in
    the clipped box instead."""
    model = build_model(build_config(SHAPES, ["MODEL.FCOS.CLIP_BEFORE_NMS", str(clip)])).eval()
    fcos_boxes_across_borders(model.proposal_generator)
    blended = []
    predict = model.blender.predict

    def recording_predict(bases, detections):
        blended.append(torch.cat([d.pred_boxes.tensor for d in detections]))
        predict(bases, detections)

    monkeypatch.setattr(model.blender, "predict", recording_predict)
    with torch.no_grad():
        (out,) = model(two_box_batch)
    (boxes,) = blended
    inside = (boxes >= 0).all(dim=1) & (boxes <= 128).all(dim=1)
    assert len(boxes) > 0 and bool(inside.all()) == clip
    drawn = out["instances"].pred_boxes.tensor
    assert len(drawn) > 0 and bool(((drawn >= 0) & (drawn <= 128)).all())


def _dense_attentions(model, predictions):
    """The top layer run densely on FCOS's box tower: (N, L, K * A * A) in FCOS's location order."""
    d = model.top_layer.out_channels
    return torch.cat(
        [model.top_layer(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, d) for f in predictions.box_tower], dim=1
    )


def test_attentions_at_the_positives_and_detections_are_the_dense_top_layer_there(two_box_batch, monkeypatch):
    """BlendMask computes its attentions itself, at the locations FCOS's positives (training) and
    kept detections (inference) report: the dense top layer's values there."""
    torch.manual_seed(0)
    model = build_model(build_config(SHAPES, ["MODEL.BLENDMASK.BLENDER_IMPL", "reference"]))
    predictions_seen, blended = [], []
    predict = model.proposal_generator.predict

    def recording_predict(features, **kwargs):
        predictions_seen.append(predict(features, **kwargs))
        return predictions_seen[-1]

    monkeypatch.setattr(model.proposal_generator, "predict", recording_predict)
    losses = model.blender.losses

    def recording_losses(bases, positives, attentions, gt_instances):
        blended.append((positives, attentions))
        return losses(bases, positives, attentions, gt_instances)

    monkeypatch.setattr(model.blender, "losses", recording_losses)
    model.train()
    with EventStorage():
        model(two_box_batch * 2)
    (pred,) = predictions_seen
    assert pred.box_tower is not None and len(pred.box_tower) == len(pred.level_sizes)
    ((positives, attentions),) = blended
    assert len(positives.loc_inds) > 0
    dense = _dense_attentions(model, pred)
    torch.testing.assert_close(attentions, dense[positives.image_inds, positives.loc_inds])

    model.eval()
    fcos_boxes_across_borders(model.proposal_generator)
    predictions_seen.clear()
    detections_seen = []
    blender_predict = model.blender.predict
    monkeypatch.setattr(
        model.blender, "predict", lambda bases, dets: detections_seen.append(dets) or blender_predict(bases, dets)
    )
    with torch.no_grad():
        outputs = model(two_box_batch * 2)
        (pred,) = predictions_seen
        dense = _dense_attentions(model, pred)
    (detections,) = detections_seen
    for i, (det, out) in enumerate(zip(detections, outputs)):
        assert len(det) > 0
        assert torch.equal(det.fpn_levels, pred.levels[det.location_inds])
        torch.testing.assert_close(det.top_feat, dense[i, det.location_inds])
        torch.testing.assert_close(out["instances"].top_feat, det.top_feat)


def test_top_layer_is_blendmasks_and_fcos_holds_none():
    """Released AdelaiDet checkpoints keep loading: the top layer stays top_layer.* (BlendMask's, as in
    AdelaiDet), not a part of FCOS's head."""
    keys = build_model(build_config(SHAPES)).state_dict()
    assert {k for k in keys if "top_layer" in k} == {"top_layer.weight", "top_layer.bias"}
    assert not any(k.startswith("proposal_generator.") and "top" in k.split(".", 1)[1] for k in keys)


def test_fcos_is_built_by_proposal_generator_name():
    from instseg.modeling import FCOS

    model = build_model(build_config(SHAPES))
    assert type(model.proposal_generator) is FCOS
    cfg = build_config(SHAPES)
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "FCOS"
    # a subclass registered under its own name is what that name builds
    class TestFCOSSubclass(FCOS):
        pass

    PROPOSAL_GENERATOR_REGISTRY.register(TestFCOSSubclass)
    try:
        model = build_model(build_config(SHAPES, ["MODEL.PROPOSAL_GENERATOR.NAME", "TestFCOSSubclass"]))
        assert type(model.proposal_generator) is TestFCOSSubclass
    finally:
        PROPOSAL_GENERATOR_REGISTRY._obj_map.pop("TestFCOSSubclass")
    with pytest.raises(KeyError, match="No object named 'FCOSS' found in 'PROPOSAL_GENERATOR' registry"):
        build_model(build_config(SHAPES, ["MODEL.PROPOSAL_GENERATOR.NAME", "FCOSS"]))
    with pytest.raises(ValueError, match="BlendMask runs on FCOS: MODEL.PROPOSAL_GENERATOR.NAME must be 'FCOS'.*'RPN'"):
        build_model(build_config(SHAPES, ["MODEL.PROPOSAL_GENERATOR.NAME", "RPN"]))
