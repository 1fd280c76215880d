"""RefineMask's meta-architecture: Mask R-CNN's RPN and box branch, RefineROIHeads' semantic head
and multi-stage mask head."""
from detectron2.modeling import META_ARCH_REGISTRY

from instseg.modeling import MethodRCNN

from .roi_heads import RefineROIHeads


@META_ARCH_REGISTRY.register()
class RefineMask(MethodRCNN):
    """GeneralizedRCNN with RefineROIHeads: semantic head, SFM stages 14 -> 112."""

    roi_heads_class = RefineROIHeads
