from .poolers import use_instseg_roi_align
from .roi_align import ROIAlign, roi_align

__all__ = ["ROIAlign", "roi_align", "use_instseg_roi_align"]
