"""Per-pixel semantic targets drawn from instance annotations (BlendMask's auxiliary semantic loss,
RefineMask's foreground head), so any instance dataset trains them with no extra annotation files."""
from typing import List, Tuple

import torch
from detectron2.structures import BitMasks, Instances
from torch import Tensor


def semantic_targets(
    instances: List[Instances], image_size: Tuple[int, int], num_classes: int, out_size: Tuple[int, int]
) -> Tensor:
    """Per-pixel class map of a batch from its instance masks, for a feature map of `out_size`
    (h, w) over the padded `image_size` (H, W): (N, h, w) int64, every s-th pixel of the image's map,
    s = H // h the map's stride; 0 = background and c + 1 for class c, where instances overlap the
    later one wins."""
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
    stride = height // out_size[0]
    return out[:, ::stride, ::stride][:, : out_size[0], : out_size[1]]
