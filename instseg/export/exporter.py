"""Exporting a model to ONNX (run by ONNX Runtime), to TorchScript (traced, .ts) or to a
torch.export ExportedProgram (.pt2).

All start from the method's export module (build_export_module): a (3, H, W) float32 image, resized
as cfg's test transform and in cfg.INPUT.FORMAT channel order, 0-255, with a dynamic height and
width -> flat tensors (see the module's output_names).
"""
import json
import logging
import warnings

import torch
from torch import nn

from .common import UnsupportedExportError, unsupported

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "exported-program")
DEFAULT_EXTENSIONS = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2"}
OPSET = 18
# the largest image side an exported model takes (a dynamic dimension needs a range); the smallest
# is min_side(model)
MAX_SIDE = 4096


# meta-architecture (module.class) -> its export module ("module:class"), imported when used. The
# methods register theirs when imported (register_export_module), so instseg names none of them.
EXPORT_MODULES = {
    "detectron2.modeling.meta_arch.rcnn.GeneralizedRCNN": "instseg.export.rcnn:ExportRCNN",
}


def register_export_module(meta_architecture: str, export_module: str) -> None:
    """Declare the export module ("package.module:Class") of a meta-architecture class (its
    "module.QualifiedName"); a method package calls this when imported."""
    EXPORT_MODULES[meta_architecture] = export_module


def build_export_module(model: nn.Module) -> nn.Module:
    """The export module of `model` (in eval mode), or an UnsupportedExportError naming the
    module that has no export path and why."""
    import importlib

    target = EXPORT_MODULES.get(f"{type(model).__module__}.{type(model).__qualname__}")
    if target is None:
        supported = ", ".join(name.rsplit(".", 1)[1] for name in EXPORT_MODULES)
        raise unsupported("the model", model, f"no export path for this meta-architecture yet (supported: {supported})")
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)(model).eval()


def example_image(height: int = 128, width: int = 160, seed: int = 0) -> torch.Tensor:
    """A (3, H, W) float32 image of 0-255 values, the export modules' input."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=g).float()


def min_side(module: nn.Module) -> int:
    """The smallest image side the export module takes: torch.export specializes a feature map of
    one pixel (broadcasting), so the coarsest map (stride S: P6 of Mask R-CNN's FPN, 64; P7 of
    FCOS's, 128) needs two, which it has from S + 1 pixels up."""
    return max(s.stride for s in module.model.backbone.output_shape().values()) + 1


def dynamic_shapes(module: nn.Module):
    height = torch.export.Dim("height", min=min_side(module), max=MAX_SIDE)
    width = torch.export.Dim("width", min=min_side(module), max=MAX_SIDE)
    return {"image": {1: height, 2: width}}


def example_input(module: nn.Module, image: torch.Tensor = None) -> torch.Tensor:
    """The image an export traces `module` with: `image`, checked against min_side, or else an
    example image a little above it."""
    side = min_side(module)
    image = example_image(side + 31, side + 63) if image is None else image
    if min(image.shape[-2:]) < side:
        raise ValueError(f"the example image {tuple(image.shape)} of the export needs sides of at least {side} pixels")
    return image


def export_program(module: nn.Module, image: torch.Tensor = None) -> "torch.export.ExportedProgram":
    """torch.export.export of the export module with a dynamic image height and width."""
    image = example_input(module, image)
    try:
        # guards that the solver cannot prove over the whole range (e.g. a stride check "1 % (W/4) != 0")
        # become runtime asserts instead of a refusal
        return torch.export.export(
            module, (image,), dynamic_shapes=dynamic_shapes(module), strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
    except Exception as e:  # an op or a data-dependent branch torch.export cannot trace
        raise UnsupportedExportError(
            f"torch.export failed on {type(module.model).__qualname__} ({type(module).__qualname__}): "
            f"{type(e).__name__}: {str(e)[:2000]}"
        ) from e


def trace(module: nn.Module, image: torch.Tensor = None) -> torch.jit.ScriptModule:
    """torch.jit.trace of the export module. The tracer records sizes as tensors (instseg.export.
    common.at_most), so the trace is dynamic in height and width; it is checked on a second image
    of other sides, where a size baked in as a constant would change the outputs."""
    image = example_input(module, image)
    name = type(module.model).__qualname__
    try:
        with warnings.catch_warnings():
            # the checks below replace the tracer's warnings about Python values in the trace
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, (image,), check_trace=False)
    except Exception as e:
        raise UnsupportedExportError(f"torch.jit.trace failed on {name}: {type(e).__name__}: {str(e)[:2000]}") from e
    height, width = image.shape[-2:]
    other = example_image(width + 32, height + 64, seed=1)  # other sides, other strides' remainders
    for expected, got, output in zip(module(other), traced(other), module.output_names):
        if expected.shape != got.shape or not torch.allclose(expected, got, atol=1e-4, rtol=0):
            raise UnsupportedExportError(
                f"the TorchScript trace of {name} is not dynamic: its {output} on a {tuple(other.shape)} image "
                f"differ from the module's ({tuple(got.shape)} vs {tuple(expected.shape)}); a size became a constant"
            )
    return traced


METADATA_KEY = "instseg_metadata"  # the checkpoint's "metadata" (class names), as JSON, in the file
OUTPUT_NAMES_KEY = "instseg_output_names"  # the .pt2's and .ts's output names, as JSON
MIN_SIDE_KEY = "instseg_min_side"  # the smallest image side the .pt2 takes (ONNX and TorchScript: any)


def export_onnx(module: nn.Module, path: str, image: torch.Tensor = None, program=None, metadata=None) -> None:
    """Write the export module as an ONNX model (opset OPSET, standard ops only: this project's
    ops translated by instseg.export.onnx_ops) to `path`, checked by onnx.checker."""
    import onnx

    from .onnx_ops import custom_translation_table

    program = export_program(module, image) if program is None else program
    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=OPSET, input_names=["image"],
            output_names=list(module.output_names), custom_translation_table=custom_translation_table(),
            optimize=True, verify=False, report=False,
        )
    except Exception as e:
        raise UnsupportedExportError(
            f"ONNX export failed on {type(module.model).__qualname__}: {type(e).__name__}: {str(e)[:2000]}"
        ) from e
    onnx_program.save(path)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    if metadata:
        onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
        onnx.save(model, path)
    custom = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise UnsupportedExportError(f"the ONNX graph of {path} has non-standard ops: {custom}")


def extra_files(module: nn.Module, metadata=None) -> dict:
    """What the .pt2 and .ts files keep besides the model: its output names and the metadata."""
    return {OUTPUT_NAMES_KEY: json.dumps(list(module.output_names)), METADATA_KEY: json.dumps(metadata or {})}


def export(module: nn.Module, fmt: str, path: str, image: torch.Tensor = None, metadata: dict = None) -> None:
    """Export the export module to `path` in format `fmt` (one of FORMATS). `metadata`: the
    checkpoint's "metadata" (class names), kept in the file for the predictors."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "torchscript":
        torch.jit.save(trace(module, image), path, _extra_files=extra_files(module, metadata))
        return
    program = export_program(module, image)
    if fmt == "exported-program":
        files = dict(extra_files(module, metadata), **{MIN_SIDE_KEY: str(min_side(module))})
        torch.export.save(program, path, extra_files=files)
    else:
        export_onnx(module, path, image, program, metadata)
