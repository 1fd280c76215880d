from .features import feature_shapes
from .fpn import build_fcos_fpn, build_fcos_resnet_fpn_backbone

__all__ = ["build_fcos_fpn", "build_fcos_resnet_fpn_backbone", "feature_shapes"]
