"""Boundary regions of binary masks and the stage rules of boundary-aware refinement."""
import torch
from torch import Tensor
from torch.nn import functional as F


def boundary_region(masks: Tensor, width: int) -> Tensor:
    """Pixels within `width` (Chebyshev distance) of the contour of each mask.

    A pixel is in the region when some pixel of the other label lies within `width` of it; pixels
    outside the mask's frame count as background, so foreground touching the frame is boundary.

    Args:
        masks: (M, H, W) bool (or 0/1) masks.

    Returns:
        (M, H, W) bool.
    """
    fg = masks.float()[:, None]
    k = 2 * width + 1
    dilated = F.max_pool2d(fg, k, stride=1, padding=width)  # zero padding: outside is background
    eroded = -F.max_pool2d(F.pad(-fg, [width] * 4, value=0.0), k, stride=1)
    return (dilated > 0.5)[:, 0] & ~(eroded > 0.5)[:, 0]


def upsample2x(region: Tensor) -> Tensor:
    """(M, H, W) -> (M, 2H, 2W), each pixel becoming a 2 x 2 block."""
    return region.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)


def bilinear2x(x: Tensor) -> Tensor:
    """(M, C, H, W) -> (M, C, 2H, 2W), bilinear: how logits and features pass to the next stage's size."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def merge_stage(previous_logits: Tensor, logits: Tensor, width: int) -> Tensor:
    """Inference rule of a refinement stage: inside the boundary region of the previous (coarser)
    mask take the stage's own logits; elsewhere keep the previous logits, upsampled bilinearly.

    Args:
        previous_logits: (M, S, S); logits: (M, 2S, 2S).

    Returns:
        (M, 2S, 2S) merged logits.
    """
    upsampled = bilinear2x(previous_logits[:, None])[:, 0]
    region = upsample2x(boundary_region(previous_logits > 0, width))
    return torch.where(region, logits, upsampled)
