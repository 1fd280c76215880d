"""Per-pixel semantic targets drawn from instance annotations (BlendMask's auxiliary semantic loss,
RefineMask's foreground head), so any instance dataset trains them with no extra annotation files."""
from typing import List, Optional, Tuple

import torch
from detectron2.structures import BitMasks, Instances
from torch import Tensor


def semantic_targets(
    instances: List[Instances], image_size: Tuple[int, int], num_classes: int, out_size: Optional[Tuple[int, int]] = None
) -> Tensor:
    """Per-pixel class map of a batch from its instance masks: (N, H, W) int64 for the padded
    `image_size` (H, W), 0 = background and c + 1 for class c; where instances overlap the later one
    wins. With `out_size` (h, w), the targets of a feature map of that size: every s-th pixel,
    s = H // h its stride, (N, h, w)."""
    height, width = image_size
    out = torch.zeros((len(instances), height, width), dtype=torch.int64)
    for i, inst in enumerate(instances):
        if len(inst) == 0:
            continue
        h, w = inst.image_size
        masks = inst.gt_masks
        if not isinstance(masks, BitMasks):
            masks = BitMasks.from_polygon_masks(masks, h, w)
        for mask, cls in zip(masks.tensor.cpu(), inst.gt_classes.cpu()):
            if not 0 <= int(cls) < num_classes:
                raise ValueError(f"gt class {int(cls)} outside [0, {num_classes}) (MODEL.ROI_HEADS.NUM_CLASSES)")
            out[i, :h, :w][mask[:h, :w]] = int(cls) + 1
    if out_size is None:
        return out
    stride = height // out_size[0]
    return out[:, ::stride, ::stride][:, : out_size[0], : out_size[1]]
