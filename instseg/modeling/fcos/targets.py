"""FCOS training targets: which ground-truth box (if any) each feature-map location regresses.

Shape legend: L locations over all levels of one image, G ground-truth boxes, K classes.
A location is positive for a box when it lies in the box's central region (centre +- radius * stride,
clipped to the box) and the box's largest distance from it falls in the level's size range; when
several boxes qualify, the one of smallest area wins.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

INF = 1e8


def compute_locations(height: int, width: int, stride: int, device) -> Tensor:
    """Image coordinates (x, y) of the centre of each cell of an H x W level: (H * W, 2), row-major."""
    shift_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    shift_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    y, x = torch.meshgrid(shift_y, shift_x, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1) + stride // 2


def size_ranges(sizes_of_interest: List[int], num_levels: int) -> List[Tuple[float, float]]:
    """Per level, the (low, high) range of a box's largest side distance, e.g. [64, 128] ->
    [(-1, 64), (64, 128), (128, INF)]."""
    bounds = [-1.0] + [float(s) for s in sizes_of_interest] + [INF]
    if len(bounds) - 1 != num_levels:
        raise ValueError(
            f"MODEL.FCOS.SIZES_OF_INTEREST has {len(sizes_of_interest)} values; {num_levels} levels "
            f"need {num_levels - 1}"
        )
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class LocationTargets:
    """Targets of the L locations of one image."""

    labels: Tensor  # (L,) int64 class in [0, K), or K for background
    gt_inds: Tensor  # (L,) int64 index of the matched box, -1 for background
    reg: Tensor  # (L, 4) distances (l, t, r, b) to the matched box, in units of the level stride


def centerness_targets(reg: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (P, 4) distances: (P,)."""
    lr, tb = reg[:, [0, 2]], reg[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return torch.sqrt(ratio.clamp(min=0))


def assign_locations(
    locations: Tensor,
    strides: Tensor,
    ranges: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    num_classes: int,
    center_radius: float,
) -> LocationTargets:
    """
    Args:
        locations: (L, 2) image coordinates (x, y).
        strides: (L,) stride of each location's level.
        ranges: (L, 2) size range (low, high) of each location's level, both ends inclusive.
        gt_boxes: (G, 4) boxes (x1, y1, x2, y2).
        gt_classes: (G,) classes.
        num_classes: K, the background label.
        center_radius: radius of the central region in strides; <= 0 uses the whole box.
    """
    num_locations = len(locations)
    if len(gt_boxes) == 0:
        return LocationTargets(
            labels=torch.full((num_locations,), num_classes, dtype=torch.int64, device=locations.device),
            gt_inds=torch.full((num_locations,), -1, dtype=torch.int64, device=locations.device),
            reg=locations.new_zeros((num_locations, 4)),
        )
    x, y = locations[:, 0, None], locations[:, 1, None]
    x1, y1, x2, y2 = gt_boxes.unbind(dim=1)
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=2)  # (L, G, 4)
    if center_radius > 0:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        radius = strides[:, None] * center_radius
        cx1, cy1 = torch.maximum(cx - radius, x1), torch.maximum(cy - radius, y1)
        cx2, cy2 = torch.minimum(cx + radius, x2), torch.minimum(cy + radius, y2)
        inside = torch.stack([x - cx1, y - cy1, cx2 - x, cy2 - y], dim=2).min(dim=2).values > 0
    else:
        inside = ltrb.min(dim=2).values > 0
    max_dist = ltrb.max(dim=2).values
    in_range = (max_dist >= ranges[:, 0, None]) & (max_dist <= ranges[:, 1, None])
    areas = ((x2 - x1) * (y2 - y1))[None].expand(num_locations, -1).clone()
    areas[~(inside & in_range)] = INF
    min_area, gt_inds = areas.min(dim=1)
    background = min_area == INF
    labels = gt_classes[gt_inds].clone()
    labels[background] = num_classes
    gt_inds[background] = -1
    reg = ltrb[torch.arange(num_locations, device=locations.device), gt_inds.clamp(min=0)]
    return LocationTargets(labels=labels, gt_inds=gt_inds, reg=reg / strides[:, None])
