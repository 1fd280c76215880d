"""RefineMask (Zhang et al., CVPR 2021) on detectron2: a semantic head on P2, a mask head refined in
stages from 14 x 14 to 112 x 112 by the semantic fusion module, and boundary-aware refinement; also
the official code's faster-better variant of the head (SimpleRefineMaskHead).

Importing this package registers RefineROIHeads (on top of Mask R-CNN's box branch) and the RefineMask
meta-architecture.
"""
from instseg.export import register_export_module
from instseg.methods import register_method_config

from .boundary import boundary_region, merge_stage
from .config import add_refinemask_config
from .meta_arch import RefineMask
from .mask_head import RefineMaskHead, SFMStage, SimpleRefineMaskHead, SimpleSFMStage
from .roi_heads import RefineROIHeads
from .semantic_head import SemanticHead

register_method_config(add_refinemask_config)  # instseg builds the project config with these keys too
register_export_module("refinemask.meta_arch.RefineMask", "refinemask.export:ExportRefineMask")  # for projects/export.py

__all__ = [
    "RefineMask",
    "RefineMaskHead",
    "RefineROIHeads",
    "SFMStage",
    "SemanticHead",
    "SimpleRefineMaskHead",
    "SimpleSFMStage",
    "add_refinemask_config",
    "boundary_region",
    "merge_stage",
]
