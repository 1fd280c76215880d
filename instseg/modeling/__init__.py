from .roi_heads import InstSegROIHeads

__all__ = ["InstSegROIHeads"]
