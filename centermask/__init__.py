"""CenterMask and CenterMask-Lite (Lee & Park, CVPR 2020) as detectron2 plugins.

Importing this package registers the VoVNet backbones, the SAG mask head, the MaskIoU head and
CenterROIHeads and the CenterMask meta-architecture (GeneralizedRCNN with the shared FCOS,
instseg.modeling.fcos, as its proposal generator).
"""
from instseg.export import register_export_module
from instseg.methods import register_method_config

from .config import add_centermask_config
from .meta_arch import CenterMask
from .maskiou_head import ROI_MASKIOU_HEAD_REGISTRY, MaskIoUHead, maskiou_targets
from .roi_heads import CenterROIHeads
from .sag_mask_head import SpatialAttention, SpatialAttentionMaskHead
from .vovnet import VOVNET_SPECS, VoVNet, build_fcos_vovnet_fpn_backbone, build_vovnet_backbone

register_method_config(add_centermask_config)  # instseg builds the project config with these keys too
register_export_module("centermask.meta_arch.CenterMask", "centermask.export:ExportCenterMask")  # for projects/export.py

__all__ = [
    "CenterMask",
    "CenterROIHeads",
    "MaskIoUHead",
    "ROI_MASKIOU_HEAD_REGISTRY",
    "SpatialAttention",
    "SpatialAttentionMaskHead",
    "VOVNET_SPECS",
    "VoVNet",
    "add_centermask_config",
    "build_fcos_vovnet_fpn_backbone",
    "build_vovnet_backbone",
    "maskiou_targets",
]
