"""Deployment: every supported method exported end to end to ONNX (run by ONNX Runtime), to a
TorchScript trace or to a torch.export ExportedProgram, and predictors running those files
(docs/export.md).

build_export_module(model) wraps a model in its export module, a tensor-only forward from the
(3, H, W) float image to flat detection tensors; export() writes it; OnnxPredictor and
ProgramPredictor / TorchScriptPredictor run the files with instseg.engine.Predictor's interface.
"""
from .common import UnsupportedExportError
from .exporter import (
    FORMATS, build_export_module, example_image, export, export_onnx, export_program, register_export_module,
)
from .predictor import PREDICTORS, ExportedPredictor, OnnxPredictor, ProgramPredictor, TorchScriptPredictor

__all__ = [
    "FORMATS",
    "PREDICTORS",
    "ExportedPredictor",
    "OnnxPredictor",
    "ProgramPredictor",
    "TorchScriptPredictor",
    "UnsupportedExportError",
    "build_export_module",
    "example_image",
    "export",
    "export_onnx",
    "export_program",
    "register_export_module",
]
