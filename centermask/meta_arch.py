"""CenterMask's meta-architecture: FCOS (MODEL.PROPOSAL_GENERATOR) finds the boxes, CenterROIHeads
masks them and rescores them with MaskIoU."""
from detectron2.modeling import META_ARCH_REGISTRY

from instseg.modeling import MethodRCNN

from .roi_heads import CenterROIHeads


@META_ARCH_REGISTRY.register()
class CenterMask(MethodRCNN):
    """GeneralizedRCNN with CenterROIHeads: FCOS proposals, SAG-Mask, MaskIoU."""

    roi_heads_class = CenterROIHeads
