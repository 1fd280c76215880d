"""projects/convert_refinemask_checkpoint.py: a synthetic state dict with the official RefineMask
(mmdetection) key names and shapes, of either head (RefineMaskHead, the faster-better
SimpleRefineMaskHead), converts into one that loads into our R-50 model exactly."""
import importlib.util

import pytest
import torch
from detectron2.modeling import build_model

from instseg.engine import build_config

spec = importlib.util.spec_from_file_location("convert", "projects/convert_refinemask_checkpoint.py")
convert_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert_module)


def official_r50_state_dict(num_classes=80, head="RefineMaskHead"):
    """Key names and shapes of the official r50-refinemask-1x checkpoint, or with head
    "SimpleRefineMaskHead" of one trained with r50-refinemask-1x-faster-better.py."""
    sd = {"backbone.conv1.weight": (64, 3, 7, 7)}
    sd.update({f"backbone.bn1.{p}": (64,) for p in ("weight", "bias", "running_mean", "running_var")})
    sd["backbone.bn1.num_batches_tracked"] = ()
    inplanes = 64
    for layer, (blocks, planes) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), start=1):
        for j in range(blocks):
            prefix = f"backbone.layer{layer}.{j}"
            convs = {1: (planes, inplanes if j == 0 else planes * 4, 1, 1), 2: (planes, planes, 3, 3), 3: (planes * 4, planes, 1, 1)}
            for k, shape in convs.items():
                sd[f"{prefix}.conv{k}.weight"] = shape
                sd.update({f"{prefix}.bn{k}.{p}": (shape[0],) for p in ("weight", "bias", "running_mean", "running_var")})
                sd[f"{prefix}.bn{k}.num_batches_tracked"] = ()
            if j == 0:
                sd[f"{prefix}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                sd.update({f"{prefix}.downsample.1.{p}": (planes * 4,) for p in ("weight", "bias", "running_mean", "running_var")})
        inplanes = planes * 4
    for i, c in enumerate([256, 512, 1024, 2048]):
        sd.update({f"neck.lateral_convs.{i}.conv.weight": (256, c, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (256,)})
        sd.update({f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (256,)})
    for name, out, k in (("rpn_conv", 256, 3), ("rpn_cls", 3, 1), ("rpn_reg", 12, 1)):
        sd.update({f"rpn_head.{name}.weight": (out, 256, k, k), f"rpn_head.{name}.bias": (out,)})
    for name, shape in (("shared_fcs.0", (1024, 256 * 49)), ("shared_fcs.1", (1024, 1024)),
                        ("fc_cls", (num_classes + 1, 1024)), ("fc_reg", (num_classes * 4, 1024))):
        sd.update({f"roi_head.bbox_head.{name}.weight": shape, f"roi_head.bbox_head.{name}.bias": shape[:1]})
    mh = "roi_head.mask_head"
    for i in range(2):
        sd.update({f"{mh}.instance_convs.{i}.conv.weight": (256, 256, 3, 3), f"{mh}.instance_convs.{i}.conv.bias": (256,)})
    for i in range(4):
        sd.update({f"{mh}.semantic_convs.{i}.conv.weight": (256, 256, 3, 3), f"{mh}.semantic_convs.{i}.conv.bias": (256,)})
    sd.update((_official_simple_head if head == "SimpleRefineMaskHead" else _official_refine_head)(mh, num_classes))
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randn(shape, generator=g) if shape else torch.tensor(5)) for k, shape in sd.items()}


def _official_refine_head(mh, num_classes):
    """RefineMaskHead's keys but its instance and semantic convs."""
    sd = {f"{mh}.semantic_logits.weight": (1, 256, 1, 1), f"{mh}.semantic_logits.bias": (1,)}
    for i, c in enumerate([256, 128, 64]):
        s = f"{mh}.stages.{i}"
        layers = {
            "semantic_transform_in": (c, 256, 1, 1), "semantic_transform_out": (c, c, 1, 1),
            "instance_logits": (num_classes, c, 1, 1), "fuse_conv.0": (c, 2 * c + 2, 1, 1),
            "fuse_conv.1.dilation_conv_1.conv": (c, c, 3, 3), "fuse_conv.1.dilation_conv_2.conv": (c, c, 3, 3),
            "fuse_conv.1.dilation_conv_3.conv": (c, c, 3, 3), "fuse_conv.1.merge_conv.conv": (c, c, 1, 1),
            "fuse_transform_out": (c // 2 - 2, c, 1, 1),
        }
        for name, shape in layers.items():
            sd.update({f"{s}.{name}.weight": shape, f"{s}.{name}.bias": shape[:1]})
    sd.update({f"{mh}.final_instance_logits.weight": (num_classes, 32, 1, 1), f"{mh}.final_instance_logits.bias": (num_classes,)})
    return sd


def _official_simple_head(mh, num_classes):
    """SimpleRefineMaskHead's keys but its instance and semantic convs (RefineMaskHead's): per
    SimpleSFMStage semantic_transform_in, fuse_conv (a 1x1 conv on 2C + 1 channels, then
    MultiBranchFusionAvg's ConvModules) and fuse_transform_out (C/2 - 1 outputs); the classifiers in
    stage_instance_logits, stage_num_classes [K, K, K, 1]. No semantic_logits, no semantic_transform_out."""
    sd = {}
    for i, c in enumerate([256, 128, 64]):
        layers = {
            "semantic_transform_in": (c, 256, 1, 1), "fuse_conv.0": (c, 2 * c + 1, 1, 1),
            "fuse_conv.1.dilation_conv_1.conv": (c, c, 3, 3), "fuse_conv.1.dilation_conv_2.conv": (c, c, 3, 3),
            "fuse_conv.1.dilation_conv_3.conv": (c, c, 3, 3), "fuse_conv.1.merge_conv.conv": (c, c, 1, 1),
            "fuse_transform_out": (c // 2 - 1, c, 1, 1),
        }
        for name, shape in layers.items():
            sd.update({f"{mh}.stages.{i}.{name}.weight": shape, f"{mh}.stages.{i}.{name}.bias": shape[:1]})
    for j, (k, c) in enumerate(zip([num_classes] * 3 + [1], [256, 128, 64, 32])):
        sd.update({f"{mh}.stage_instance_logits.{j}.weight": (k, c, 1, 1), f"{mh}.stage_instance_logits.{j}.bias": (k,)})
    return sd


def _load_converted(official: dict, config: str) -> dict:
    """Convert `official`, check that it names exactly the model's parameters with their shapes, load
    it strictly and return the model's state dict."""
    converted = convert_module.convert(official)
    model = build_model(build_config(config))
    ours = model.state_dict()
    assert set(converted) == set(ours), (set(ours) - set(converted), set(converted) - set(ours))
    for key, value in converted.items():
        assert value.shape == ours[key].shape, key
    model.load_state_dict(converted, strict=True)
    return model.state_dict()


def test_official_checkpoint_loads_exactly():
    official = official_r50_state_dict()
    loaded = _load_converted(official, "configs/RefineMask/refinemask_R_50_FPN_1x_mmdet.yaml")
    assert torch.equal(loaded["roi_heads.mask_head.stages.1.dilated_convs.2.weight"],
                       official["roi_head.mask_head.stages.1.fuse_conv.1.dilation_conv_3.conv.weight"])
    assert torch.equal(loaded["backbone.bottom_up.res3.0.shortcut.norm.running_var"],
                       official["backbone.layer2.0.downsample.1.running_var"])


def test_official_faster_better_checkpoint_loads_exactly():
    official = official_r50_state_dict(head="SimpleRefineMaskHead")
    loaded = _load_converted(official, "configs/RefineMask/refinemask_faster_better_R_50_FPN_1x_mmdet.yaml")
    mh, official_mh = "roi_heads.mask_head", "roi_head.mask_head"
    pairs = {
        f"{mh}.stages.0.instance_logits.weight": f"{official_mh}.stage_instance_logits.0.weight",
        f"{mh}.stages.2.instance_logits.bias": f"{official_mh}.stage_instance_logits.2.bias",
        f"{mh}.final_instance_logits.weight": f"{official_mh}.stage_instance_logits.3.weight",
        f"{mh}.stages.1.reduce.weight": f"{official_mh}.stages.1.fuse_conv.0.weight",
        f"{mh}.stages.2.dilated_convs.0.weight": f"{official_mh}.stages.2.fuse_conv.1.dilation_conv_1.conv.weight",
        "roi_heads.semantic_head.convs.3.bias": f"{official_mh}.semantic_convs.3.conv.bias",
    }
    for ours_key, official_key in pairs.items():
        assert torch.equal(loaded[ours_key], official[official_key]), ours_key


def test_unknown_keys_are_reported():
    with pytest.raises(KeyError, match="no mapping for 1 official keys"):
        convert_module.convert({"roi_head.mask_head.something_new.weight": torch.zeros(1)})
