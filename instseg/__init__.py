"""Shared building blocks of the BlendMask, CenterMask and RefineMask plugins for Detectron2."""
