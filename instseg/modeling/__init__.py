from .backbone import build_fcos_fpn, build_fcos_resnet_fpn_backbone
from .fcos import FCOS, FCOSHead, FCOSPositives, FCOSPredictions
from .roi_heads import InstSegROIHeads
from .semantic_targets import semantic_targets

__all__ = [
    "FCOS",
    "FCOSHead",
    "FCOSPositives",
    "FCOSPredictions",
    "InstSegROIHeads",
    "build_fcos_fpn",
    "build_fcos_resnet_fpn_backbone",
    "semantic_targets",
]
