"""BlendMask (Chen et al., CVPR 2020) as a detectron2 plugin.

Importing this package registers the "BlendMask" meta-architecture; its detector is the shared FCOS
(instseg.modeling.fcos) and its blender the fused op of csrc/blender.
"""
from instseg.export import register_export_module
from instseg.methods import register_method_config

from .basis_module import BasisModule
from .blender import Blender
from .blendmask import BlendMask
from .config import add_blendmask_config

register_method_config(add_blendmask_config)  # instseg builds the project config with these keys too
register_export_module("blendmask.blendmask.BlendMask", "blendmask.export:ExportBlendMask")  # for projects/export.py

__all__ = ["BasisModule", "BlendMask", "Blender", "add_blendmask_config"]
