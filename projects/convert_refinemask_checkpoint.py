"""Convert an official RefineMask checkpoint (mmdetection, zhanggang001/RefineMask) to this project's
Detectron2 model-zoo format ({"model": state_dict}), to load with
configs/RefineMask/refinemask_R_50_FPN_1x_mmdet.yaml (R-50; set RESNETS.DEPTH for R-101), or, for the
faster-better variant (SimpleRefineMaskHead), with refinemask_faster_better_R_50_FPN_1x_mmdet.yaml.

    python projects/convert_refinemask_checkpoint.py r50-refinemask-1x.pth refinemask_R_50_1x.pth

Key mapping (official -> ours; ``i``, ``j``, ``k`` are indices; norms of the ResNet map to ``.norm.``
and lose ``num_batches_tracked``, which detectron2's FrozenBN does not keep):

| official (mmdetection)                                  | ours (detectron2)                                      |
|---------------------------------------------------------|--------------------------------------------------------|
| backbone.conv1 / backbone.bn1                           | backbone.bottom_up.stem.conv1 / ...stem.conv1.norm     |
| backbone.layer{i}.{j}.conv{k} / .bn{k}                  | backbone.bottom_up.res{i+1}.{j}.conv{k} / ...conv{k}.norm |
| backbone.layer{i}.0.downsample.0 / .downsample.1        | backbone.bottom_up.res{i+1}.0.shortcut / ...shortcut.norm |
| neck.lateral_convs.{i}.conv                             | backbone.fpn_lateral{i+2}                              |
| neck.fpn_convs.{i}.conv                                 | backbone.fpn_output{i+2}                               |
| rpn_head.rpn_conv / rpn_cls / rpn_reg                   | proposal_generator.rpn_head.conv / objectness_logits / anchor_deltas |
| roi_head.bbox_head.shared_fcs.{i}                       | roi_heads.box_head.fc{i+1}                             |
| roi_head.bbox_head.fc_cls / fc_reg                      | roi_heads.box_predictor.cls_score / bbox_pred          |
| roi_head.mask_head.semantic_convs.{i}.conv              | roi_heads.semantic_head.convs.{i}                      |
| roi_head.mask_head.semantic_logits                      | roi_heads.semantic_head.logits                         |
| roi_head.mask_head.instance_convs.{i}.conv              | roi_heads.mask_head.instance_convs.{i}                 |
| roi_head.mask_head.stages.{i}.fuse_conv.0               | roi_heads.mask_head.stages.{i}.reduce                  |
| roi_head.mask_head.stages.{i}.fuse_conv.1.dilation_conv_{k}.conv | roi_heads.mask_head.stages.{i}.dilated_convs.{k-1} |
| roi_head.mask_head.stages.{i}.fuse_conv.1.merge_conv.conv | roi_heads.mask_head.stages.{i}.merge                 |
| roi_head.mask_head.stages.{i}.{semantic_transform_in, semantic_transform_out, instance_logits, fuse_transform_out} | roi_heads.mask_head.stages.{i}.(same) |
| roi_head.mask_head.final_instance_logits                | roi_heads.mask_head.final_instance_logits              |
| roi_head.mask_head.stage_instance_logits.{j} (faster-better) | roi_heads.mask_head.stages.{j}.instance_logits; the last j: roi_heads.mask_head.final_instance_logits |

The faster-better head (SimpleRefineMaskHead) keeps every stage's classifier in stage_instance_logits
(the last one being the final mask's), has no semantic_logits and no semantic_transform_out; its other
names are those above.

Both box heads put the background class last (mmdetection 2.x, detectron2), box deltas use the same
(dx, dy, dw, dh) parameterisation with weights 10/10/5/5 (mmdetection's stds 0.1/0.1/0.2/0.2), and
RPN anchors are ordered by aspect ratio in both, so the tensors copy unchanged.
"""
import argparse
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Tuple

import torch

Rule = Tuple[str, Callable[[re.Match], str]]

OFFICIAL_TO_OURS: List[Rule] = [
    (r"backbone\.conv1\.(\w+)", lambda m: f"backbone.bottom_up.stem.conv1.{m[1]}"),
    (r"backbone\.bn1\.(\w+)", lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
    (r"backbone\.layer(\d)\.(\d+)\.conv(\d)\.(\w+)", lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.{m[4]}"),
    (r"backbone\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)", lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"backbone\.layer(\d)\.(\d+)\.downsample\.0\.(\w+)", lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.{m[3]}"),
    (r"backbone\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)", lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
    (r"neck\.lateral_convs\.(\d)\.conv\.(\w+)", lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}"),
    (r"neck\.fpn_convs\.(\d)\.conv\.(\w+)", lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}"),
    (r"rpn_head\.rpn_conv\.(\w+)", lambda m: f"proposal_generator.rpn_head.conv.{m[1]}"),
    (r"rpn_head\.rpn_cls\.(\w+)", lambda m: f"proposal_generator.rpn_head.objectness_logits.{m[1]}"),
    (r"rpn_head\.rpn_reg\.(\w+)", lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}"),
    (r"roi_head\.bbox_head\.shared_fcs\.(\d)\.(\w+)", lambda m: f"roi_heads.box_head.fc{int(m[1]) + 1}.{m[2]}"),
    (r"roi_head\.bbox_head\.fc_cls\.(\w+)", lambda m: f"roi_heads.box_predictor.cls_score.{m[1]}"),
    (r"roi_head\.bbox_head\.fc_reg\.(\w+)", lambda m: f"roi_heads.box_predictor.bbox_pred.{m[1]}"),
    (r"roi_head\.mask_head\.semantic_convs\.(\d+)\.conv\.(\w+)", lambda m: f"roi_heads.semantic_head.convs.{m[1]}.{m[2]}"),
    (r"roi_head\.mask_head\.semantic_logits\.(\w+)", lambda m: f"roi_heads.semantic_head.logits.{m[1]}"),
    (r"roi_head\.mask_head\.instance_convs\.(\d+)\.conv\.(\w+)", lambda m: f"roi_heads.mask_head.instance_convs.{m[1]}.{m[2]}"),
    (r"roi_head\.mask_head\.stages\.(\d)\.fuse_conv\.0\.(\w+)", lambda m: f"roi_heads.mask_head.stages.{m[1]}.reduce.{m[2]}"),
    (r"roi_head\.mask_head\.stages\.(\d)\.fuse_conv\.1\.dilation_conv_(\d)\.conv\.(\w+)",
     lambda m: f"roi_heads.mask_head.stages.{m[1]}.dilated_convs.{int(m[2]) - 1}.{m[3]}"),
    (r"roi_head\.mask_head\.stages\.(\d)\.fuse_conv\.1\.merge_conv\.conv\.(\w+)", lambda m: f"roi_heads.mask_head.stages.{m[1]}.merge.{m[2]}"),
    (r"roi_head\.mask_head\.stages\.(\d)\.(semantic_transform_in|semantic_transform_out|instance_logits|fuse_transform_out)\.(\w+)",
     lambda m: f"roi_heads.mask_head.stages.{m[1]}.{m[2]}.{m[3]}"),
    (r"roi_head\.mask_head\.final_instance_logits\.(\w+)", lambda m: f"roi_heads.mask_head.final_instance_logits.{m[1]}"),
]


STAGE_LOGITS = re.compile(r"roi_head\.mask_head\.stage_instance_logits\.(\d+)\.(\w+)")


def _stage_logits_as_refine_head(state_dict: Dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """SimpleRefineMaskHead's stage_instance_logits.{j} renamed as RefineMaskHead's classifiers: those
    of the stages (stages.{j}.instance_logits) and, the last j, final_instance_logits."""
    last = max((int(m[1]) for m in map(STAGE_LOGITS.fullmatch, state_dict) if m), default=None)
    out = OrderedDict()
    for key, value in state_dict.items():
        m = STAGE_LOGITS.fullmatch(key)
        if m:
            module = "final_instance_logits" if int(m[1]) == last else f"stages.{m[1]}.instance_logits"
            key = f"roi_head.mask_head.{module}.{m[2]}"
        out[key] = value
    return out


def convert(state_dict: Dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Official state dict (of either head) -> ours. Unknown keys are an error naming them (nothing is
    dropped silently but the ResNet norms' num_batches_tracked counters)."""
    out, unknown = OrderedDict(), []
    for key, value in _stage_logits_as_refine_head(state_dict).items():
        if key.startswith("backbone.") and key.endswith("num_batches_tracked"):
            continue
        for pattern, rename in OFFICIAL_TO_OURS:
            match = re.fullmatch(pattern, key)
            if match:
                out[rename(match)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"no mapping for {len(unknown)} official keys, e.g. {unknown[:5]}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="official checkpoint (.pth with a 'state_dict')")
    parser.add_argument("target", help="output .pth in detectron2's model-zoo format")
    args = parser.parse_args()
    checkpoint = torch.load(args.source, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("state_dict", checkpoint)
    converted = convert(state_dict)
    torch.save({"model": converted, "__author__": "RefineMask (converted)"}, args.target)
    print(f"converted {len(converted)} tensors to {args.target}")


if __name__ == "__main__":
    main()
