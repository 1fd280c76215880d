from .roi_align import ROIAlign, roi_align

__all__ = ["ROIAlign", "roi_align"]
