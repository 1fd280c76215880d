"""Boundary regions of binary masks and the stage rules of boundary-aware refinement."""
import torch
from torch import Tensor
from torch.nn import functional as F


def boundary_region(masks: Tensor, width: int) -> Tensor:
    """Pixels within `width` (Chebyshev distance) of the contour of each mask.

    A pixel is in the region when some pixel of the other label lies within `width` of it; pixels
    outside the mask's frame count as background, so foreground touching the frame is boundary.
    For width 1 this is the official generate_block_target's boundary (more than a tenth of the
    3 x 3 window of the other label); for wider ones the official rule asks for more such pixels.

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


def binarize(logits: Tensor) -> Tensor:
    """Mask logits -> bool masks, as the official code thresholds them: sigmoid >= 0.5."""
    return logits.sigmoid() >= 0.5


def upsample2x(region: Tensor) -> Tensor:
    """(M, H, W) -> (M, 2H, 2W), each pixel becoming a 2 x 2 block (the loss's boundary regions)."""
    return region.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)


def bilinear2x(x: Tensor, align_corners: bool = False) -> Tensor:
    """(M, C, H, W) -> (M, C, 2H, 2W), bilinear. The official code upsamples the stages' features
    with align_corners False (mmcv's "bilinear" upsample layer) and the mask logits and mask
    channels with align_corners True."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners)


def merge_stage(previous_logits: Tensor, logits: Tensor, width: int) -> Tensor:
    """Inference rule of a refinement stage (official RefineRoIHead.simple_test_mask): inside the
    boundary region of the previous (coarser) binarised mask take the stage's own logits; elsewhere
    keep the previous logits. Both the previous logits and the 0/1 map of the region's complement
    are upsampled bilinearly with align_corners True, the latter then thresholded at 0.5.

    Args:
        previous_logits: (M, S, S); logits: (M, 2S, 2S).

    Returns:
        (M, 2S, 2S) merged logits.
    """
    upsampled = bilinear2x(previous_logits[:, None], align_corners=True)[:, 0]
    outside = ~boundary_region(binarize(previous_logits), width)
    # a float32 map, as the official code's, so that ties at 0.5 fall alike
    keep = bilinear2x(outside.float()[:, None], align_corners=True)[:, 0] >= 0.5
    return torch.where(keep, upsampled, logits)
