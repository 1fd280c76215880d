from .backbone import build_fcos_fpn, build_fcos_resnet_fpn_backbone, feature_shapes
from .fcos import FCOS, FCOSHead, FCOSPositives, FCOSPredictions
from .mask_targets import crop_gt_masks
from .meta_arch import MethodRCNN
from .per_image import set_per_image
from .proposals import detections_as_proposals
from .roi_heads import InstSegROIHeads, build_mask_pooler, with_roi_align_impl
from .semantic_targets import semantic_targets

__all__ = [
    "FCOS",
    "FCOSHead",
    "FCOSPositives",
    "FCOSPredictions",
    "InstSegROIHeads",
    "MethodRCNN",
    "build_fcos_fpn",
    "build_fcos_resnet_fpn_backbone",
    "build_mask_pooler",
    "crop_gt_masks",
    "detections_as_proposals",
    "feature_shapes",
    "semantic_targets",
    "set_per_image",
    "with_roi_align_impl",
]
