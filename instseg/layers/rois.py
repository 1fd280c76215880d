"""The RoI tensor the ops and poolers take: (K, 5) rows of (image index, x1, y1, x2, y2)."""
from typing import Sequence, Union

import torch
from detectron2.structures import Boxes
from torch import Tensor


def rois_from_indices(image_inds: Tensor, boxes: Tensor) -> Tensor:
    """(K,) image index of each box and its (K, 4) box as one (K, 5) RoI tensor, in the boxes' dtype."""
    return torch.cat([image_inds[:, None].to(boxes.dtype), boxes], dim=1)


def rois_from_boxes(boxes: Sequence[Union[Tensor, Boxes]]) -> Tensor:
    """Per image its (K_i, 4) boxes (tensors or Boxes) as one (K, 5) RoI tensor, images in order."""
    tensors = [b.tensor if isinstance(b, Boxes) else b for b in boxes]
    image_inds = torch.cat([torch.full((len(t),), i, device=t.device) for i, t in enumerate(tensors)])
    return rois_from_indices(image_inds, torch.cat(tensors))
