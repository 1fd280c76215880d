"""ONNX translations of this project's custom ops for torch.onnx.export(dynamo=True): each is emitted
as standard ONNX, so that ONNX Runtime (or any runtime) runs the graph without a custom-op library.

``instseg_export::nms`` (instseg/export/nms.py) -> ONNX ``NonMaxSuppression``.

``instseg::roi_align`` -> ONNX ``RoiAlign`` (opset >= 16): ``aligned=True`` is
coordinate_transformation_mode "half_pixel", ``aligned=False`` is "output_half_pixel" (the legacy
behaviour, which also clamps a box to at least 1 x 1 bins' size as our op does); sampling_ratio
<= 0 (adaptive, ceil(box size / bins)) is RoiAlign's 0.
"""
from onnxscript import INT64
from onnxscript import opset18 as op


def instseg_roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                      sampling_ratio: int, aligned: bool):
    """instseg::roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height,
    int pooled_width, int sampling_ratio, bool aligned) -> Tensor, rois (K, 5) rows of
    (image index, x1, y1, x2, y2)."""
    batch_indices = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64.dtype)
    boxes = op.Slice(rois, [1], [5], [1])
    return op.RoiAlign(
        input, boxes, batch_indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=int(pooled_height),
        output_width=int(pooled_width),
        sampling_ratio=max(int(sampling_ratio), 0),
        spatial_scale=float(spatial_scale),
    )


def custom_translation_table() -> dict:
    """The custom_translation_table argument of torch.onnx.export for this project's ops."""
    import torch

    import instseg.layers  # noqa: F401  (registers the ops)

    from .nms import onnx_nms

    return {torch.ops.instseg.roi_align.default: instseg_roi_align, torch.ops.instseg_export.nms.default: onnx_nms}
