"""Shared building blocks of the BlendMask, CenterMask and RefineMask plugins for Detectron2."""
from .dependency_warnings import quiet_dependency_warnings

quiet_dependency_warnings()  # before the rest of detectron2 is imported
