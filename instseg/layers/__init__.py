from .autocast import boxes_for
from .blend import ATTN_INTERPS, blend, blend_reference
from .poolers import ROIPooler, assign_boxes_by_image_ratio, use_instseg_roi_align
from .roi_align import ROIAlign, roi_align
from .rois import rois_from_boxes, rois_from_indices

__all__ = [
    "ATTN_INTERPS",
    "ROIAlign",
    "ROIPooler",
    "assign_boxes_by_image_ratio",
    "blend",
    "blend_reference",
    "boxes_for",
    "roi_align",
    "rois_from_boxes",
    "rois_from_indices",
    "use_instseg_roi_align",
]
