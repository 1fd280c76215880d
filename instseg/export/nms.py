"""NMS for the export modules: ``instseg_export::nms``, torchvision's NMS as an op whose fake kernel
allows any number of kept boxes. (torchvision's own fake kernel makes the count an unbacked size
of at least 2, which torch.export turns into a runtime assert: an exported program would refuse
an image with 0 or 1 detections.) Its ONNX translation is ONNX NonMaxSuppression."""
import torch
import torchvision
from onnxscript import INT64
from onnxscript import opset18 as op
from torch import Tensor

_INT64_MAX = 0x7FFFFFFFFFFFFFFF


@torch.library.custom_op("instseg_export::nms", mutates_args=())
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision.ops.nms: the indices of the kept boxes, by decreasing score."""
    return torchvision.ops.nms(boxes, scores, iou_threshold)


@nms.register_fake
def _nms_fake(boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.size(1) == 4, lambda: "nms: boxes must be (N, 4)")
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)


def onnx_nms(boxes, scores, iou_threshold: float):
    """instseg_export::nms as ONNX NonMaxSuppression (one batch, one class: the callers offset the
    boxes by class), the kept box indices in its order of decreasing score."""
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]), op.Unsqueeze(scores, [0, 1]), op.Constant(value_ints=[_INT64_MAX]),
        op.Constant(value_floats=[float(iou_threshold)]),
    )
    return op.Reshape(op.Slice(selected, [2], [3], [1]), op.Constant(value_ints=[-1]))
