"""Box-cropped ground-truth masks, the targets of the RoI-level mask branches (BlendMask's blender,
CenterMask's MaskIoU head, RefineMask's stages)."""
from typing import List

import torch
from detectron2.layers import cat
from detectron2.structures import Instances
from torch import Tensor


def crop_gt_masks(instances: List[Instances], box_field: str, size: int) -> Tensor:
    """Each instance's gt_masks cropped to its box in `box_field` ("gt_boxes", "proposal_boxes") and
    resized to size x size: (M, size, size) bool on the boxes' device, images in order."""
    crops = [x.gt_masks.crop_and_resize(x.get(box_field).tensor, size) for x in instances if len(x)]
    return cat(crops) if crops else torch.zeros((0, size, size), dtype=torch.bool)
