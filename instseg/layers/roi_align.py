"""RoIAlign on this project's C++/CUDA op ``torch.ops.instseg.roi_align`` (csrc/roi_align/).

Shape legend: N images, C channels, H x W feature map, K boxes, PH x PW output bins.

The op is registered with ``TORCH_LIBRARY``; this module adds its autograd formula (the backward is
the registered op ``instseg::_roi_align_backward``, whose own backward, a double backward, raises),
fake kernels so that ``torch.compile`` (also with ``dynamic=True``: the sizes are SymInt) and
``torch.export`` can trace it, and its autocast kernels (float32 inside, see autocast.py). Dtypes:
float32 and float64; float16 and bfloat16 too, computed in float32 (on CPU the kernel casts, on CUDA
it accumulates in float32). The CUDA backward adds with atomics, so under
``torch.use_deterministic_algorithms(True)`` it raises (the CPU kernels are deterministic).
"""
from typing import List, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

import instseg._C  # noqa: F401  (loads the extension: registers the ops' CPU/CUDA kernels)

from .autocast import boxes_for, register_float32_autocast
from .memory_format import is_channels_last
from .rois import rois_from_boxes

__all__ = ["roi_align", "ROIAlign"]


def _cpu_kernel_format(t: Tensor) -> torch.memory_format:
    """The memory format of the CPU kernels' results: channels-last for a channels-last input (the
    forward's map, the backward's output gradient), as in roi_align_cpu.cpp; CUDA's are NCHW."""
    return torch.channels_last if t.device.type == "cpu" and is_channels_last(t) else torch.contiguous_format


@torch.library.register_fake("instseg::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(input.dim() == 4, lambda: f"roi_align: input must be (N, C, H, W), got {input.dim()} dims")
    torch._check(
        rois.dim() == 2 and rois.size(1) == 5,
        lambda: f"roi_align: rois must be (K, 5), got {tuple(rois.shape)}",
    )
    torch._check(
        rois.dtype == input.dtype,
        lambda: f"roi_align: rois must have the input's dtype {input.dtype}, got {rois.dtype}",
    )
    return torch.empty(
        (rois.size(0), input.size(1), pooled_height, pooled_width), dtype=input.dtype, device=input.device,
        memory_format=_cpu_kernel_format(input),
    )


@torch.library.register_fake("instseg::_roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
    sampling_ratio, aligned,
):
    return torch.empty(
        (batch_size, channels, height, width), dtype=grad.dtype, device=grad.device,
        memory_format=_cpu_kernel_format(grad),
    )


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input = torch.ops.instseg._roi_align_backward(
        grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
        sampling_ratio, aligned,
    )
    return grad_input, None, None, None, None, None, None


def register_no_double_backward(opname: str) -> None:
    """Give the backward op ``instseg::_<opname>_backward`` an autograd formula that raises: its
    own derivative (a double backward, e.g. the gradient of ``autograd.grad(..., create_graph=True)``)
    is not implemented, and without this the autograd fallback would only warn and return a
    silently wrong (missing) gradient."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"instseg::{opname}: double backward is not supported (the gradient of its gradient, "
            "e.g. backward through the result of torch.autograd.grad(..., create_graph=True)); "
            f"use torchvision's or a plain PyTorch composition of {opname} for higher-order gradients"
        )

    torch.library.register_autograd(f"instseg::_{opname}_backward", backward)


torch.library.register_autograd("instseg::roi_align", _backward, setup_context=_setup_context)
register_no_double_backward("roi_align")
register_float32_autocast("roi_align")


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN), with the arguments of ``torchvision.ops.roi_align``.

    Args:
        input: (N, C, H, W) float feature map (any memory format; on CPU a channels-last map is
            pooled without a copy, into a channels-last result, whose channels-last gradient gives
            a channels-last input gradient).
        boxes: (K, 5) rows of (batch_index, x1, y1, x2, y2) in image coordinates, or a list of N
            (K_i, 4) tensors of (x1, y1, x2, y2).
        output_size: (PH, PW), or one int for both.
        spatial_scale: feature-map size / image size, e.g. 1/4 for a stride-4 map.
        sampling_ratio: bilinear samples per bin along each axis; <= 0 picks ceil(box size / bins).
        aligned: shift boxes by -0.5 pixel so that pixel centres line up (Detectron2's ROIAlignV2).

    Returns:
        (K, C, PH, PW) pooled features.
    """
    rois = boxes if isinstance(boxes, Tensor) else rois_from_boxes(boxes)
    pooled_height, pooled_width = _pair(output_size)
    return torch.ops.instseg.roi_align(
        input, rois, float(spatial_scale), pooled_height, pooled_width, int(sampling_ratio), bool(aligned)
    )


class ROIAlign(nn.Module):
    """Drop-in for ``detectron2.layers.ROIAlign`` running this project's op."""

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = True,
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        """
        Args:
            input: (N, C, H, W) feature map.
            rois: (K, 5) rows of (batch_index, x1, y1, x2, y2), any float dtype (cast as
                ``boxes_for`` says).

        Returns:
            (K, C, PH, PW) pooled features.
        """
        if rois.dim() != 2 or rois.size(1) != 5:
            raise ValueError(f"ROIAlign: rois must be (K, 5), got {tuple(rois.shape)}")
        return roi_align(
            input, boxes_for(input, rois), self.output_size, self.spatial_scale,
            self.sampling_ratio, self.aligned,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
