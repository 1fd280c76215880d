from .backbone import build_fcos_fpn, build_fcos_resnet_fpn_backbone, feature_shapes
from .fcos import FCOS, FCOSHead, FCOSPositives, FCOSPredictions
from .mask_targets import crop_gt_masks
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
    "crop_gt_masks",
    "feature_shapes",
    "semantic_targets",
]
